"""Test-time post-processing of segment scores, measured on the dev half (reported, not adopted).

    python benchmarks/video_context.py --store STORE [--seeds 0 1 2] [--boot 100] [--out rows.json]

Trains the default recipe in process on every training video (``cv_select.fit_in_process``,
the project's head, loss and EMA), scores the store's test split (the dev half) once per seed,
then evaluates variants of the same segment scores side by side:

- ``none``: the scores as ``ray_jobs.evaluate`` reports them (the baseline);
- ``gauss0.5`` / ``gauss1``: a Gaussian smoothing over neighbouring segments (sigma in segments);
- ``video_topk``: each segment's score times its video's bag score (mean top-k segment score,
  k = the recipe's ``topk``): "is this video anomalous" x "is this moment".

For each variant it prints frame AUC and AP (mean ± std over seeds), the per-class AUC of the
classes it moves, and a paired bootstrap over test videos (resampled videos, same resample for
both variants): the mean AUC gain, its 5-95 % range and how often the gain is positive, a
check that a gain is spread over many videos rather than a few.

Why not adopted (``docs/results.md``): ``video_topk`` needs a whole video before it can score
any moment of it, which neither a live camera nor a stream-scored recording of hours has, and
an evaluation figure that the scoring commands cannot reproduce is not one users can trust.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cv_select import REPO, dev_half_split, fit_in_process, recipe_config, score, train_split  # noqa: E402

sys.path.insert(0, str(REPO))
from anomaly.metrics import bag_scores, evaluate_frames, frame_level  # noqa: E402

RECIPE = "mlp topk_bce robust EMA, all train videos"


def variants(topk: int) -> dict:
    def video_topk(s: np.ndarray) -> np.ndarray:
        return s * bag_scores(s, topk)[:, None]

    return {
        "none": lambda s: s,
        "gauss0.5": lambda s: gaussian_filter1d(s, 0.5, axis=1, mode="nearest"),
        "gauss1": lambda s: gaussian_filter1d(s, 1.0, axis=1, mode="nearest"),
        "video_topk": video_topk,
    }


def paired_bootstrap(base, other, videos: int, rounds: int, rng: np.random.Generator) -> list[float]:
    """AUC(other) - AUC(base) over ``rounds`` resamples of whole videos (frames keep their video)."""
    frames_of = [np.flatnonzero(base.video_index == i) for i in range(videos)]
    gains = []
    for _ in range(rounds):
        idx = np.concatenate([frames_of[i] for i in rng.integers(0, videos, videos)])
        if base.labels[idx].min() == base.labels[idx].max():
            continue
        gains.append(
            roc_auc_score(other.labels[idx], other.scores[idx])
            - roc_auc_score(base.labels[idx], base.scores[idx])
        )
    return gains


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", required=True, help="feature store with train and test (dev half) splits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--boot", type=int, default=100, help="bootstrap resamples per seed")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    features, labels, _ = train_split(args.store)
    test, clip_len = dev_half_split(args.store)
    test_labels = np.asarray(test.labels)
    rng = np.random.default_rng(0)
    rows, gains = [], {}
    for seed in args.seeds:
        config = recipe_config(RECIPE, seed=seed)
        scores = score(fit_in_process(features, labels, config), test.features)
        chosen = variants(config.topk)
        frames = {
            name: frame_level(post(scores), test.num_frames, test.intervals, clip_len=clip_len)
            for name, post in chosen.items()
        }
        for name, post in chosen.items():
            got = evaluate_frames(
                post(scores), test_labels, test.num_frames, test.intervals, test.classes, clip_len=clip_len
            )
            rows.append({"variant": name, "seed": seed, **got})
            print(
                f"seed {seed} {name:10s} frame AUC {got['frame_auc']:.4f} AP {got['frame_ap']:.4f}",
                flush=True,
            )
            if name != "none":
                gains.setdefault(name, []).extend(
                    paired_bootstrap(frames["none"], frames[name], len(test_labels), args.boot, rng)
                )
    print("| variant | frame AUC | AP | bootstrap gain (5-95 %) | P(gain > 0) |")
    print("| --- | --- | --- | --- | --- |")
    for name in variants(1):
        auc = [r["frame_auc"] for r in rows if r["variant"] == name]
        ap = [r["frame_ap"] for r in rows if r["variant"] == name]
        spread = statistics.pstdev(auc) if len(auc) > 1 else 0.0
        g = np.asarray(gains.get(name, [0.0]))
        print(
            f"| {name} | {statistics.mean(auc):.4f} ± {spread:.4f} | {statistics.mean(ap):.4f} | "
            f"{g.mean():+.4f} ({np.percentile(g, 5):+.4f}, {np.percentile(g, 95):+.4f}) | {np.mean(g > 0):.2f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
