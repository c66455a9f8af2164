"""Distributed scoring against extraction alone: clips/s on the same videos, side by side in one run.

1. ``anomaly.extraction.extract``: the Ray Data extraction pipeline into a fresh feature store;
2. ``anomaly.scoring.pipeline.score``: the same listing, decode, model actors and clip-table
   writers, plus the scoring tasks (clip table read back, the clip-window head, alarms, the
   Parquet/PNG outputs) and the driver's alarms.parquet/.csv from part footers, into a fresh OUT;
3. the head alone: ``score_clips`` on as many clip features as (2) scored (the work scoring adds).

Both runs share one local Ray (started before either), run in alternating order (``--repeats``)
so the machine's load hits both alike, and exclude nothing: listing, actor start-up, writes.

    python benchmarks/score.py [--videos 6 --seconds 20 --fps 25] [--crop 32,32 --clip-len 8]
        [--device cuda --num-gpus-per-actor 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomaly import cli
from anomaly.checkpoints import checkpoint_payload
from anomaly.config import TrainConfig
from anomaly.extraction import ExtractionSettings, extract
from anomaly.heads import MILScorer
from anomaly.scoring.job import ScoringJob
from anomaly.scoring.pipeline import score
from anomaly.scoring.windows import score_clips
from anomaly.synthetic import make_video_set


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--backbone", default="r3d_18")
    parser.add_argument("--crop", type=cli.int_pair, default=(32, 32))
    parser.add_argument("--clip-len", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-gpus-per-actor", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each")
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="bench-score-")
    videos = make_video_set(
        os.path.join(out, "videos"),
        num_normal=args.videos - args.videos // 2,
        num_abnormal=args.videos // 2,
        num_frames=int(args.seconds * args.fps),
        fps=args.fps,
        seed=3,
    )
    settings = ExtractionSettings(
        backbone=args.backbone,
        weights=None,
        clip_len=args.clip_len,
        crop=tuple(args.crop),
        batch_size=args.batch_size,
        device=args.device,
        num_gpus_per_actor=args.num_gpus_per_actor,
        concurrency=(args.concurrency, args.concurrency),
    )
    spec = settings.validate()
    meta = {
        "backbone": args.backbone,
        "feature_dim": spec.feature_dim,
        "weights_sha256": "random",
        "clip_len": spec.clip_len,
        "stride": spec.clip_len,
        "crop": list(spec.crop),
    }
    torch.manual_seed(0)
    run = os.path.join(out, "run")
    os.makedirs(run, exist_ok=True)
    torch.save(
        checkpoint_payload(MILScorer(spec.feature_dim), TrainConfig(), store_metadata=meta),
        os.path.join(run, "model.pt"),
    )
    cli.init_ray(args.num_cpus)
    folder = os.path.join(out, "videos")
    rates: dict[str, list[float]] = {"extract": [], "score": []}
    clips = 0
    for repeat in range(args.repeats):
        for kind in ("extract", "score") if repeat % 2 == 0 else ("score", "extract"):
            target = os.path.join(out, f"{kind}-{repeat}")
            started = time.monotonic()
            if kind == "extract":
                report = extract(folder, target, settings)
                clips = report.num_clips
            else:
                report = score(folder, target, ScoringJob(checkpoint=run, extraction=settings))
                clips = report.num_clips
            rates[kind].append(clips / (time.monotonic() - started))
            print(f"  {kind} run {repeat + 1}: {clips} clips, {rates[kind][-1]:.2f} clips/s", flush=True)
    feats = np.random.default_rng(0).normal(size=(clips, spec.feature_dim)).astype(np.float32)
    model = MILScorer(spec.feature_dim).eval()
    started = time.monotonic()
    score_clips(model, feats, window=4)
    head = clips / (time.monotonic() - started)
    ext, sco = max(rates["extract"]), max(rates["score"])
    print(
        f"\n{len(videos)} videos x {args.seconds:g} s at {args.fps:g} fps, {clips} clips of {spec.clip_len} x "
        f"{spec.crop[0]}x{spec.crop[1]}, {args.backbone} on {args.device}, {args.concurrency} actor(s)"
    )
    print("| pipeline | clips/s (best of runs) | runs |\n| --- | ---: | --- |")
    print(
        f"| extraction alone (`anomaly.extraction.extract`) | {ext:.2f} | {', '.join(f'{r:.2f}' for r in rates['extract'])} |"
    )
    print(
        f"| distributed scoring (`ray_jobs.score` pipeline) | {sco:.2f} | {', '.join(f'{r:.2f}' for r in rates['score'])} |"
    )
    print(f"| the head alone (clip windows + MIL scorer, one process) | {head:.0f} | 1 |")
    print(f"\nratio scoring / extraction = {sco / ext:.2f} (target: close to 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
