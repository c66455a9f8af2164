"""Feature extraction throughput and memory, side by side in one run on the same synthetic videos.

1. raw decode: ``anomaly.video.iter_clips`` over every video in one process (frames/s, clips/s),
   and the decode stage as the pipeline runs it (``decode_video``: probe + clips);
2. model only: ``ClipFeatureExtractor`` on pre-made uint8 clips (clips/s), with the threads one
   model actor gets (``--num-cpus-per-actor``) on CPU, or on the GPU with ``--device cuda``;
3. a plain single-process loop: decode -> model, one video after another (all cores for torch);
4. the Ray pipeline (``anomaly.extraction.extract``) into a fresh store, end to end and after its
   first video (actor start-up excluded);
5. peak RSS of the decode stage on one video and on a 10x longer one (must not grow with length).

    python benchmarks/extract.py [--quick] [--videos 8 --seconds 10] [--device cuda --num-gpus-per-actor 1]
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

import numpy as np
import torch

from anomaly import uris
from anomaly.extraction import ExtractionSettings, decode_video, extract
from anomaly.extractors import ClipFeatureExtractor
from anomaly.synthetic import make_video, make_video_set
from anomaly.video import iter_clips, probe_video

RSS_SCRIPT = """
import json, resource, sys
from anomaly.extraction import ExtractionSettings, decode_video

def kib(key):  # Linux: VmHWM is the peak RSS, VmRSS the current one
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key + ":"))

