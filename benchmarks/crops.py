"""Ten-crop training, ``crops: bags`` (each crop its own bag, RTFM) against ``crops: mean``, on synthetic stores.

A smoke check, not a measurement on real features: there is no real ten-crop store here. Each
seed makes a synthetic ten-crop store (:func:`anomaly.synthetic.features.make_feature_store` with
``crops=10``: every crop is the video's segments plus its own noise, ``--crop-noise``), trains
both modes with the same config and epochs (``bags`` then takes ten times the steps per
epoch, as RTFM's epochs do) and evaluates frame AUC on the store's test split, crop scores
averaged for ``bags``, the crop mean scored for ``mean``.

    python benchmarks/crops.py [--seeds 3] [--epochs 6] [--crop-noise 1.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--crop-noise", type=float, default=1.0)
    args = parser.parse_args()

    import ray

    from anomaly.config import TrainConfig
    from anomaly.evaluation import evaluate
    from anomaly.synthetic.features import make_feature_store
    from anomaly.training import fit

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    results: dict[str, list[tuple[float, float, int]]] = {"bags": [], "mean": []}
    with tempfile.TemporaryDirectory() as root:
        for seed in range(args.seeds):
            store = make_feature_store(
                f"{root}/store{seed}",
                num_train=60,
                num_test=30,
                feature_dim=32,
                signal=1.0,
                seed=seed,
                crops=10,
                crop_noise=args.crop_noise,
            )
            for mode in results:
                config = TrainConfig(max_epochs=args.epochs, batch_size=6, seed=seed, crops=mode)
                run = f"{root}/{mode}{seed}"
                started = time.perf_counter()
                history = fit(store, run, config, num_workers=1, cpus_per_worker=1).history
                metrics = evaluate(store, run, f"{run}-eval", timelines=False)
                seconds = time.perf_counter() - started
                results[mode].append((metrics["frame_auc"], seconds, int(history[0]["steps"])))
                print(
                    f"seed {seed} {mode}: frame AUC {metrics['frame_auc']:.4f}, {seconds:.0f} s", flush=True
                )
    ray.shutdown()
    print("| crops | seeds | frame AUC (mean ± std) | steps per epoch | wall s / run |")
    print("| --- | --- | --- | --- | --- |")
    for mode, rows in results.items():
        aucs = [r[0] for r in rows]
        std = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        print(
            f"| {mode} | {len(rows)} | {statistics.mean(aucs):.4f} ± {std:.4f} | {rows[0][2]} | "
            f"{statistics.mean(r[1] for r in rows):.0f} |"
        )


if __name__ == "__main__":
    main()
