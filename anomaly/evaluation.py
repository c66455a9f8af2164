"""Evaluate a trained scorer on the store's test split: metrics.json, ROC and timeline PNGs, scores."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pyarrow as pa

from anomaly import store as feature_store
from anomaly import uris
from anomaly.checkpoints import load_scorer, score_bags, stored_metadata
from anomaly.crops import CROPS_COLUMN, score_crop_batch
from anomaly.errors import AnomalyError
from anomaly.ground_truth import GroundTruth
from anomaly.metrics import evaluate_frames, frame_level, roc_points
from anomaly.plots import roc_plot, timeline_plot
from anomaly.protocols import DEFAULT_PROTOCOL, check_protocol, describe, store_clip_len
from anomaly.regions import localization_metrics
from anomaly.segments import frame_scores

logger = logging.getLogger(__name__)


SCORE_BATCH_ROWS = 256  # videos whose features are in memory at once while scoring


def check_compatible(model_dim: int, feature_dim: int, store: str, checkpoint: str) -> None:
    if feature_dim != model_dim:
        raise AnomalyError(
            store, f"features are {feature_dim}-d but the checkpoint {checkpoint} expects {model_dim}-d"
        )


def score_streamed(
    store: str,
    model,
    bags: feature_store.Bags,
    split: str,
    *,
    model_dim: int,
    checkpoint: str,
    crops: bool = False,
) -> np.ndarray:
    """(N, 32) scores of ``bags`` (read without features), the features streamed in record batches.

    A large test split is never in memory at once: only ``SCORE_BATCH_ROWS`` videos' features and
    every video's 32 scores. A duplicate row of a video is skipped (the first one counts, as in
    ``store.read_table``). ``crops``: score each crop of a ten-crop store and average the scores.
    """
    columns = ["features", CROPS_COLUMN] if crops else ["features"]
    position = {vid: k for k, vid in enumerate(bags.video_ids)}
    scores = np.zeros((len(bags), bags.features.shape[1]), dtype=np.float32)
    done = np.zeros(len(bags), dtype=bool)
    for batch in feature_store.iter_batches(store, columns, split=split, batch_rows=SCORE_BATCH_ROWS):
        if batch.num_rows == 0:
            continue
        features = feature_store.features_from_arrow(batch.column("features"))
        check_compatible(model_dim, int(features.shape[-1]), store, checkpoint)
        rows, keep = [], []
        for i, vid in enumerate(batch.column("video_id").to_pylist()):
            k = position.get(vid)
            if k is not None and not done[k]:
                done[k] = True
                rows.append(k)
                keep.append(i)
        if rows:
            if crops:
                scores[rows] = score_crop_batch(
                    score_bags, model, batch.take(pa.array(keep, type=pa.int64()))
                )
            else:
                scores[rows] = score_bags(model, features[keep])
    return scores


def scores_crops(store: str, payload: dict) -> bool:
    """Whether to average crop scores: a ten-crop store and a model trained with ``crops: bags``."""
    meta = feature_store.read_metadata(store)
    mode = payload.get("config", {}).get("crops", "bags")
    return bool(meta is not None and (meta.crops or 1) > 1 and mode == "bags")


def coverage(bags: feature_store.Bags, truth: GroundTruth | None, split: str) -> dict:
    """What the figures cover: the split's videos with features against those the ground truth lists.

    A store that misses a whole label or class of the split is logged as a loud
    warning: the AUC then measures something else than the benchmark's.
    """
    present = set(bags.video_ids)
    listed = []
    if truth is not None and split == "test":
        listed = [vid for vid in truth.temporal if truth.describe(vid)["split"] == "test"]
    out: dict = {"videos": len(bags.video_ids)}
    if not listed:
        out["summary"] = f"{split} videos {len(present)} (no ground-truth list to compare with)"
        return out
    if not present & set(listed):
        out["summary"] = (
            f"{split} videos {len(present)}; none of them is in the ground-truth list (another data set)"
        )
        return out
    missing = [vid for vid in listed if vid not in present]
    out.update(listed=len(listed), without_features=len(missing), missing_examples=missing[:5])
    out["summary"] = (
        f"{split} videos {len(present & set(listed))} of {len(listed)} listed; {len(missing)} without features"
    )
    groups: dict[str, list[str]] = {}
    for vid in listed:
        facts = truth.describe(vid)
        groups.setdefault("normal" if facts["label"] == 0 else "anomalous", []).append(vid)
        if facts["label"]:
            groups.setdefault(f"class {facts['anomaly_class']}", []).append(vid)
    out["by_group"] = {}
    empty = []
    for name, vids in sorted(groups.items()):
        have = sum(vid in present for vid in vids)
        out["by_group"][name] = f"{have} of {len(vids)}"
        if have == 0:
            empty.append(f"{name} (all {len(vids)})")
    out["groups_without_any_video"] = empty
    if empty:
        logger.warning(
            "PARTIAL %s SPLIT: the store has no video at all of %s; the figures do not measure the "
            "benchmark's %s split",
            split.upper(),
            ", ".join(empty),
            split,
        )
    if missing:
        logger.warning("evaluating %s", out["summary"])
    return out


def evaluate(
    store: str,
    checkpoint: str,
    out_dir: str,
    *,
    split: str = "test",
    timelines: bool = True,
    protocol: str = DEFAULT_PROTOCOL,
    truth: GroundTruth | None = None,
) -> dict:
    """Score every ``split`` video, compute the frame-level metrics by ``protocol`` and write the plots.

    ``truth`` (the official lists) lets ``metrics.json`` say what the figures cover.
    """
    check_protocol(protocol)
    model, payload = load_scorer(checkpoint)
    bags = feature_store.load_bags(store, split=split, features=False)  # the features stream below
    clip_len = store_clip_len(
        meta.to_dict() if (meta := feature_store.read_metadata(store)) else payload.get("store_metadata")
    )
    missing = [vid for vid, frames in zip(bags.video_ids, bags.num_frames, strict=True) if frames <= 0]
    if missing:
        raise AnomalyError(
            store,
            f"{len(missing)} {split} videos have no frame count (e.g. {missing[0]}); "
            "import them with `frame_counts`",
        )
    unannotated = [
        vid
        for vid, label, ivs in zip(bags.video_ids, bags.labels, bags.intervals, strict=True)
        if label and not ivs
    ]
    if unannotated:
        logger.warning(
            "%d anomalous %s videos have no annotated interval (e.g. %s); their frames count as normal",
            len(unannotated),
            split,
            unannotated[0],
        )
    scores = score_streamed(
        store,
        model,
        bags,
        split,
        model_dim=int(payload["feature_dim"]),
        checkpoint=checkpoint,
        crops=scores_crops(store, payload),
    )
    metrics = evaluate_frames(scores, *bags.frame_truth(), protocol=protocol, clip_len=clip_len)
    metrics.update(
        evaluation_protocol=describe(protocol, clip_len),
        coverage=coverage(bags, truth, split),
        model=payload.get("config", {}).get("model", "mlp"),
        split=split,
        checkpoint=checkpoint,
        store=store,
        backbone=meta.backbone if (meta := stored_metadata(payload, checkpoint)) else None,
    )
    # Optional store columns: per-data-set AUC, region-level scores and heat maps (anomaly.regions).
    metrics.update(
        localization_metrics(
            store,
            model,
            bags,
            scores,
            out_dir,
            split=split,
            heatmaps=timelines,
            protocol=protocol,
            clip_len=clip_len,
        )
    )
    frames = frame_level(scores, bags.num_frames, bags.intervals, protocol=protocol, clip_len=clip_len)
    if not math.isnan(metrics["frame_auc"]):
        fpr, tpr = roc_points(frames)
        roc_plot(fpr, tpr, metrics["frame_auc"], uris.join(out_dir, "roc.png"))
    uris.write_bytes_atomic(
        uris.join(out_dir, "metrics.json"), json.dumps(_jsonable(metrics), indent=2).encode()
    )
    _write_scores(out_dir, bags, scores)
    if timelines:
        for i in np.flatnonzero(bags.labels == 1):
            timeline_plot(
                frame_scores(scores[i], int(bags.num_frames[i]), clip_len),
                bags.intervals[i],
                uris.join(out_dir, "timelines", f"{uris.safe_file_name(bags.video_ids[i])}.png"),
                title=f"{bags.video_ids[i]} ({bags.classes[i]})",
                fps=float(bags.fps[i]) or None,
            )
    return metrics


def _write_scores(out_dir: str, bags: feature_store.Bags, scores: np.ndarray) -> None:
    """Per-video segment scores, so people can inspect or re-plot without re-scoring."""
    table = pa.table(
        {
            "video_id": bags.video_ids,
            "label": bags.labels,
            "anomaly_class": bags.classes,
            "num_frames": bags.num_frames,
            "segment_scores": [row.tolist() for row in scores],
        }
    )
    feature_store.write_parquet(uris.join(out_dir, "scores.parquet"), table)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    return value
