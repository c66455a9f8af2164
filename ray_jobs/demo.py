"""The one-command demo: synthetic surveillance videos -> features -> training -> tuning -> evaluation -> scoring.

    python -m ray_jobs.demo [--out DIR] [--s3]

Every step runs the real system on a small scale: H.264 clips with known
anomalous intervals are written to a local folder (or, with --s3, to a moto S3
server on 127.0.0.1), features are extracted by a randomly initialised 3D CNN
through the Ray Data pipeline, the MIL scorer is trained with Ray Train, a smoke
Ray Tune search runs, the best model is evaluated on the test split, and one
held-out clip is scored frame by frame. Built for 2 CPU cores and no GPU.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from anomaly import cli, uris

REPO = Path(__file__).resolve().parents[1]
DEMO_BUCKET = "anomaly-demo"


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(__doc__)
    parser.add_argument("--out", default="demo_output", help="local folder for everything the demo writes")
    parser.add_argument(
        "--s3", action="store_true", help="keep videos and features on a local moto S3 server"
    )
    parser.add_argument(
        "--videos", type=int, default=32, help="synthetic clips (half anomalous, half in test)"
    )
    parser.add_argument("--frames", type=int, default=160, help="frames per clip (at 25 fps)")
    parser.add_argument("--backbone", default="r3d_18", help="3D CNN, randomly initialised (no download)")
    parser.add_argument(
        "--crop", type=int, default=64, help="square model input; small keeps the CPU demo fast"
    )
    parser.add_argument("--clip-len", type=int, default=8, help="frames per clip fed to the backbone")
    parser.add_argument("--max-epochs", type=int, default=20, help="training epochs at most (early stopping)")
    parser.add_argument("--num-workers", type=int, default=2, help="Ray Train workers")
    parser.add_argument(
        "--tune-config",
        default=str(REPO / "tune_configs" / "smoke.yaml"),
        help="search space of the Tune step",
    )
    parser.add_argument("--skip-tune", action="store_true", help="leave out the Tune step")
    cli.add_ray_arguments(parser)
    return parser


def start_local_s3() -> str:
    """A moto S3 server on 127.0.0.1 with a bucket, wired in through the standard AWS variables."""
    import socket

    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="demo",
        AWS_SECRET_ACCESS_KEY="demo",
        AWS_DEFAULT_REGION="us-east-1",
    )
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir(DEMO_BUCKET)
    return endpoint


class Steps:
    """Numbered, timed progress lines."""

    def __init__(self, total: int) -> None:
        self.total, self.number, self.started = total, 0, time.monotonic()

    def __call__(self, text: str) -> None:
        self.number += 1
        print(f"[{self.number}/{self.total} {time.monotonic() - self.started:5.0f}s] {text}", flush=True)


def main(args: argparse.Namespace) -> int:
    from anomaly.config import load_train_config
    from anomaly.evaluation import evaluate
    from anomaly.extraction import ExtractionSettings, extract
    from anomaly.ground_truth import GroundTruth
    from anomaly.reports import format_alarms, format_metrics
    from anomaly.scoring import DEFAULT_THRESHOLD, score_video, write_outputs
    from anomaly.synthetic import make_video, make_video_set, write_annotations
    from anomaly.training import fit

    out = os.path.abspath(args.out)
    data_root = f"s3://{DEMO_BUCKET}" if args.s3 else out
    videos_uri, store = uris.join(data_root, "videos"), uris.join(data_root, "features")
    annotations = uris.join(data_root, "Temporal_Anomaly_Annotation.txt")
    run_dir, tune_dir, eval_dir, score_dir = (os.path.join(out, n) for n in ("run", "tune", "eval", "score"))
    step = Steps(6 if not args.skip_tune else 5)
    if args.s3:
        print(f"S3: moto server at {start_local_s3()}, bucket s3://{DEMO_BUCKET}")

    step(f"writing {args.videos} synthetic surveillance clips (H.264, known anomalies) to {videos_uri}")
    half = args.videos // 2
    videos = make_video_set(
        videos_uri, num_normal=args.videos - half, num_abnormal=half, num_frames=args.frames, seed=7
    )
    write_annotations(videos, annotations)
    holdout = make_video(
        os.path.join(out, "holdout", "Explosion900_x264.mp4"),
        num_frames=args.frames,
        event="flash",
        interval=(args.frames // 2, args.frames // 2 + args.frames // 4),
        seed=900,
    )

    # Logical CPUs above the 2 physical ones: Tune's trial drivers, Train's workers and the decode
    # tasks are mostly waiting on each other in a demo this small; oversubscribing keeps them moving.
    cli.init_ray(args.num_cpus or max(4, os.cpu_count() or 1))
    step(f"extracting features with a random-weight {args.backbone} through Ray Data into {store}")
    settings = ExtractionSettings(
        backbone=args.backbone,
        weights=None,
        clip_len=args.clip_len,
        crop=(args.crop, args.crop),
        batch_size=8,
    )
    report = extract(videos_uri, store, settings, GroundTruth.load(annotations, None))
    print(f"      {report.summary()}")

    step(f"training the MIL scorer with Ray Train ({args.num_workers} DDP workers) into {run_dir}")
    # A validation split (training's default holds none back): the demo compares this run with
    # the Tune search's best trial on it.
    config = load_train_config(
        None, {"max_epochs": args.max_epochs, "batch_size": 4, "patience": 6, "val_fraction": 0.15}
    )
    trained = fit(store, run_dir, config, num_workers=args.num_workers)
    print(
        f"      {len(trained.history)} epochs, best epoch {trained.best_epoch}: val AUC {trained.best_metrics['val_auc']:.3f}"
    )

    checkpoint = run_dir
    if not args.skip_tune:
        from anomaly.tuning import load_search_spec, run_search

        step(f"Ray Tune smoke search ({args.tune_config}) into {tune_dir}")
        searched = run_search(store, tune_dir, load_search_spec(args.tune_config), evaluate_best=False)
        best = searched.best or {}
        print(f"      {len(searched.rows)} trials; best val AUC {best.get('best_val_auc', float('nan')):.3f}")
        if best.get("best_val_auc", -1) > trained.best_metrics["val_auc"]:
            checkpoint = os.path.join(tune_dir, "best_run")
            print("      the tuned model beats the default run: evaluating it")

    step(f"evaluating {checkpoint} on the test split into {eval_dir}")
    metrics = evaluate(store, checkpoint, eval_dir)
    print("\n".join(f"      {line}" for line in format_metrics(metrics).splitlines()))

    step(f"scoring the held-out clip {holdout.uri}")
    # The demo's training clips have fewer clips than 32 segments: a training segment is one clip.
    scores = score_video(holdout.uri, checkpoint, window_clips=1)
    written = write_outputs(scores, score_dir)
    alarms = format_alarms(scores, DEFAULT_THRESHOLD)
    start, end = holdout.interval
    print(f"      true anomaly: {start / holdout.fps:.2f}s – {end / holdout.fps:.2f}s; alarms (clip scores):")
    print("\n".join(alarms) if alarms else "        none")

    print("\nResults")
    print(f"  frame AUC {100 * metrics['frame_auc']:.2f} on {metrics['num_videos']} test clips (chance: 50)")
    print(
        f"  plots:   {eval_dir}/roc.png, {eval_dir}/timelines/, {run_dir}/training_curves.png, {written['timeline']}"
    )
    if not args.skip_tune:
        print(
            f"  tuning:  {tune_dir}/trials.csv, {tune_dir}/sweep.png; tensorboard --logdir {tune_dir}/ray_results"
        )
    by_hand = [
        f"extract {videos_uri} --out {store} --backbone {args.backbone} --weights none "
        f"--clip-len {args.clip_len} --crop {args.crop},{args.crop} --annotations {annotations}",
        f"train --features {store} --out {run_dir} --num-workers {args.num_workers}",
        f"tune --features {store} --config tune_configs/smoke.yaml --out {tune_dir}",
        f"evaluate --features {store} --checkpoint {checkpoint} --out {eval_dir}",
        f"score {holdout.uri} --checkpoint {checkpoint} --out {score_dir}",
    ]
    print("Each step by hand:\n" + "\n".join(f"  python -m ray_jobs.{command}" for command in by_hand))
    return 0


if __name__ == "__main__":
    cli.run(main, get_args_parser())
