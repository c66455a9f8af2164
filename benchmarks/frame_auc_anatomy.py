"""What a frame AUC is made of: telling videos apart, or finding moments inside them.

    python benchmarks/frame_auc_anatomy.py --store STORE [--seeds 0 1 2] [--out rows.json]
    python benchmarks/frame_auc_anatomy.py --store STORE --labels-only   # no training, no features read

UCF-Crime's frame AUC pools every frame of every test video, so a scorer can earn most of it
by scoring whole videos (anomalous ones above normal ones) without locating anything inside
them. This script splits the figure of a store's test split into those two parts:

- **labels only** (no model): the share of anomalous frames, the mean anomalous fraction of
  the anomalous videos, and two *video oracles*: the frame AUC of a perfect video classifier
  that gives every frame of a video the same score, (a) one score for every anomalous video
  and (b) anomalous videos ordered by their anomalous fraction. (a) is what perfect video
  classification alone is worth on this split; it varies from split to split with how much of
  each anomalous video is anomalous, which no recipe controls;
- **the recipe** (the default unless ``--recipe``, with ``--overrides`` over its config; trained in process on every training video
  as ``cv_select.fit_in_process``, mean ± std over seeds): its frame AUC as scored, the same
  scores with the segments of each video shuffled (the part of the figure that the order of
  moments inside a video earns is the difference), each video's bag score held constant over
  it, and the within-video AUC (mean over anomalous videos of the AUC of their own frames);
- **a supervised probe** (a diagnostic ceiling for localisation, not a recipe): a logistic
  regression trained on the split's *own segment labels* of its anomalous videos, 5-fold
  cross-validated over videos, scored by the same within-video AUC. If a probe that sees
  segment labels cannot localise, no weakly supervised recipe on these features will.

``--labels-only`` needs only a store whose test split carries frame counts and intervals: it is
how the figure of the video oracle can be computed on a split this project may not read
features from (the held-back half: ``docs/results.md``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cv_select import REPO, dev_half_split, fit_in_process, recipe_config, score, train_split  # noqa: E402

sys.path.insert(0, str(REPO))
from anomaly.heads import Ensemble  # noqa: E402
from anomaly.metrics import (  # noqa: E402
    FrameLevel,
    bag_auc,
    bag_scores,
    frame_level,
    saturated_share,
    video_oracle_auc,
    within_video_auc,
    within_video_aucs,
)
from anomaly.segments import clip_frame_segments, frame_labels, l2_normalize  # noqa: E402

RECIPE = "mlp topk_bce robust EMA, all train videos"


def frames_of(segment_scores: np.ndarray, test, clip_len: int) -> FrameLevel:
    return frame_level(
        np.ascontiguousarray(segment_scores), test.num_frames, test.intervals, clip_len=clip_len
    )


def segment_labels(test, clip_len: int, threshold: float = 0.5) -> np.ndarray:
    """(videos, segments) 0/1: a segment is anomalous when over ``threshold`` of its frames are,
    frames mapped to segments through their clips as the default protocol maps scores."""
    videos, segments = test.features.shape[:2]
    out = np.zeros((videos, segments), dtype=np.int64)
    for i, (frames, intervals) in enumerate(zip(test.num_frames, test.intervals, strict=True)):
        owner = clip_frame_segments(int(frames), clip_len, segments)
        hits = np.bincount(owner, weights=frame_labels(int(frames), intervals), minlength=segments)
        out[i] = hits > threshold * np.bincount(owner, minlength=segments)
    return out


def label_ceilings(test, clip_len: int) -> dict:
    """What the split's annotations alone allow a scorer that sees whole videos only."""
    labels = np.asarray(test.labels)
    frames = frames_of(np.ones(test.features.shape[:2]), test, clip_len)
    fraction = np.bincount(frames.video_index, weights=frames.labels, minlength=len(labels)) / np.maximum(
        np.bincount(frames.video_index, minlength=len(labels)), 1
    )
    return {
        "videos": int(len(labels)),
        "anomalous_videos": int(labels.sum()),
        "anomalous_frame_share": float(frames.labels.mean()),
        "mean_anomalous_fraction": float(fraction[labels == 1].mean()),
        "video_oracle_equal": video_oracle_auc(frames, labels),
        "video_oracle_by_fraction": float(
            roc_auc_score(frames.labels, (labels + fraction)[frames.video_index])
        ),
    }


