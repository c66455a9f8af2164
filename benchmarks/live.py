"""Live scoring: alarm latency on a live camera, and cameras one backbone replica keeps at real time.

1. **Latency**: one synthetic HTTP MPEG-TS camera (:class:`anomaly.synthetic.stream.SyntheticCamera`,
   16 fps, a 3-s flash every ``--period`` s) watched by the Serve application of ``ray_jobs.live``
   with the toy head of the demo (:func:`anomaly.live.demo.fit_demo_checkpoint`: a random r3d_18 at
   8 x 32 x 32 and a MIL head fitted on synthetic video). For each of ``--events`` events: the time
   from the first anomalous frame leaving the camera's socket to the alarm appearing on
   ``GET /alarms`` (polled every 50 ms); p50/p95 over the events; alarms that overlap no event
   are counted as false.
2. **Cameras per replica**: 1, 2, 4, 6, 8, 12, … cameras (``--max-cameras``) on one backbone replica; each
   step runs ``--seconds`` s after a warm-up, and keeps up when every camera's lag (now minus the
   end of its last scored clip) did not grow by more than one clip and no clip was dropped.

The cameras' encoders run on the same machine (each x264 ~1-2 % of a core at 64x80), as do the
readers (one Ray actor each). GPU (later): add ``--num-gpus 1 --device cuda --batch-size 64``.

    python benchmarks/live.py [--events 10 --period 10] [--max-cameras 16 --seconds 30]
        [--num-gpus 1 --device cuda] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomaly.live.demo import DEMO_WINDOW_CLIPS, fit_demo_checkpoint  # noqa: E402
from anomaly.synthetic.stream import SyntheticCamera  # noqa: E402

CLIP_S = 8 / 16.0
WINDOW_S = DEMO_WINDOW_CLIPS * CLIP_S


def get(base: str, path: str):
    with urllib.request.urlopen(f"{base}{path}", timeout=10) as response:
        return json.loads(response.read())


def post(base: str, body: dict) -> None:
    request = urllib.request.Request(
        f"{base}/cameras", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=30).read()


def delete(base: str, camera_id: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{base}/cameras/{camera_id}", method="DELETE"), timeout=60)


def wait(what: str, check, timeout_s: float = 300.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def measure_latency(base: str, events: int, period: float) -> dict:
    cam = SyntheticCamera(first_event_s=8.0, event_s=3.0, period_s=period)
    post(base, {"id": "latency", "url": cam.url})
    seen: dict[float, float] = {}  # alarm start -> wall time it was first on /alarms
    end = cam.event_start(events - 1) + 30
    while time.time() < end:
        for alarm in get(base, "/alarms"):
            if alarm["camera"] == "latency":
                seen.setdefault(stamp(alarm["start"]), time.time())
        if len(cam.event_times) >= events and len(seen) >= events and time.time() > cam.event_times[-1] + 15:
            break
        time.sleep(0.05)
    delete(base, "latency")
    cam.close()
    latencies, matched = [], set()
    for k, sent in enumerate(
        cam.event_times
    ):  # events after the first N happen while waiting: match them too
        candidates = [
            (start, t) for start, t in seen.items() if sent - CLIP_S - 1.0 <= start <= sent + period / 2
        ]
        if candidates:
            start, t = min(candidates)
            matched.add(start)
            if k < events:
                latencies.append(t - sent)
    return {
        "events": min(events, len(cam.event_times)),
        "detected": len(latencies),
        "false_alarms": len(set(seen) - matched),
        "latency_s": [round(v, 3) for v in latencies],
        "p50_s": round(percentile(latencies, 0.5), 3) if latencies else None,
        "p95_s": round(percentile(latencies, 0.95), 3) if latencies else None,
        "target_s": CLIP_S + WINDOW_S + 1.0,
    }


def measure_cameras(base: str, max_cameras: int, seconds: float, warmup: float) -> list[dict]:
    steps, cams = [], {}
    counts = [n for n in (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256) if n <= max_cameras]
    try:
        for n in counts:
            for k in range(len(cams), n):
                cams[f"c{k}"] = SyntheticCamera(event=None, seed=k)
                post(base, {"id": f"c{k}", "url": cams[f"c{k}"].url})
            wait(
                f"{n} cameras live",
                lambda: all(
                    c["state"] == "live" and c["clips_scored"] > 0
                    for c in get(base, "/cameras")
                    if c["id"] in cams
                ),
            )
            time.sleep(warmup)
            first = {c["id"]: c for c in get(base, "/cameras") if c["id"] in cams}
            time.sleep(seconds)
            last = {c["id"]: c for c in get(base, "/cameras") if c["id"] in cams}
            growth = max((last[i]["lag_s"] or 0) - (first[i]["lag_s"] or 0) for i in last)
            dropped = sum(last[i]["clips_dropped"] - first[i]["clips_dropped"] for i in last)
            scored = sum(last[i]["clips_scored"] - first[i]["clips_scored"] for i in last)
            step = {
                "cameras": n,
                "clips_per_s": round(scored / seconds, 2),
                "needed_clips_per_s": round(n / CLIP_S, 2),
                "max_lag_s": round(max(c["lag_s"] or 0 for c in last.values()), 3),
                "lag_growth_s": round(growth, 3),
                "dropped_clips": dropped,
            }
            step["real_time"] = growth <= CLIP_S and dropped == 0
            print(json.dumps(step), flush=True)
            steps.append(step)
            if not step["real_time"]:
                break
    finally:
        for camera_id, cam in cams.items():
            try:
                delete(base, camera_id)
            except OSError:
                pass
            cam.close()
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--period", type=float, default=10.0, help="seconds between events")
    parser.add_argument("--max-cameras", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds measured per camera count")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--num-gpus", type=float, default=0.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--skip", choices=("latency", "cameras"), default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--checkpoint", default=None, help="a toy head fitted before (default: fit one, ~1 min)"
    )
    args = parser.parse_args()

    import ray
    from ray import serve

    from anomaly.live.app import build_app

    folder = tempfile.mkdtemp(prefix="bench-live-")
    t0 = time.time()
    run = args.checkpoint or fit_demo_checkpoint(os.path.join(folder, "run"))
    print(f"toy head {run} ready in {time.time() - t0:.0f} s", flush=True)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = {
        "checkpoint": run,
        "out": os.path.join(folder, "out"),
        "window_clips": DEMO_WINDOW_CLIPS,
        "reader_cpus": 0.05,
        "device": args.device,
        "num_gpus": args.num_gpus,
        "max_batch_size": args.batch_size,
    }
    serve.run(build_app(config), name="live", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{port}"
    wait("GET /healthz", lambda: get(base, "/healthz"))
    results = {"date": time.strftime("%Y-%m-%d"), "load_avg_start": os.getloadavg()}
    try:
        if args.skip != "latency":
            results["latency"] = measure_latency(base, args.events, args.period)
            print(json.dumps(results["latency"]), flush=True)
        if args.skip != "cameras":
            results["cameras"] = measure_cameras(base, args.max_cameras, args.seconds, args.warmup)
    finally:
        results["load_avg_end"] = os.getloadavg()
        serve.shutdown()
        ray.shutdown()
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