settings = ExtractionSettings(**json.loads(sys.argv[2]))
spec = settings.spec()
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # reset the peak to the current RSS: the imports' transient peak is not the decode's
before = kib("VmHWM")
rows = decode_video({"uri": sys.argv[1], "video_id": "v"}, spec=spec, stride=settings.effective_stride(spec))
clips = sum(1 for row in rows if not row["error"])
print(json.dumps({"clips": clips, "before_kib": before, "after_kib": kib("VmHWM")}))
"""


def decode_rate(video_uris: list[str], spec, stride: int, repeats: int = 3) -> tuple[float, float, int, int]:
    """(seconds in iter_clips alone, seconds in decode_video = probe + clips, frames, clips), best of ``repeats``."""
    sizes, frames = {}, 0
    for uri in video_uris:
        info = probe_video(uri)  # sizes the resize as the pipeline does; not part of the raw rate
        frames += info.num_frames
        sizes[uri] = spec.resized_shape(info.height, info.width)
    raw = stage = float("inf")
    for _ in range(repeats):  # best of: the machine may be shared, and the first pass warms caches
        clips = 0
        started = time.perf_counter()
        for uri in video_uris:
            for _ in iter_clips(uri, clip_len=spec.clip_len, stride=stride, size=sizes[uri], crop=spec.crop):
                clips += 1
        raw = min(raw, time.perf_counter() - started)
        started = time.perf_counter()
        for uri in video_uris:
            for _ in decode_video({"uri": uri, "video_id": "v"}, spec=spec, stride=stride):
                pass
        stage = min(stage, time.perf_counter() - started)
    return raw, stage, frames, clips


def model_rate(settings: ExtractionSettings, spec, batches: int) -> float:
    extractor = ClipFeatureExtractor(
        settings.backbone, settings.weights, crop=spec.crop, clip_len=spec.clip_len, device=settings.device
    )
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, size=(settings.batch_size, spec.clip_len, *spec.crop, 3), dtype=np.uint8)
    extractor({"clip": clips})  # warm-up: allocators, cuDNN autotuning
    _sync(extractor)
    seconds = []
    for _ in range(batches):
        started = time.perf_counter()
        extractor({"clip": clips})
        _sync(extractor)
        seconds.append(time.perf_counter() - started)
    return settings.batch_size / float(np.median(seconds))  # the median batch: robust to a busy neighbour


def _sync(extractor: ClipFeatureExtractor) -> None:
    if extractor.device.type == "cuda":
        torch.cuda.synchronize()


def single_process(video_uris: list[str], settings: ExtractionSettings, spec) -> float:
    """clips/s of decode -> model in one loop, batching clips of one video at a time."""
    extractor = ClipFeatureExtractor(
        settings.backbone, settings.weights, crop=spec.crop, clip_len=spec.clip_len, device=settings.device
    )
    stride = settings.effective_stride(spec)
    clips = 0
    started = time.perf_counter()
    for uri in video_uris:
        info = probe_video(uri)
        size = spec.resized_shape(info.height, info.width)
        batch = []
        for clip in iter_clips(uri, clip_len=spec.clip_len, stride=stride, size=size, crop=spec.crop):
            batch.append(clip.frames)
            if len(batch) == settings.batch_size:
                extractor({"clip": np.stack(batch)})
                clips, batch = clips + len(batch), []
        if batch:
            extractor({"clip": np.stack(batch)})
            clips += len(batch)
    _sync(extractor)
    return clips / (time.perf_counter() - started)


def peak_rss(uri: str, settings: ExtractionSettings) -> dict:
    fields = {"backbone": settings.backbone, "clip_len": settings.clip_len, "crop": settings.crop}
    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, uri, json.dumps(fields)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pair(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.split(","))
    return h, w


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=8, help="synthetic videos")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument(
        "--size", type=_pair, default=(240, 320), help="H,W of the videos (UCF-Crime: 240,320)"
    )
    parser.add_argument("--backbone", default="r3d_18")
    parser.add_argument("--crop", type=_pair, default=(112, 112), help="model input H,W")
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--num-gpus-per-actor", type=float, default=0.0)
    parser.add_argument("--num-cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=1, help="model actors")
    parser.add_argument("--decode-cpus", type=float, default=1.0, help="CPUs reserved per decoding task")
    parser.add_argument("--model-batches", type=int, default=8, help="batches timed for the model-only rate")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument(
        "--quick", action="store_true", help="6 videos x 8 s at 64x64: about a minute on 2 cores"
    )
    parser.add_argument("--out", default=None, help="folder for the videos and stores (default: a temp dir)")
    args = parser.parse_args()
    if args.quick:
        args.videos, args.seconds, args.crop = 6, 8.0, (64, 64)

    settings = ExtractionSettings(
        backbone=args.backbone,
        weights=None,
        clip_len=args.clip_len,
        crop=args.crop,
        batch_size=args.batch_size,
        num_gpus_per_actor=args.num_gpus_per_actor,
        num_cpus_per_actor=args.num_cpus_per_actor,
        concurrency=(args.concurrency, args.concurrency),
        decode_num_cpus=args.decode_cpus,
        device=args.device,
        flush_every=4,
    )
    spec = settings.validate()
    stride = settings.effective_stride(spec)
    root = args.out or tempfile.mkdtemp(prefix="bench-extract-")
    frames_per_video = int(args.seconds * args.fps)
    height, width = args.size
    videos = make_video_set(
        uris.join(root, "videos"),
        num_normal=args.videos // 2,
        num_abnormal=args.videos - args.videos // 2,
        num_frames=frames_per_video,
        fps=args.fps,
        height=height,
        width=width,
        seed=0,
    )
    video_uris = [v.uri for v in videos]
    cores = os.cpu_count()
    print(
        f"{len(videos)} videos x {frames_per_video} frames ({height}x{width} H.264), {args.backbone} at "
        f"{spec.clip_len}x{spec.crop[0]}x{spec.crop[1]}, batch {args.batch_size}, device {args.device}, "
        f"{cores} cores, {platform.processor() or platform.machine()}"
    )

    raw_s, stage_s, frames, clips = decode_rate(video_uris, spec, stride)
    decode_clips = clips / raw_s
    print(f"(1) decode, iter_clips      {frames / raw_s:8.0f} frames/s  {decode_clips:7.1f} clips/s")
    print(
        f"    decode stage (probe+clips) {frames / stage_s:7.0f} frames/s  {clips / stage_s:7.1f} clips/s "
        f"(probe adds {100 * (stage_s / raw_s - 1):.0f} %)"
    )

    threads = torch.get_num_threads()
    if args.device == "cpu":
        torch.set_num_threads(max(1, int(args.num_cpus_per_actor)))  # what one model actor gets
    one_actor = model_rate(settings, spec, args.model_batches)
    model_clips = one_actor * args.concurrency  # what the pipeline's actors could do at most
    print(
        f"(2) model only              {model_clips:7.1f} clips/s ({args.concurrency} x {one_actor:.1f}, "
        f"{torch.get_num_threads()} torch threads each)"
    )
    torch.set_num_threads(threads)

    single = single_process(video_uris, settings, spec)
    print(f"(3) single-process loop     {single:7.1f} clips/s ({threads} torch threads)")

    import ray  # started only now, so its idle workers do not disturb (1)-(3)

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    store = uris.join(root, f"store-{int(time.time())}")
    report = extract(video_uris, store, settings)
    assert len(report.extracted) == len(videos), report.summary()
    end_to_end = report.num_clips / report.seconds
    per_video = report.num_clips / len(report.extracted)
    after_first = report.seconds - report.first_commit_seconds
    steady = (
        (report.num_clips - per_video) / after_first if len(videos) > 2 and after_first > 1 else end_to_end
    )
    print(
        f"(4) Ray pipeline            {end_to_end:7.1f} clips/s end to end ({report.seconds:.1f} s), "
        f"{steady:.1f} clips/s after the first video (at {report.first_commit_seconds:.1f} s: start-up)"
    )
    slower = min(decode_clips, model_clips)
    print(f"    pipeline / model only     = {steady / model_clips:.2f}")
    print(f"    pipeline / decode         = {steady / decode_clips:.2f}")
    print(f"    pipeline / slower of 1,2  = {steady / slower:.2f}  (target >= 0.9)")
    print(f"    pipeline / single-process = {steady / single:.2f}x  (end to end {end_to_end / single:.2f}x)")
    ray.shutdown()

    short = videos[0]
    long_uri = uris.join(root, "long", "Normal_Videos_999_x264.mp4")
    make_video(long_uri, num_frames=10 * short.num_frames, fps=args.fps, height=height, width=width, seed=9)
    rss_short, rss_long = peak_rss(short.uri, settings), peak_rss(long_uri, settings)
    for name, rss in (("1x", rss_short), ("10x", rss_long)):
        print(
            f"(5) decode stage, {name:3s} video ({rss['clips']:4d} clips): peak RSS {rss['after_kib'] / 1024:6.1f} MiB "
            f"(+{(rss['after_kib'] - rss['before_kib']) / 1024:.1f} MiB over the imports)"
        )


if __name__ == "__main__":
    main()
