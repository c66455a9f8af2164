"""Driver work per window and the commit path's bookkeeping, before (issue 20) and after.

1. Planning: the old driver collected every window row (header reads' output) and made one
   Ray Data block per window before the first decode; the new driver hands one row per
   video to the pipeline and the windows are made inside it. Measured: the driver's wall
   seconds and RSS growth to build the pipeline's input for W windows (old: ``from_items``
   of W window rows, one block each, as ``build_pipeline`` did; new: ``from_items`` of the
   videos, as ``anomaly.extraction.stream.build_pipeline`` does; header reads are worker
   work in both and left out).
2. Commit bookkeeping: per commit, the old driver read the whole failure log
   (``clear_failures``) and rewrote its summary; the new one appends one file. Measured:
   commits per second of the failure bookkeeping alone, early and late in a job of C
   commits with a failure every 4th, old (the module at ``--old-ref``) against new.

    python benchmarks/cluster.py [--windows 2000 20000] [--commits 400] [--old-ref f5f302e]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def planning(windows: int, videos: int, mode: str) -> dict:
    import ray

    from anomaly.extraction.stream import MAX_PLAN_BLOCKS, VIDEOS_PER_PLAN_BLOCK  # imports torch: not timed

    rows_per_video = windows // videos
    before, started = rss_mib(), time.perf_counter()
    if mode == "old":
        rows = [
            {
                "video_id": f"v{v:05d}",
                "uri": f"s3://b/v{v:05d}.mp4",
                "window": w,
                "num_windows": rows_per_video,
                "start": w * 7500,
                "stop": (w + 1) * 7500,
                "by_time": True,
                "span_fps": 25.0,
                "t0": 0.0,
                "header_fps": 25.0,
                "error": "",
            }
            for v in range(videos)
            for w in range(rows_per_video)
        ]
        rows.sort(key=lambda row: (row["video_id"], row["window"]))
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    else:
        items = [{"video_id": f"v{v:05d}", "uri": f"s3://b/v{v:05d}.mp4"} for v in range(videos)]
        blocks = min(len(items), max(1, min(MAX_PLAN_BLOCKS, -(-len(items) // VIDEOS_PER_PLAN_BLOCK))))
        ds = ray.data.from_items(items, override_num_blocks=max(blocks, min(len(items), 64)))
    seconds = time.perf_counter() - started
    del ds
    return {
        "mode": mode,
        "windows": windows,
        "videos": videos,
        "driver_s": round(seconds, 2),
        "rss_growth_mib": round(rss_mib() - before, 1),
    }


def load_old_store(ref: str):
    source = subprocess.run(
        ["git", "show", f"{ref}:anomaly/store.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    path = os.path.join(tempfile.mkdtemp(), "old_store.py")
    with open(path, "w") as handle:
        handle.write(source)
    spec = importlib.util.spec_from_file_location("old_store", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_store"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def commits(store_module, count: int, new: bool) -> dict:
    store = tempfile.mkdtemp(prefix="commits-")
    times = []
    for i in range(count):
        started = time.perf_counter()
        if i % 4 == 3:
            failure = [
                {"uri": f"/v/bad{i}.mp4", "video_id": f"bad{i}", "reason": "not a video", "stage": "decode"}
            ]
            if new:
                store_module.record_failures(store, failure, summary=False)
            else:
                store_module.record_failures(store, failure)
        if new:
            store_module.clear_failures(store, [f"/v/good{i}.mp4"], summary=False)
        else:
            store_module.clear_failures(store, [f"/v/good{i}.mp4"])
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    if new:
        store_module.write_failure_summary(store)
    end = time.perf_counter() - started
    tenth = max(1, count // 10)
    return {
        "mode": "new" if new else "old",
        "commits": count,
        "first_10pct_commits_per_s": round(tenth / sum(times[:tenth]), 1),
        "last_10pct_commits_per_s": round(tenth / sum(times[-tenth:]), 1),
        "total_s": round(sum(times) + end, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--windows", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--commits", type=int, default=400)
    parser.add_argument("--old-ref", default="f5f302e", help="git ref of the store module before issue 20")
    parser.add_argument("--skip-planning", action="store_true")
    parser.add_argument("--skip-commits", action="store_true")
    args = parser.parse_args()
    results = []
    if not args.skip_planning:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.from_items(
            [{"video_id": f"w{i}", "uri": "s3://b/w"} for i in range(64)], override_num_blocks=64
        )  # warm-up
        for windows in args.windows:
            for mode in ("old", "new"):
                results.append(planning(windows, args.videos, mode))
                print(json.dumps(results[-1]), flush=True)
        ray.shutdown()
    if args.skip_commits:
        return
    from anomaly import store as new_store

    old_store = load_old_store(args.old_ref)
    for module, new in ((old_store, False), (new_store, True)):
        results.append(commits(module, args.commits, new))
        print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
