"""Cross-validation inputs for Tune (``tune.cv_folds``): one read per fold against one read for all.

Before, a cross-validated search called ``prepare_inputs`` once per fold: k reads of the store,
and, for a store small enough to cache, k copies of its bags in Ray's object store (each fold's
training and validation rows). ``prepare_folds`` reads the store once: each read task returns its
files' rows and moments per fold, fold j trains on the other folds' blocks and merges their
moments, so the object store holds the bags twice (training and validation columns) whatever k.
Side by side in one run, on one local Ray, the same store, cached and streamed:

- seconds to prepare every fold;
- bytes the folds' cached blocks hold in the object store (each distinct block counted once);
- part files read (cached: every file once per read; streamed: the statistics pass).

    python benchmarks/cv_folds.py [--videos 600] [--dim 512] [--folds 3 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def held_bytes(folds) -> int:
    """Bytes of the distinct blocks the folds' caches reference."""
    import ray

    refs = {
        ref.hex(): ref
        for inputs in folds
        if inputs.cached
        for blocks in inputs.cached.values()
        for ref in blocks
    }
    return sum(table.nbytes for table in ray.get(list(refs.values())))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=600, help="training videos (half anomalous)")
    parser.add_argument("--dim", type=int, default=512, help="feature width")
    parser.add_argument("--folds", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--rounds", type=int, default=3, help="alternated repeats; medians reported")
    args = parser.parse_args()

    from anomaly import cli, console
    from anomaly.config import TrainConfig
    from anomaly.synthetic.features import make_feature_store
    from anomaly.training import data

    console.configure(verbose=False)
    root = tempfile.mkdtemp(prefix="bench-cv-folds-")
    store = make_feature_store(
        os.path.join(root, "store"),
        num_train=args.videos,
        num_test=4,
        feature_dim=args.dim,
        seed=0,
        rows_per_part=64,
    )
    cli.init_ray(num_cpus=2)
    config = TrainConfig(seed=0)
    ids, labels = data.train_labels(store)
    print(
        f"store: {args.videos} training videos x 32 x {args.dim} float32 ({args.videos * 32 * args.dim * 4 / 2**20:.0f} MiB)"
    )
    print(
        "| folds | mode | a read per fold: s | one read: s | ratio | a read per fold: object store MiB | one read: MiB | ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    data.prepare_inputs(store, config)  # warm-up: Ray's workers started, files in the page cache
    for k in args.folds:
        for cache in (True, False):
            data.CACHE_FRACTION = 1.0 if cache else 0.0
            parts = data.stratified_folds(labels, k, config.seed)
            times: dict[str, list[float]] = {"old": [], "new": []}
            for _ in range(args.rounds):  # alternated, medians reported
                started = time.perf_counter()
                old = [
                    data.prepare_inputs(store, config, cache=cache, val_ids=[ids[i] for i in part])
                    for part in parts
                ]
                times["old"].append(time.perf_counter() - started)
                old_bytes = held_bytes(old)
                del old
                started = time.perf_counter()
                new = data.prepare_folds(store, config, k)
                times["new"].append(time.perf_counter() - started)
                new_bytes = held_bytes(new)
                del new
            old_s, new_s = statistics.median(times["old"]), statistics.median(times["new"])
            mib = 2**20
            memory = (
                f"{old_bytes / mib:.0f} | {new_bytes / mib:.0f} | {old_bytes / max(new_bytes, 1):.2f}x"
                if cache
                else "— | — | —"
            )
            print(
                f"| {k} | {'cached' if cache else 'streamed'} | {old_s:.2f} | {new_s:.2f} | {old_s / new_s:.2f}x | {memory} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