def per_class_mean(per_video: dict[int, float], classes) -> dict[str, float]:
    """Class -> the mean of its videos' values."""
    out: dict[str, list[float]] = {}
    for i, value in per_video.items():
        out.setdefault(str(classes[i]), []).append(value)
    return {name: float(np.mean(values)) for name, values in sorted(out.items())}


def logits_of(model: torch.nn.Module, features: np.ndarray) -> np.ndarray | None:
    """A single head's segment logits (float64): the order its float32 scores lose where they saturate."""
    if isinstance(model, Ensemble):
        return None  # an ensemble's score is a mean of sigmoids, not one logit
    with torch.inference_mode():
        return np.concatenate(
            [
                model.member_outputs(torch.from_numpy(features[i : i + 256].astype(np.float32)))[0][0]
                .double()
                .numpy()
                for i in range(0, len(features), 256)
            ]
        )


def recipe_anatomy(
    scores: np.ndarray,
    test,
    clip_len: int,
    topk: int,
    rng: np.random.Generator,
    logits: np.ndarray | None = None,
) -> dict:
    """The recipe's frame AUC, and what is left of it without the order of moments or without moments;
    with ``logits``, also the frame AUC ranked by them (no float32 saturation)."""
    labels = np.asarray(test.labels)
    frames = frames_of(scores, test, clip_len)
    by_logit = {}
    if logits is not None:
        ranked = frames_of(logits, test, clip_len)
        by_logit = {"frame_auc_by_logits": float(roc_auc_score(ranked.labels, ranked.scores))}
    shuffled = frames_of(rng.permuted(scores, axis=1), test, clip_len)
    bag = bag_scores(scores, topk)
    constant = frames_of(np.repeat(bag[:, None], scores.shape[1], axis=1), test, clip_len)
    return {
        "frame_auc": float(roc_auc_score(frames.labels, frames.scores)),
        "shuffled_within_video": float(roc_auc_score(shuffled.labels, shuffled.scores)),
        "bag_score_constant": float(roc_auc_score(constant.labels, constant.scores)),
        "within_video_auc": within_video_auc(frames, labels),
        "within_video_auc_per_class": per_class_mean(within_video_aucs(frames, labels), test.classes),
        "bag_auc": bag_auc(scores, labels, topk),
        "saturated_share": saturated_share(scores),
        **by_logit,
    }


