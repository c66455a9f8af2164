"""Training throughput, side by side in one run on the same synthetic store.

1. ``ray_jobs.train``'s Ray Train loop with 1 worker (steady-state epochs, and end to end);
2. a plain single-process PyTorch loop over the same in-memory tensors (the baseline for Ray's overhead);
3. a loader that reads one feature file per bag per step, as the popular PyTorch port does.

    python benchmarks/train.py [--bags 2000] [--dim 512] [--epochs 5]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import numpy as np
import ray
import torch

from anomaly import store as feature_store
from anomaly.config import TrainConfig
from anomaly.losses import mil_loss
from anomaly.synthetic.features import make_feature_store
from anomaly.training import build_model, fit, make_optimizer, prepare_data


def _loss(scores, n, config):
    return mil_loss(
        scores[:n],
        scores[n:],
        loss=config.loss,
        lambda_smooth=config.lambda_smooth,
        lambda_sparse=config.lambda_sparse,
    )


def plain_loop(data, config: TrainConfig, epochs: int) -> float:
    """bags/s of the same model, loss and balanced sampling without Ray."""
    torch.manual_seed(0)
    model = build_model(data.feature_dim, config, data.mean, data.std)
    optimizer = make_optimizer(model, config)
    abnormal = np.flatnonzero(data.train_labels == 1)
    normal = np.flatnonzero(data.train_labels == 0)
    steps = math.ceil(len(abnormal) / config.batch_size)
    rng = np.random.default_rng(0)
    bags = 0
    started = time.perf_counter()
    for epoch in range(epochs + 1):
        if epoch == 1:  # the first epoch warms up allocators and kernels, as in Ray's steady figure
            bags, started = 0, time.perf_counter()
        order = rng.permutation(abnormal)
        model.train()
        for step in range(steps):
            take = np.arange(step * config.batch_size, (step + 1) * config.batch_size) % len(order)
            batch = torch.as_tensor(
                np.concatenate(
                    [
                        data.train_features[order[take]],
                        data.train_features[rng.choice(normal, config.batch_size)],
                    ]
                )
            )
            loss = _loss(model(batch), config.batch_size, config)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bags += len(batch)
    return bags / (time.perf_counter() - started)


def file_per_bag_loop(
    data, config: TrainConfig, folder: str, steps: int, files_per_label: int = 100
) -> float:
    """bags/s when every step parses one .txt file per bag (the popular port's Dataset)."""
    names = {}
    abnormal = np.flatnonzero(data.train_labels == 1)[:files_per_label]
    normal = np.flatnonzero(data.train_labels == 0)[:files_per_label]
    for i in np.concatenate([abnormal, normal]):  # writing all 2,000 text files would take minutes
        names[i] = os.path.join(folder, f"{i}.txt")
        np.savetxt(names[i], data.train_features[i], fmt="%.6f")
    torch.manual_seed(0)
    model = build_model(data.feature_dim, config, data.mean, data.std)
    optimizer = make_optimizer(model, config)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(steps):
        picks = np.concatenate(
            [rng.choice(abnormal, config.batch_size), rng.choice(normal, config.batch_size)]
        )
        batch = torch.as_tensor(np.stack([np.loadtxt(names[i], dtype=np.float32) for i in picks]))
        loss = _loss(model(batch), config.batch_size, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * 2 * config.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bags", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=4096, help="4096 = C3D fc6, the published features")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--file-steps", type=int, default=20)
    args = parser.parse_args()
    config = TrainConfig(max_epochs=args.epochs, patience=args.epochs + 1)
    with tempfile.TemporaryDirectory() as root:
        store = os.path.join(root, "store")
        make_feature_store(store, num_train=args.bags, num_test=2, feature_dim=args.dim)
        data = prepare_data(store, config)
        train_bags = len(data.train_labels)
        print(f"store: {args.bags} train bags x 32 x {args.dim}; {train_bags} after the validation split")

        # A Ray Train worker with 1 CPU runs torch on 1 thread; give the baseline the same.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        plain = plain_loop(data, config, args.epochs)
        torch.set_num_threads(threads)
        files = file_per_bag_loop(data, config, root, args.file_steps)

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
        started = time.perf_counter()
        result = fit(store, os.path.join(root, "run"), config, num_workers=1, data=data)
        end_to_end = time.perf_counter() - started
        ray.shutdown()
        steps = math.ceil(int((data.train_labels == 1).sum()) / config.batch_size)
        bags_per_epoch = steps * 2 * config.batch_size
        epoch_seconds = [row["epoch_seconds"] for row in result.history]
        steady = bags_per_epoch / float(np.median(epoch_seconds))
        whole = bags_per_epoch * len(epoch_seconds) / end_to_end
        _ = feature_store  # the store module is what both loops read from

    print(f"{'loop':44s} {'bags/s':>10s}")
    print(f"{'plain PyTorch, in-memory tensors':44s} {plain:10.0f}")
    print(f"{'ray_jobs.train, 1 worker (steady epochs)':44s} {steady:10.0f}")
    print(f"{'ray_jobs.train, 1 worker (end to end)':44s} {whole:10.0f}")
    print(f"{'one .txt file per bag per step':44s} {files:10.0f}")
    print(
        f"ratio ray steady / plain      = {steady / plain:.2f}  (overhead {100 * (1 - steady / plain):.0f} %, target < 20 %)"
    )
    print(
        f"ratio ray end-to-end / plain  = {whole / plain:.2f}  (includes Ray Train start-up and per-epoch validation/checkpoints)"
    )
    print(f"ratio ray steady / file-per-bag = {steady / files:.1f}x  (target >= 3x)")


if __name__ == "__main__":
    main()
