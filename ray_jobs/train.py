"""Train the MIL anomaly scorer on a feature store with Ray Train (PyTorch DDP).

    python -m ray_jobs.train --features STORE --out RUN_DIR [--config tune_configs/default.yaml] [--num-workers N] [--use-gpu]

Re-running with the same --out resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import math

from anomaly import cli
from anomaly.config import load_train_config


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(__doc__, parents=[cli.training_resources()])
    parser.add_argument("--features", required=True, help="feature store URI")
    parser.add_argument(
        "--out", required=True, help="run directory (local or s3://…) for the model and curves"
    )
    parser.add_argument(
        "--config", default=None, help="YAML of training settings (default: built-in defaults)"
    )
    parser.add_argument(
        "--max-epochs", type=cli.positive_int, default=None, help="override the config's max_epochs"
    )
    cli.add_ray_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    from anomaly.training import fit

    overrides = {"max_epochs": args.max_epochs} if args.max_epochs else {}
    config = load_train_config(args.config, overrides)
    cli.init_ray(args.num_cpus)
    result = fit(
        args.features,
        args.out,
        config,
        **cli.training_fields(args),
    )
    best = result.best_metrics
    frame = best.get("val_frame_auc", math.nan)
    chosen = {"ema": "EMA weights of epoch", "last": "last epoch", "best_val": "best epoch"}[config.selection]
    print(
        f"trained {len(result.history)} epochs ({config.model} head, loss {config.loss}); exported "
        f"{chosen} {result.best_epoch}: val AUC {best['val_auc']:.4f} (frame {frame:.4f}, "
        f"video {best['val_video_auc']:.4f})"
    )
    print(f"model: {result.model_uri}")
    return 0


if __name__ == "__main__":
    cli.run(main, get_args_parser())