def half_splits(labels: np.ndarray, rounds: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``rounds`` random halves of the videos, each label halved (the held-back check's kind of split)."""
    return [
        np.sort(
            np.concatenate(
                [
                    rng.choice(np.flatnonzero(labels == y), (labels == y).sum() // 2, replace=False)
                    for y in (0, 1)
                ]
            )
        )
        for _ in range(rounds)
    ]


def split_to_split(scores: np.ndarray, test, clip_len: int, halves: list[np.ndarray]) -> dict:
    """How the recipe's frame AUC and the video oracle move together from one half of the split to
    another: the spread of each, their correlation, and the spread of the recipe's margin over the
    oracle (what predicts a half's figure from its labels alone)."""
    labels = np.asarray(test.labels)
    frames = frames_of(scores, test, clip_len)
    oracle = labels[frames.video_index].astype(float)
    owner = [np.flatnonzero(frames.video_index == i) for i in range(len(labels))]
    recipe, video = [], []
    for half in halves:
        idx = np.concatenate([owner[i] for i in half])
        recipe.append(roc_auc_score(frames.labels[idx], frames.scores[idx]))
        video.append(roc_auc_score(frames.labels[idx], oracle[idx]))
    recipe, video = np.asarray(recipe), np.asarray(video)
    margin = recipe - video
    return {
        "halves": len(halves),
        "half_frame_auc_mean": float(recipe.mean()),
        "half_frame_auc_std": float(recipe.std()),
        "half_frame_auc_range": [float(recipe.min()), float(recipe.max())],
        "half_oracle_std": float(video.std()),
        "correlation": float(np.corrcoef(recipe, video)[0, 1])
        if recipe.std() and video.std()
        else float("nan"),
        "margin_over_oracle_mean": float(margin.mean()),
        "margin_over_oracle_std": float(margin.std()),
    }


def supervised_probe(test, clip_len: int, folds: int = 5, c: float = 0.01) -> dict:
    """Within-video AUC of a linear probe trained on the split's own segment labels (anomalous
    videos only, grouped CV over videos): a diagnostic ceiling for localisation."""
    labels = np.asarray(test.labels)
    anomalous = np.flatnonzero(labels == 1)
    truth = segment_labels(test, clip_len)
    x = l2_normalize(test.features.astype(np.float64))
    dim = x.shape[-1]
    scores = np.zeros(truth.shape)
    for train, held in GroupKFold(min(folds, len(anomalous))).split(anomalous, groups=anomalous):
        rows = x[anomalous[train]].reshape(-1, dim)
        mean, std = rows.mean(0), rows.std(0) + 1e-6
        probe = LogisticRegression(C=c, max_iter=3000).fit(
            (rows - mean) / std, truth[anomalous[train]].reshape(-1)
        )
        for video in anomalous[held]:
            scores[video] = probe.decision_function((x[video] - mean) / std)
    frames = frames_of(scores, test, clip_len)
    return {
        "probe_within_video_auc": within_video_auc(frames, labels),
        "probe_within_video_auc_per_class": per_class_mean(within_video_aucs(frames, labels), test.classes),
    }


def mean_std(rows: list[dict], key: str) -> str:
    got = [r[key] for r in rows if key in r]
    if not got:
        return "n/a"
    return f"{statistics.mean(got):.4f} ± {statistics.pstdev(got) if len(got) > 1 else 0.0:.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", required=True, help="feature store whose test split is analysed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipe", default=RECIPE, help="a benchmarks/cv_select.py recipe name")
    parser.add_argument(
        "--overrides",
        type=json.loads,
        default={},
        help="config keys over the recipe, as JSON: '{\"topk\": 1}'",
    )
    parser.add_argument(
        "--labels-only", action="store_true", help="only the annotations' figures (no training)"
    )
    parser.add_argument(
        "--halves", type=int, default=300, help="random half-splits of the test split (0: none)"
    )
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    test, clip_len = dev_half_split(args.store, features=not args.labels_only)
    out: dict = {"labels": label_ceilings(test, clip_len)}
    print("labels only:", json.dumps(out["labels"]), flush=True)
    if not args.labels_only:
        out["probe"] = supervised_probe(test, clip_len)
        print("supervised probe:", json.dumps(out["probe"]), flush=True)
        features, labels, _ = train_split(args.store)
        rng = np.random.default_rng(0)
        halves = half_splits(np.asarray(test.labels), args.halves, np.random.default_rng(1))
        out["recipe"] = {"name": args.recipe, "overrides": args.overrides, "seeds": []}
        for seed in args.seeds:
            config = recipe_config(args.recipe, **{**args.overrides, "seed": seed})
            model = fit_in_process(features, labels, config)
            scores = score(model, test.features)
            logits = logits_of(model, test.features)
            row = {"seed": seed, **recipe_anatomy(scores, test, clip_len, config.topk, rng, logits)}
            if args.halves:
                row["split_to_split"] = split_to_split(scores, test, clip_len, halves)
            out["recipe"]["seeds"].append(row)
            print(f"seed {seed}:", json.dumps(row), flush=True)
        rows = out["recipe"]["seeds"]
        print("| figure | value |\n| --- | --- |")
        for key in (
            "frame_auc",
            "shuffled_within_video",
            "bag_score_constant",
            "within_video_auc",
            "bag_auc",
            "saturated_share",
            "frame_auc_by_logits",
        ):
            print(f"| {key} | {mean_std(rows, key)} |")
        if args.halves:
            for key in (
                "half_frame_auc_std",
                "correlation",
                "margin_over_oracle_mean",
                "margin_over_oracle_std",
            ):
                got = [r["split_to_split"][key] for r in rows]
                print(f"| half-splits: {key} | {statistics.mean(got):.4f} ± {statistics.pstdev(got):.4f} |")
        print("| class | videos | within-video AUC (recipe) | within-video AUC (supervised probe) |")
        print("| --- | --- | --- | --- |")
        probe = out["probe"]["probe_within_video_auc_per_class"]
        count = Counter(
            str(test.classes[i])
            for i in within_video_aucs(
                frames_of(np.ones(test.features.shape[:2]), test, clip_len), test.labels
            )
        )
        for name in sorted(probe):
            got = [r["within_video_auc_per_class"].get(name, float("nan")) for r in rows]
            print(f"| {name} | {count[name]} | {statistics.mean(got):.3f} | {probe[name]:.3f} |")
        print(f"| supervised probe within-video AUC | {out['probe']['probe_within_video_auc']:.4f} |")
    for key in ("video_oracle_equal", "video_oracle_by_fraction"):
        print(f"| {key} (labels only) | {out['labels'][key]:.4f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    from anomaly.errors import AnomalyError

    try:
        sys.exit(main())
    except AnomalyError as exc:  # a missing or unreadable store: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
