"""Search training settings with Ray Tune (ASHA early stopping) over Ray Train runs.

    python -m ray_jobs.tune --features STORE --config tune_configs/search_mil.yaml --out DIR
        [--num-samples N] [--max-concurrent M] [--num-workers W] [--use-gpu] [--cpus-per-worker F] [--resume]

Writes DIR/trials.csv (one row per trial), DIR/best_config.yaml (for ray_jobs.train --config),
DIR/best_run/model.pt (for ray_jobs.evaluate --checkpoint DIR/best_run), DIR/best_eval/metrics.json
(the best model on the test split), DIR/sweep.png and Tune's results and TensorBoard logs under
DIR/ray_results/ (tensorboard --logdir DIR/ray_results). --resume continues an interrupted search.
"""

from __future__ import annotations

import argparse
import sys

from anomaly import cli


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        __doc__, parents=[cli.training_resources(failures_help="a trial recovers from")]
    )
    parser.add_argument("--features", required=True, help="feature store URI")
    parser.add_argument("--out", required=True, help="search directory (local or s3://…) for every output")
    parser.add_argument(
        "--config",
        default=None,
        help="search YAML (base/search/tune sections) or a flat training config (one trial); "
        "default: one trial of the built-in defaults (with --resume: the search's own settings)",
    )
    parser.add_argument(
        "--num-samples", type=cli.positive_int, default=None, help="override tune.num_samples"
    )
    parser.add_argument(
        "--max-concurrent",
        type=cli.positive_int,
        default=None,
        help="trials at a time (default: tune.max_concurrent, else as many as the cluster's CPUs/GPUs hold)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the interrupted search in --out (errored trials too)"
    )
    cli.add_ray_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    from anomaly.tuning import SearchInterrupted, describe_spec, format_table, load_search_spec, run_search

    spec = load_search_spec(args.config) if args.config or not args.resume else None
    if spec is not None:
        print(describe_spec(spec))
    cli.init_ray(args.num_cpus)
    try:
        result = run_search(
            args.features,
            args.out,
            spec,
            **cli.training_fields(args),
            num_samples=args.num_samples,
            max_concurrent=args.max_concurrent,
            resume=args.resume,
        )
    except SearchInterrupted as exc:
        print(
            f"interrupted: {exc}; continue with: python -m ray_jobs.tune --features {args.features} "
            f"--out {args.out} --resume",
            file=sys.stderr,
        )
        return 130
    print(format_table(result.rows, result.columns))
    best = result.best
    print(
        f"best trial {best['trial_id']}: val AUC {best['best_val_auc']:.4f} "
        f"(epoch {best['checkpoint_epoch']})"
    )
    if result.eval_metrics is not None:
        print(f"best model on the test split: frame AUC {result.eval_metrics['frame_auc']:.4f}")
    out = result.out
    plot = f"  plot: {result.sweep_plot}" if result.sweep_plot else ""
    print(f"table: {out}/trials.csv{plot}  config: {out}/best_config.yaml")
    print(f"model: {out}/best_run/model.pt  evaluation: {out}/best_eval/metrics.json")
    print(f"tensorboard --logdir {out}/ray_results")
    return 0


if __name__ == "__main__":
    cli.run(main, get_args_parser())
