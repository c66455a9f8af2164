"""Extraction, the old design (driver folds every clip) against the new (workers write), side by side in one run.

1. driver CPU seconds per 1,000 clips at D = 512 and D = 4,096, for 2 clip counts: old = the
   driver-side fold of every feature row (``SegmentAccumulator.add`` per batch + the bag row's
   Parquet write, what ``VideoCommitter`` did); new = ``VideoTracker.consume`` of the summary rows
   the clip-table writer returns for the same batches (runs of clip indices; no features);
2. bytes read from storage per video relative to its size (``/proc/self/io`` rchar): old = probe
   (a full decode) + clip pass; new = header read + one decode pass;
3. decode-worker peak RSS (VmHWM, a fresh subprocess each): old = the decode stage with torch and
   torchvision imported (the old module imported them); new = ``anomaly.extraction.decode`` alone;
4. pipeline clips/s against model-only, with 1 and 2 actors: the old stream (feature rows folded
   in the driver, ``anomaly.extraction.feature_rows``) and the new ``extract``, with the driver's
   CPU seconds of each run;
5. a long video split into windows against the same video as one task (wall seconds).

    python benchmarks/extract.py [--quick] [--device cuda --num-gpus-per-actor 1 --concurrency 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np

from anomaly import uris
from anomaly.extraction import ExtractionSettings, VideoTracker, extract, sampling_of
from anomaly.extraction.decode import decode_window, plan_video
from anomaly.synthetic import make_video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RSS_SCRIPT = """
import json, sys
old = sys.argv[2] == "old"
if old:
    import torch, torchvision  # noqa: F401 - what the old decode stage's imports pulled in
from anomaly.extraction.decode import ClipSampling, decode_video

def kib(key):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key + ":"))

