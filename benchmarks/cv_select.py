"""Choose a recipe without test labels: k-fold cross-validation on the TRAIN split's video labels.

    python benchmarks/cv_select.py --store STORE [--folds 3] [--seeds 0] [--epochs 30] [--recipes ...]

For each recipe and fold, trains the project's own head and loss (``anomaly.heads.build_head``,
``anomaly.losses.config_loss``, the EMA of ``anomaly.selection``) in this process on the other
folds' training videos, balanced 30 + 30 bags per step as ``ray_jobs.train`` does, and scores the
held-out fold: the **bag-level (video) AUC** of each video's mean top-3 segment score against its
video label. The train split has no frame labels, and the test split is not read at all, so
this rule can choose among recipes without looking at any test video. Prints mean ± std over
folds x seeds; ``--out`` writes the rows as JSON (``benchmarks/results_real.py --cv`` reads it).

A plain-torch loop instead of Ray Train: k x recipes x seeds fits would pay Ray Train's start-up
each time; the optimisation (bags per step, steps per epoch, EMA, losses, heads) is the same
code. Normalisation statistics are fitted on each fold's training part only.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anomaly.config import TrainConfig, read_yaml  # noqa: E402
from anomaly.heads import build_head  # noqa: E402
from anomaly.losses import config_loss  # noqa: E402
from anomaly.metrics import bag_auc  # noqa: E402
from anomaly.normalization import fit_statistics  # noqa: E402
from anomaly.selection import WeightAverage  # noqa: E402
from anomaly.store import load_bags  # noqa: E402

DEFAULT = "tune_configs/default.yaml"
PAPER = "tune_configs/sultani2018.yaml"
RTFM = "tune_configs/rtfm.yaml"
BNWVAD = "tune_configs/bnwvad.yaml"
# name -> (base YAML, overrides); results_real.py uses the same names.
RECIPES = {
    "sultani2018 (paper preset, l2)": (PAPER, {"max_epochs": 30}),
    "mlp topk_bce robust EMA (former default)": (DEFAULT, {"ensemble": 1, "val_fraction": 0.15}),
    "mlp topk_bce robust EMA, all train videos": (DEFAULT, {"ensemble": 1, "val_fraction": 0.0}),
    "mlp topk_bce robust EMA, all train videos, ensemble 5": (DEFAULT, {"ensemble": 5, "val_fraction": 0.0}),
    "mlp topk_bce l2, all train videos, ensemble 5": (
        DEFAULT,
        {"ensemble": 5, "val_fraction": 0.0, "feature_norm": "l2"},
    ),
    "rtfm head + rtfm loss (RTFM's weights)": (RTFM, {}),
    "bnwvad head + bnwvad loss (BN-WVAD's weights)": (BNWVAD, {}),
}


def recipe_config(name: str, **extra) -> TrainConfig:
    base, overrides = RECIPES[name]
    return TrainConfig.from_dict({**read_yaml(str(REPO / base)), **overrides, **extra})


def fit_in_process(features: np.ndarray, labels: np.ndarray, config: TrainConfig) -> torch.nn.Module:
    """The project's head and loss trained on (N, 32, D) bags for ``config.max_epochs`` epochs."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    mean, std = fit_statistics(features, config.feature_norm)
    model = build_head(
        config.model,
        features.shape[-1],
        dropout=config.dropout,
        feature_norm=config.feature_norm,
        ensemble=config.ensemble,
    )
    model.set_normalization(mean, std)
    if config.optimizer == "adagrad":
        optimizer = torch.optim.Adagrad(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    average = WeightAverage(model, config.ema_decay) if config.selection == "ema" else None
    abnormal, normal = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    steps = max(1, math.ceil(len(abnormal) / config.batch_size))
    data = torch.from_numpy(features.astype(np.float32))
    model.train()
    for _ in range(config.max_epochs):
        order_a, order_n = rng.permutation(abnormal), rng.permutation(normal)
        for step in range(steps):
            take_a = np.resize(order_a, (steps * config.batch_size,))[step * config.batch_size :][
                : config.batch_size
            ]
            take_n = np.resize(order_n, (steps * config.batch_size,))[step * config.batch_size :][
                : config.batch_size
            ]
            bags = data[np.concatenate([take_a, take_n])]
            n = len(take_a)
            loss = sum(
                config_loss(config, lg[:n], lg[n:], ft[:n], ft[n:]) for lg, ft in model.member_outputs(bags)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update(model)
    return (average.model if average is not None else model).eval()


def score(model: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate(
            [
                model(torch.from_numpy(features[i : i + 256].astype(np.float32))).numpy()
                for i in range(0, len(features), 256)
            ]
        )


def folds_of(labels: np.ndarray, folds: int, seed: int = 1234) -> list[np.ndarray]:
    """Stratified fold indices (a fixed seed: every recipe sees the same folds)."""
    rng = np.random.default_rng(seed)
    out = [[] for _ in range(folds)]
    for label in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == label))
        for i, part in enumerate(np.array_split(idx, folds)):
            out[i].extend(part.tolist())
    return [np.sort(np.array(f)) for f in out]


def train_split(store: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The train split's bags, labels and classes, ordered by video id (the part files' order decides nothing)."""
    bags = load_bags(store, split="train")
    order = np.argsort(bags.video_ids)
    return bags.features[order], np.asarray(bags.labels)[order], np.asarray(bags.classes)[order]


def dev_half_split(store: str, features: bool = True):
    """The store's test split (here the dev half) and the clip length its frame mapping needs
    (``features=False``: the labels and frame counts only)."""
    from anomaly.protocols import store_clip_len
    from anomaly.store import read_metadata

    meta = read_metadata(store)
    return load_bags(store, split="test", features=features), store_clip_len(meta.to_dict() if meta else None)


def per_class_bag_auc(scores: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """Bag AUC of each anomaly class's videos against every normal video of the fold."""
    normal = labels == 0
    return {
        str(name): bag_auc(scores[normal | (classes == name)], labels[normal | (classes == name)])
        for name in sorted(set(classes[labels == 1]))
    }


def cross_validate(
    store: str, names: list[str], folds: int, seeds: list[int], epochs: int | None
) -> list[dict]:
    features, labels, classes = train_split(store)
    rows = []
    for name in names:
        for seed in seeds:
            extra = {"seed": seed, **({"max_epochs": epochs} if epochs else {})}
            config = recipe_config(name, **extra)
            for fold, held in enumerate(folds_of(labels, folds)):
                keep = np.setdiff1d(np.arange(len(labels)), held)
                started = time.perf_counter()
                model = fit_in_process(features[keep], labels[keep], config)
                held_scores = score(model, features[held])
                auc = bag_auc(held_scores, labels[held])
                rows.append(
                    {
                        "recipe": name,
                        "seed": seed,
                        "fold": fold,
                        "cv_bag_auc": auc,
                        "per_class_bag_auc": per_class_bag_auc(held_scores, labels[held], classes[held]),
                    }
                )
                print(
                    f"{name} seed {seed} fold {fold}: bag AUC {auc:.4f} ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
    return rows


def dev_half(store: str, names: list[str], seeds: list[int], epochs: int | None) -> list[dict]:
    """Each recipe trained in process on every training video, scored on the store's test split
    (the dev half): frame AUC, AP, false-alarm and detection rates by the default protocol.
    A reporting figure only: nothing is chosen from it here."""
    from anomaly.metrics import evaluate_frames

    features, labels, _ = train_split(store)
    test, clip_len = dev_half_split(store)
    rows = []
    for name in names:
        for seed in seeds:
            config = recipe_config(name, seed=seed, **({"max_epochs": epochs} if epochs else {}))
            started = time.perf_counter()
            model = fit_in_process(features, labels, config)
            scores = score(model, test.features)
            got = evaluate_frames(
                scores,
                np.asarray(test.labels),
                test.num_frames,
                test.intervals,
                test.classes,
                clip_len=clip_len,
            )
            got.pop("per_class_auc")
            rows.append({"recipe": name, "seed": seed, "seconds": time.perf_counter() - started, **got})
            print(
                f"{name} seed {seed}: dev-half frame AUC {got['frame_auc']:.4f} {json.dumps(rows[-1], default=str)}",
                flush=True,
            )
    return rows


def summary(rows: list[dict]) -> dict[str, tuple[float, float, int]]:
    out = {}
    for name in dict.fromkeys(r["recipe"] for r in rows):
        got = [r["cv_bag_auc"] for r in rows if r["recipe"] == name]
        out[name] = (statistics.mean(got), statistics.pstdev(got) if len(got) > 1 else 0.0, len(got))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", required=True, help="feature store with a train split")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe's max_epochs")
    parser.add_argument("--recipes", nargs="*", default=None, help="substrings of recipe names")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument(
        "--dev-half",
        action="store_true",
        help="instead of CV: train on all train videos, report on the store's test split (the dev half)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = [n for n in RECIPES if not args.recipes or any(r in n for r in args.recipes)]
    if args.dev_half:
        rows = dev_half(args.store, names, args.seeds, args.epochs)
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=1, default=str))
        return 0
    rows = cross_validate(args.store, names, args.folds, args.seeds, args.epochs)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    for name, (mean, std, n) in summary(rows).items():
        print(f"| {name} | {mean:.4f} ± {std:.4f} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
