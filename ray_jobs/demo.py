"""The quick demo: a synthetic feature store -> Ray Train -> evaluation, on built-in defaults.

python -m ray_jobs.demo [--out DIR]
"""

from __future__ import annotations

import argparse
import os

from anomaly import cli, uris


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="demo_output", help="folder or URI for everything the demo writes")
    parser.add_argument("--videos", type=int, default=120, help="synthetic videos (half train, half test)")
    parser.add_argument("--max-epochs", type=int, default=20, help="training epochs at most")
    parser.add_argument("--num-workers", type=int, default=2, help="Ray Train workers")
    cli.add_ray_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    from anomaly.config import load_train_config
    from anomaly.evaluation import evaluate
    from anomaly.synthetic.features import make_feature_store
    from anomaly.training import fit
    from ray_jobs.evaluate import format_metrics

    out = os.path.abspath(args.out) if uris.is_local(args.out) else args.out
    store, run_dir, eval_dir = (uris.join(out, name) for name in ("features", "run", "eval"))
    print(f"[1/3] writing a synthetic feature store with {args.videos} videos to {store}")
    if not uris.exists(uris.join(store, "_store.json")):
        make_feature_store(
            store, num_train=args.videos // 2, num_test=args.videos - args.videos // 2, signal=0.6
        )
    cli.init_ray(args.num_cpus)
    print(f"[2/3] training the MIL scorer with Ray Train ({args.num_workers} workers) into {run_dir}")
    config = load_train_config(None, {"max_epochs": args.max_epochs, "batch_size": 8})
    result = fit(store, run_dir, config, num_workers=args.num_workers)
    print(f"      best epoch {result.best_epoch}, val AUC {result.best_metrics['val_auc']:.4f}")
    print(f"[3/3] evaluating on the test split into {eval_dir}")
    metrics = evaluate(store, run_dir, eval_dir)
    print(format_metrics(metrics))
    print(f"\nplots: {eval_dir}/roc.png, {eval_dir}/timelines/, {run_dir}/training_curves.png")
    print("by hand:")
    print(f"  python -m ray_jobs.train --features {store} --out {run_dir}")
    print(f"  python -m ray_jobs.evaluate --features {store} --checkpoint {run_dir} --out {eval_dir}")
    return 0


if __name__ == "__main__":
    cli.run(main, get_args_parser())
