"""Where a fit's fixed cost goes, on a 48-video store: Ray start, input preparation, Train start-up.

Issue 20 measured 15–30 s before a fit's first optimizer step on 2 cores (``ray.init`` ≈ 10 s,
``prepare_inputs`` ≈ 18 s: four Ray Data passes over the store). This script times, in one
process on a fresh local Ray:

1. ``cli.init_ray`` (a local Ray, as every command starts it);
2. ``prepare_inputs`` (the split, the statistics and the cached bags: one read of the store);
3. ``fit`` with 1 and with 3 epochs on those inputs, side by side through a ``TorchTrainer``
   (the baseline: what every fit paid before) and through one Ray task (what a one-worker fit
   does now). The start-up of a fit is the 1-epoch time less one epoch, an epoch being half the
   difference between the 3- and 1-epoch fits.

    python benchmarks/fit_startup.py [--videos 48] [--dim 512] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=48, help="training videos (half anomalous)")
    parser.add_argument("--dim", type=int, default=512, help="feature width")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    args = parser.parse_args()

    from anomaly import cli, console
    from anomaly.config import TrainConfig
    from anomaly.synthetic.features import make_feature_store
    from anomaly.training import fit
    from anomaly.training.data import prepare_inputs

    console.configure(verbose=False)
    root = tempfile.mkdtemp(prefix="fit-startup-")
    store = os.path.join(root, "store")
    make_feature_store(store, num_train=args.videos, num_test=8, feature_dim=args.dim, seed=0)
    started = time.perf_counter()
    cli.init_ray(2)
    ray_s = time.perf_counter() - started

    config = TrainConfig(max_epochs=1, batch_size=6)
    started = time.perf_counter()
    inputs = prepare_inputs(store, config)
    prepare_s = time.perf_counter() - started

    fits = {}
    for path, ray_train in (("ray_train", True), ("local", False)):
        for epochs in (1, 3):
            started = time.perf_counter()
            history = fit(
                store,
                os.path.join(root, f"{path}{epochs}"),
                TrainConfig(max_epochs=epochs, batch_size=6),
                num_workers=args.workers,
                inputs=inputs,
                ray_train=ray_train,
            ).history
            fits[path, epochs] = time.perf_counter() - started
            assert len(history) == epochs, history
    print(f"store: {args.videos} training videos x 32 x {args.dim}, {args.workers} worker(s)")
    print(f"ray start (cli.init_ray)         {ray_s:6.1f} s")
    print(f"prepare_inputs (one store read)  {prepare_s:6.1f} s")
    startups = {}
    for path, label in (("ray_train", "TorchTrainer"), ("local", "one Ray task")):
        epoch_s = max(0.0, (fits[path, 3] - fits[path, 1]) / 2)
        startups[path] = fits[path, 1] - epoch_s
        print(
            f"fit in {label:<13} 1 / 3 epochs {fits[path, 1]:6.1f} s / {fits[path, 3]:.1f} s  "
            f"(start-up {startups[path]:.1f} s, an epoch {epoch_s:.2f} s)"
        )
    first = prepare_s + startups["local" if args.workers == 1 else "ray_train"]
    print(
        f"fit start-up ratio TorchTrainer / one task: {startups['ray_train'] / max(startups['local'], 1e-9):.1f}x"
    )
    print(f"first step after ray start       {first:6.1f} s  (goal <= 10 s)")


if __name__ == "__main__":
    main()