s = ClipSampling(clip_len=16, stride=16, crop=(112, 112), resize=(128, 171), threads=1)
clips = sum(1 for row in decode_video({"uri": sys.argv[1], "video_id": "v"}, sampling=s) if row["kind"] == "clip")
print(json.dumps({"clips": clips, "peak_kib": kib("VmHWM"), "torch": "torch" in sys.modules}))
"""


def rchar() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


# ------------------------------------------------------------------------------------------ (1)


def old_driver_seconds(num_clips: int, dim: int, batch: int, per_video: int, store: str) -> float:
    """The old fold: every feature row through the driver, per-video sums, the bag row written."""
    from anomaly import store as feature_store
    from anomaly.segments import SegmentAccumulator

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(batch, dim)).astype(np.float32)
    videos = num_clips // per_video
    started = time.process_time()
    for v in range(videos):
        acc = SegmentAccumulator(per_video, dim)
        for lo in range(0, per_video, batch):
            index = np.arange(lo, min(lo + batch, per_video))
            acc.add(index, feats[: len(index)])
        row = {"video_id": f"v{v}", "split": "train", "label": 0, "anomaly_class": "Normal", "backbone": "b"}
        feature_store.write_rows(store, [{**row, "features": acc.pooled()}])
    return time.process_time() - started


def summary_batch(video: str, lo: int, hi: int, end: bool, frames: int) -> dict:
    kind = ["clips", "end"] if end else ["clips"]
    n = len(kind)
    return {
        "kind": np.array(kind, dtype=object),
        "video_id": np.array([video] * n, dtype=object),
        "uri": np.array([f"/v/{video}.mp4"] * n, dtype=object),
        "window": np.zeros(n, dtype=np.int64),
        "num_windows": np.ones(n, dtype=np.int64),
        "cell": np.full(n, -1),
        "lo": np.array([lo, -1][:n]),
        "hi": np.array([hi, -1][:n]),
        "file": np.array(["/s/_clips/part-x.parquet", ""][:n], dtype=object),
        "num_frames": np.array([-1, frames][:n]),
        "eof": np.array([False, True][:n]),
        "fps": np.full(n, 25.0),
        "error": np.array([""] * n, dtype=object),
        "window_clips": np.zeros(n, dtype=np.int64),
    }


def new_driver_seconds(num_clips: int, batch: int, per_video: int) -> float:
    """The new driver: one summary batch (runs of clip indices) per model batch; D never appears."""
    tracker = VideoTracker(clip_len=16, stride=16, cells=0)
    batches = [
        summary_batch(f"v{v}", lo, min(lo + batch, per_video) - 1, lo + batch >= per_video, per_video * 16)
        for v in range(num_clips // per_video)
        for lo in range(0, per_video, batch)
    ]
    started = time.process_time()
    done = 0
    for item in batches:
        complete, _ = tracker.consume(item)
        done += len(complete)
    assert done == num_clips // per_video
    return time.process_time() - started


# ------------------------------------------------------------------------------------------ (2)


def bytes_read(uri: str, settings: ExtractionSettings) -> tuple[float, float]:
    """(old, new) bytes read / file size for one video."""
    from anomaly.extraction.feature_rows import decode_probed

    size = os.path.getsize(uri)
    sampling = sampling_of(settings, settings.spec())
    before = rchar()
    for _ in decode_probed({"uri": uri, "video_id": "v"}, sampling=sampling):
        pass
    old = rchar() - before
    before = rchar()
    for window in plan_video({"uri": uri, "video_id": "v"}, sampling=sampling):
        for _ in decode_window(window, sampling=sampling):
            pass
    new = rchar() - before
    return old / size, new / size


# ------------------------------------------------------------------------------------------ (4)


def old_pipeline(todo: dict[str, str], settings: ExtractionSettings) -> tuple[int, float, float]:
    """The old design end to end: feature rows into the driver, folded there. (clips, wall, driver CPU)."""
    from anomaly.extraction.feature_rows import build_feature_rows
    from anomaly.segments import SegmentAccumulator

    spec = settings.spec()
    acc: dict[str, SegmentAccumulator] = {}
    clips = 0
    wall, cpu = time.monotonic(), time.process_time()
    for batch in build_feature_rows(todo, settings, spec).iter_batches(batch_size=None, batch_format="numpy"):
        for video_id in np.unique(batch["video_id"]):
            rows = np.flatnonzero(batch["video_id"] == video_id)
            target = acc.setdefault(
                str(video_id), SegmentAccumulator(int(batch["num_clips"][rows[0]]), spec.feature_dim)
            )
            target.add(batch["clip_index"][rows], batch["features"][rows])
            clips += len(rows)
    assert all(a.complete for a in acc.values())
    return clips, time.monotonic() - wall, time.process_time() - cpu


def new_pipeline(todo: dict[str, str], settings: ExtractionSettings, store: str) -> tuple[int, float, float]:
    wall, cpu = time.monotonic(), time.process_time()
    report = extract(todo, store, settings)
    assert len(report.extracted) == len(todo), report.summary()
    return report.num_clips, time.monotonic() - wall, time.process_time() - cpu


def model_rate(settings: ExtractionSettings, batches: int = 6) -> float:
    import torch

    from anomaly.extractors import ClipFeatureExtractor

    spec = settings.spec()
    threads = torch.get_num_threads()
    if settings.device == "cpu":
        torch.set_num_threads(max(1, int(settings.num_cpus_per_actor)))  # what one actor gets
    model = ClipFeatureExtractor(
        settings.backbone, None, crop=spec.crop, clip_len=spec.clip_len, device=settings.device
    )
    size = settings.effective_batch_size()
    clips = np.random.default_rng(0).integers(0, 256, (size, spec.clip_len, *spec.crop, 3), np.uint8)
    model({"clip": clips})  # warm-up (cuDNN autotune, allocator)
    seconds = []
    for _ in range(batches):
        started = time.perf_counter()
        model({"clip": clips})
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    torch.set_num_threads(threads)
    return size / float(np.median(seconds))


def _pair(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.split(","))
    return h, w


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each pipeline video")
    parser.add_argument("--long-seconds", type=float, default=60.0, help="length of the long recording")
    parser.add_argument(
        "--size", type=_pair, default=(240, 320), help="H,W of the videos (UCF-Crime: 240,320)"
    )
    parser.add_argument("--backbone", default="r3d_18")
    parser.add_argument("--crop", type=_pair, default=(112, 112))
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-gpus-per-actor", type=float, default=0.0)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="the larger actor count of (4) (needs a free CPU for decoding)",
    )
    parser.add_argument("--skip-pipeline", action="store_true", help="leave out (4)")
    parser.add_argument("--window-seconds", type=float, default=15.0, help="window length for (5)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument(
        "--quick", action="store_true", help="small videos and crops: a few minutes on 2 cores"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.videos, args.seconds, args.long_seconds, args.crop, args.size = 4, 8.0, 40.0, (32, 32), (96, 128)
        args.clip_len, args.window_seconds = 8, 10.0
    root = args.out or tempfile.mkdtemp(prefix="bench-extract-")
    height, width = args.size
    print(f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, device {args.device}")

    # (1) driver CPU per 1,000 clips
    print("(1) driver CPU s per 1,000 clips (batches of 64 clips, 500 clips per video)")
    for dim in (512, 4096):
        for clips in (5_000, 20_000):
            old = old_driver_seconds(clips, dim, 64, 500, uris.join(root, f"old-{dim}-{clips}"))
            new = new_driver_seconds(clips, 64, 500)
            print(
                f"    D={dim:5d} {clips:6d} clips: old {1000 * old / clips:7.4f}  new {1000 * new / clips:7.4f}"
                f"  old/new = {old / max(new, 1e-9):6.1f}x"
            )

    settings = ExtractionSettings(
        backbone=args.backbone,
        weights=None,
        clip_len=args.clip_len,
        crop=args.crop,
        batch_size=args.batch_size,
        num_gpus_per_actor=args.num_gpus_per_actor,
        device=args.device,
        flush_every=4,
        window_seconds=0.0,
    )
    long_uri = uris.join(root, "long", "rec.mp4")
    make_video(long_uri, num_frames=int(args.long_seconds * 25), height=height, width=width, seed=9)

    # (2) bytes read
    old_ratio, new_ratio = bytes_read(long_uri, settings)
    print(
        f"(2) bytes read / file size ({os.path.getsize(long_uri) / 1e6:.1f} MB): old {old_ratio:.2f}  new {new_ratio:.2f}"
    )

    # (3) decode-worker peak RSS
    rss = {}
    for design in ("old", "new"):
        out = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, long_uri, design],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": REPO},
        )
        rss[design] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"(3) decode worker peak RSS: old (torch imported) {rss['old']['peak_kib'] / 1024:.0f} MiB, "
        f"new {rss['new']['peak_kib'] / 1024:.0f} MiB (torch loaded: {rss['new']['torch']})"
    )

    # (4) pipeline vs model only, 1 and 2 actors
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    todo = {}
    for i in range(args.videos):
        uri = uris.join(root, "videos", f"v{i}.mp4")
        make_video(uri, num_frames=int(args.seconds * 25), height=height, width=width, seed=i)
        todo[f"v{i}"] = uri
    model = model_rate(settings)
    for actors in [] if args.skip_pipeline else sorted({1, args.concurrency}):
        run = replace(settings, concurrency=(actors, actors))
        clips, wall_old, cpu_old = old_pipeline(todo, run)
        clips_new, wall_new, cpu_new = new_pipeline(todo, run, uris.join(root, f"store-{actors}"))
        print(
            f"(4) {actors} actor(s): model only {actors * model:6.1f} clips/s | old pipeline {clips / wall_old:6.1f} "
            f"clips/s (driver CPU {cpu_old:.1f} s) | new {clips_new / wall_new:6.1f} clips/s (driver CPU {cpu_new:.1f} s)"
            f" | new/model {clips_new / wall_new / (actors * model):.2f}"
        )

    # (5) a long video: windows vs one task
    one = replace(settings, concurrency=(1, 1))
    _, wall_one, _ = new_pipeline({"rec": long_uri}, one, uris.join(root, "long-one"))
    split = replace(one, window_seconds=args.window_seconds)
    _, wall_split, _ = new_pipeline({"rec": long_uri}, split, uris.join(root, "long-split"))
    windows = len(plan_video({"uri": long_uri, "video_id": "rec"}, sampling=sampling_of(split, split.spec())))
    print(
        f"(5) {args.long_seconds:.0f}-s recording: one task {wall_one:.1f} s, {windows} windows {wall_split:.1f} s "
        f"(one/windows = {wall_one / wall_split:.2f}x)"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
