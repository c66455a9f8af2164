"""Training ingestion, side by side on the same synthetic store: Ray Data against the in-memory loop.

1. ``in-memory``: what training did before Ray Data: the driver loads every train bag
   (``store.load_bags``, as the old ``prepare_data`` did) and a single-process PyTorch loop
   samples balanced batches from the arrays (no Ray overhead at all: the upper bound);
2. ``ray data, cached``: ``anomaly.training.fit`` with 1 worker, bags read once into Ray's
   object store (the default for stores that fit in a quarter of it);
3. ``ray data, streamed``: the same, reading the Parquet store again every epoch (what a store
   larger than the object store does; forced with ``ANOMALY_CACHE_FRACTION=0``).

Each runs in its own process, so its driver's peak resident set (``VmHWM``) is its own.
Steady-state bags/s: median over the epochs after the first.

    python benchmarks/train.py [--bags 2000] [--dim 4096] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def in_memory(store: str, epochs: int, batch_size: int) -> dict:
    import numpy as np
    import torch

    from anomaly.config import TrainConfig
    from anomaly.losses import mil_loss
    from anomaly.store import load_bags
    from anomaly.training import build_model, make_optimizer

    torch.set_num_threads(1)  # a Ray Train worker with 1 CPU runs torch on 1 thread
    config = TrainConfig(batch_size=batch_size)
    bags = load_bags(store, split="train")
    segments = bags.features.reshape(-1, bags.feature_dim)
    model = build_model(bags.feature_dim, config, segments.mean(axis=0), segments.std(axis=0))
    optimizer = make_optimizer(model, config)
    abnormal, normal = np.flatnonzero(bags.labels == 1), np.flatnonzero(bags.labels == 0)
    steps = math.ceil(len(abnormal) / batch_size)
    rng = np.random.default_rng(0)
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        order = rng.permutation(abnormal)
        model.train()
        for step in range(steps):
            take = order[np.arange(step * batch_size, (step + 1) * batch_size) % len(order)]
            batch = torch.as_tensor(
                np.concatenate([bags.features[take], bags.features[rng.choice(normal, batch_size)]])
            )
            logits, _ = model.member_outputs(batch)[0]  # the losses take logits
            loss = mil_loss(logits[:batch_size], logits[batch_size:], loss=config.loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
    return {"bags_per_epoch": 2 * steps * batch_size, "epoch_seconds": seconds, "steps": steps}


def ray_data(store: str, epochs: int, batch_size: int, out: str) -> dict:
    import ray

    from anomaly.config import TrainConfig
    from anomaly.training import fit

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
    config = TrainConfig(batch_size=batch_size, max_epochs=epochs, patience=epochs + 1)
    history = fit(store, out, config, num_workers=1, cpus_per_worker=1).history
    steps = int(history[0]["steps"])
    return {
        "bags_per_epoch": 2 * steps * batch_size,
        "epoch_seconds": [row["epoch_seconds"] for row in history],
        "steps": steps,
    }


def child(args) -> None:
    if args.child == "in-memory":
        result = in_memory(args.store, args.epochs, args.batch_size)
    else:
        result = ray_data(args.store, args.epochs, args.batch_size, args.out)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result))


def run(mode: str, store: str, args, out: str) -> dict:
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    if mode == "ray data, streamed":
        env["ANOMALY_CACHE_FRACTION"] = "0"
    kind = "in-memory" if mode == "in-memory" else "ray"
    command = [sys.executable, __file__, "--child", kind, "--store", store, "--out", out]
    command += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-4000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bags", type=int, default=2000, help="train videos in the store")
    parser.add_argument("--dim", type=int, default=4096, help="4096 = C3D fc6, the published features")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=30)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--store", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sys.path.insert(0, REPO)
    from anomaly.synthetic.features import make_feature_store

    with tempfile.TemporaryDirectory() as root:
        store = os.path.join(root, "store")
        make_feature_store(store, num_train=args.bags, num_test=2, feature_dim=args.dim)
        gib = args.bags * 32 * args.dim * 4 / 2**30
        print(f"store: {args.bags} train bags x 32 x {args.dim} float32 ({gib:.2f} GiB of features)")
        results = {}
        for mode in ("in-memory", "ray data, cached", "ray data, streamed"):
            results[mode] = run(
                mode, store, args, os.path.join(root, mode.replace(" ", "_").replace(",", ""))
            )
    print(f"{'ingestion':22s} {'steady bags/s':>14s} {'1st epoch s':>12s} {'driver peak RSS MiB':>20s}")
    steady = {}
    for mode, result in results.items():
        seconds = result["epoch_seconds"]
        later = seconds[1:] or seconds
        steady[mode] = result["bags_per_epoch"] / sorted(later)[len(later) // 2]
        print(f"{mode:22s} {steady[mode]:14.0f} {seconds[0]:12.1f} {result['peak_rss_mb']:20.0f}")
    base = results["in-memory"]
    for mode in ("ray data, cached", "ray data, streamed"):
        print(
            f"ratio {mode} / in-memory: bags/s {steady[mode] / steady['in-memory']:.2f}, "
            f"driver peak RSS {results[mode]['peak_rss_mb'] / base['peak_rss_mb']:.2f}"
        )


if __name__ == "__main__":
    main()
