"""GPU figures in one run: model-only against full-pipeline clips/s per backbone, CPU decode frames/s per core.

For ``c3d``, ``i3d`` and ``r3d_18`` at their native input sizes:

1. model-only clips/s: one :class:`~anomaly.extractors.ClipFeatureExtractor` on random uint8
   clips of the backbone's GPU batch size (``ExtractionSettings.effective_batch_size``), CUDA
   synchronised, median of timed batches after a warm-up;
2. full-pipeline clips/s: :func:`anomaly.extraction.extract` over synthetic 320x240 videos with
   ``--num-gpus-per-actor 1`` and the defaults (every GPU, the backbone's batch size);
3. CPU decode frames/s per core (one FFmpeg thread) at 320x240 and 1920x1080, the backbone's
   resize and crop included (``decode_video``);

then the ratios: pipeline / model-only, and the decode cores one GPU needs per backbone; last,
a one-worker training fit with ``--use-gpu`` (4.), which no GPU has run yet.
``--smoke`` runs the same code on CPU at tiny sizes in about a minute (a test, not a figure).

    bash benchmarks/gpu.sh            # on a GPU machine, at most 8 minutes
    bash benchmarks/gpu.sh --smoke    # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace

BACKBONES = ("c3d", "i3d", "r3d_18")
SMOKE_CLIP_LEN = {"c3d": 16}  # the shortest clip each backbone takes (others: 8)


def model_only(settings, spec, batches: int) -> float:
    """Clips/s of the model alone (benchmarks/extract.py's measurement, one home)."""
    from extract import model_rate  # benchmarks/ is this script's folder

    return model_rate(settings, batches)


def pipeline(settings, folder: str, store: str) -> tuple[float, int]:
    from anomaly.extraction import extract

    report = extract(folder, store, settings)
    return report.num_clips / report.seconds, report.num_clips


def decode_fps(uri: str, settings, spec) -> float:
    from anomaly.extraction import sampling_of
    from anomaly.extraction.decode import decode_video

    sampling = replace(sampling_of(settings, spec), threads=1, window_seconds=0)
    started = time.perf_counter()
    frames = 0
    for row in decode_video({"uri": uri, "video_id": "v"}, sampling=sampling):
        if row["kind"] == "end":
            frames = max(frames, int(row["num_frames"]))
    return frames / (time.perf_counter() - started)


def training(work: str, smoke: bool) -> dict:
    """A one-worker fit with ``--use-gpu`` (CPU under ``--smoke``) on a synthetic 512-d store with a
    validation split: GPU training end to end (EMA on the device, validation scored there) and
    how long a fit of 3 epochs takes, Ray start-up excluded."""
    from anomaly.config import TrainConfig
    from anomaly.synthetic.features import make_feature_store
    from anomaly.training import fit

    store = make_feature_store(
        os.path.join(work, "train-store"), num_train=48, num_test=8, feature_dim=512, seed=0
    )
    config = TrainConfig(max_epochs=3, batch_size=8, val_fraction=0.2)
    started = time.perf_counter()
    result = fit(store, os.path.join(work, "train-run"), config, use_gpu=not smoke, cpus_per_worker=1.0)
    return {
        "training": "mlp, 48 videos x 32 x 512, 3 epochs, 1 worker",
        "device": "cpu" if smoke else "cuda",
        "fit_s": round(time.perf_counter() - started, 2),
        "epochs": len(result.history),
        "val_auc": round(float(result.best_metrics["val_auc"]), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: checks the script runs")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--videos", type=int, default=8, help="synthetic 320x240 videos for the pipeline")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each video")
    parser.add_argument("--batches", type=int, default=20, help="timed model-only batches")
    parser.add_argument("--out", default=None, help="JSON lines file (default: stdout only)")
    args = parser.parse_args()

    import ray
    import torch

    from anomaly.extraction import ExtractionSettings
    from anomaly.synthetic import make_video

    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU here; use --smoke to check the script on CPU")
    work = tempfile.mkdtemp(prefix="gpu-bench-")
    fps = 25.0
    seconds = 2.0 if smoke else args.seconds
    videos = 1 if smoke else args.videos
    small = os.path.join(work, "videos")
    for i in range(videos):
        make_video(
            os.path.join(small, f"v{i:02d}.mp4"),
            num_frames=int(seconds * fps),
            fps=fps,
            height=240,
            width=320,
            seed=i,
        )
    large = make_video(
        os.path.join(work, "large.mp4"),
        num_frames=int((2 if smoke else 10) * fps),
        fps=fps,
        height=1080,
        width=1920,
        seed=99,
    ).uri
    ray.init(num_cpus=2 if smoke else None, include_dashboard=False, log_to_driver=False)
    results = []

    def say(row: dict) -> None:
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(json.dumps(row) + "\n")

    for backbone in args.backbones:
        if smoke:
            settings = ExtractionSettings(
                backbone=backbone,
                weights=None,
                crop=(32, 32),
                clip_len=SMOKE_CLIP_LEN.get(backbone, 8),
                device="cpu",
                batch_size=4,
                window_seconds=0,
            )
        else:
            settings = ExtractionSettings(
                backbone=backbone, weights=None, num_gpus_per_actor=1.0, device="cuda", window_seconds=0
            )
        spec = settings.validate()
        model = model_only(settings, spec, 2 if smoke else args.batches)
        full, clips = pipeline(settings, small, os.path.join(work, f"store-{backbone}"))
        decode = {
            f"{h}p": decode_fps(uri, settings, spec) for h, uri in ((240, f"{small}/v00.mp4"), (1080, large))
        }
        say(
            {
                "backbone": backbone,
                "input": f"{spec.clip_len}x{spec.crop[0]}x{spec.crop[1]}",
                "batch": settings.effective_batch_size(),
                "gpus": int(ray.cluster_resources().get("GPU", 0)),
                "model_only_clips_per_s": round(model, 1),
                "pipeline_clips_per_s": round(full, 1),
                "pipeline_clips": clips,
                "pipeline_over_model": round(full / model, 3),
                "decode_fps_per_core_240p": round(decode["240p"], 1),
                "decode_fps_per_core_1080p": round(decode["1080p"], 1),
                # cores of decoding one GPU needs: model clips/s x frames per clip (stride) / frames/s per core
                "decode_cores_per_gpu_240p": round(
                    model * settings.effective_stride(spec) / decode["240p"], 1
                ),
                "decode_cores_per_gpu_1080p": round(
                    model * settings.effective_stride(spec) / decode["1080p"], 1
                ),
            }
        )
    say(training(work, smoke))
    ray.shutdown()
    print(
        "ratios (pipeline / model-only): "
        + ", ".join(
            f"{row['backbone']} {row['pipeline_over_model']:.2f}" for row in results if "backbone" in row
        )
    )


if __name__ == "__main__":
    main()
