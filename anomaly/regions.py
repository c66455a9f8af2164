"""Region-level evaluation: where in the frame, for stores with grid features and pixel masks.

What :func:`anomaly.evaluation.evaluate` adds for stores with the optional columns
(:func:`localization_metrics`): frame AUC per data set, the region criterion, heat maps.
The cells are those of :mod:`anomaly.grid`, the masks those of :mod:`anomaly.masks`.

Region-level criterion (the UCSD "pixel-level" criterion of Mahadevan et al.,
2010): the predicted anomalous region of a frame is the union of its cells
scoring above a threshold ``t``; an anomalous frame (its mask has pixels) is
*detected* when that region covers at least 40 % of its anomalous pixels; a
normal frame is a *false positive* when any cell scores above ``t``. Sweeping
``t`` gives a curve of detection rate against false-positive rate. Every
frame reduces to one number (:func:`frame_region_scores`): for an anomalous
frame the highest ``t`` at which it is still detected (the score of the cell
that brings the coverage of the best cells to 40 %), for a normal frame its
highest cell score; the curve is then the ROC curve of those numbers, its
area the region-level AUC, its equal-error point the region EER.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from anomaly import store as feature_store
from anomaly import uris
from anomaly.alarms import DEFAULT_THRESHOLD
from anomaly.checkpoints import score_bags
from anomaly.errors import AnomalyError
from anomaly.grid import cell_bounds, grid_of
from anomaly.masks import iter_masks, mask_at
from anomaly.metrics import evaluate_frames
from anomaly.plots import heatmap_plot
from anomaly.protocols import DEFAULT_PROTOCOL, SNIPPET
from anomaly.segments import frame_segments, segment_bounds
from anomaly.video import open_video
from anomaly.video.frame_folder import FrameFolderVideo

logger = logging.getLogger(__name__)

COVERAGE = 0.4  # share of a frame's anomalous pixels the predicted region must cover
THRESHOLD = DEFAULT_THRESHOLD  # operating point reported beside the threshold-free curve summary


def cell_pixel_counts(mask: np.ndarray, grid: int) -> np.ndarray:
    """Anomalous pixels of a ``(H, W)`` mask in each cell, ``(G*G,)`` row-major."""
    mask = np.asarray(mask) != 0
    if mask.ndim == 3:  # an RGB mask image
        mask = mask.any(axis=-1)
    rows, cols = cell_bounds(mask.shape[0], mask.shape[1], grid)
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(axis=0).cumsum(axis=1)
    corners = integral[np.ix_(rows, cols)]  # (G+1, G+1) running totals at the cell corners
    sums = corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
    return sums.reshape(-1)


def covered_share(cell_scores: np.ndarray, mask: np.ndarray, threshold: float) -> float:
    """Share of the mask's anomalous pixels inside the cells scoring above ``threshold`` (1 if none)."""
    scores = np.asarray(cell_scores, dtype=np.float64).reshape(-1)
    counts = cell_pixel_counts(mask, grid_of(scores.size))
    total = counts.sum()
    return 1.0 if total == 0 else float(counts[scores > threshold].sum() / total)


def frame_detected(
    cell_scores: np.ndarray, mask: np.ndarray, threshold: float = THRESHOLD, coverage: float = COVERAGE
) -> bool:
    """The criterion for one frame: anomalous -> ≥ ``coverage`` of its pixels covered; normal -> no cell above."""
    scores = np.asarray(cell_scores, dtype=np.float64).reshape(-1)
    if not (np.asarray(mask) != 0).any():
        return bool((scores > threshold).any())  # a "detection" on a normal frame is a false positive
    return covered_share(scores, mask, threshold) >= coverage


def frame_region_scores(
    cell_scores: np.ndarray, counts: np.ndarray, coverage: float = COVERAGE
) -> tuple[np.ndarray, np.ndarray]:
    """Per frame (rows of ``(F, cells)`` scores and anomalous-pixel counts): label and region score.

    Label 1 when the frame has anomalous pixels. Score: for those, the highest
    threshold at which the frame is detected (``t < score`` <=> detected); for
    normal frames the highest cell score (``t < score`` <=> a false positive).
    """
    scores = np.asarray(cell_scores, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1)
    labels = (totals > 0).astype(np.int8)
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    cumulative = np.cumsum(np.take_along_axis(counts, order, axis=1), axis=1)
    needed = coverage * totals[:, None]
    first = np.argmax(cumulative >= needed - 1e-9, axis=1)  # first cell count reaching the coverage
    region = np.where(labels == 1, sorted_scores[np.arange(len(scores)), first], scores.max(axis=1))
    return labels, region


def region_summary(labels: np.ndarray, scores: np.ndarray, *, threshold: float = THRESHOLD) -> dict:
    """Region-level AUC, EER and the detection / false-positive rates at ``threshold``."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    positive, negative = labels == 1, labels == 0
    out = {
        "frames": int(labels.size),
        "anomalous_frames": int(positive.sum()),
        "threshold": threshold,
        "coverage": COVERAGE,
        "detection_rate": float((scores[positive] > threshold).mean()) if positive.any() else float("nan"),
        "false_positive_rate": float((scores[negative] > threshold).mean())
        if negative.any()
        else float("nan"),
        "auc": float("nan"),
        "eer": float("nan"),
    }
    if positive.any() and negative.any():
        out["auc"] = float(roc_auc_score(labels, scores))
        fpr, tpr, _ = roc_curve(labels, scores)
        miss = 1 - tpr
        i = int(np.argmin(np.abs(fpr - miss)))
        out["eer"] = float((fpr[i] + miss[i]) / 2)
    return out


def read_frame(uri: str, index: int, *, fps: float | None = None) -> np.ndarray:
    """Frame ``index`` of a video as uint8 RGB (random access for frame folders, a decode for files)."""
    reader = open_video(uri, fps=fps)
    if isinstance(reader, FrameFolderVideo):
        return reader.read_frame(index)
    for i, convert in enumerate(reader._frames(None)):  # noqa: SLF001 - the package's own backend API
        if i == index:
            return convert()
    raise AnomalyError(uri, f"frame {index} is past the end of the video")


def per_dataset_metrics(
    datasets: Sequence[str | None],
    scores: np.ndarray,
    labels: np.ndarray,
    num_frames: np.ndarray,
    intervals: Sequence,
    classes: Sequence[str],
    *,
    protocol: str = DEFAULT_PROTOCOL,
    clip_len: int = SNIPPET,
) -> dict:
    """Frame-level metrics of each named data set's videos on their own, by the evaluation's protocol."""
    out = {}
    names = np.asarray([d or "" for d in datasets], dtype=object)
    for name in sorted({d for d in names if d}):
        idx = np.flatnonzero(names == name)
        result = evaluate_frames(
            scores[idx],
            labels[idx],
            num_frames[idx],
            [intervals[i] for i in idx],
            [classes[i] for i in idx],
            protocol=protocol,
            clip_len=clip_len,
        )
        out[name] = {key: result[key] for key in ("frame_auc", "frame_ap", "num_videos", "num_frames")}
    return out


def localization_metrics(
    store: str,
    model,
    bags,
    scores: np.ndarray,
    out_dir: str,
    *,
    split: str = "test",
    heatmaps: bool = True,
    threshold: float = THRESHOLD,
    protocol: str = DEFAULT_PROTOCOL,
    clip_len: int = SNIPPET,
) -> dict:
    """What :func:`anomaly.evaluation.evaluate` adds for stores with the optional columns.

    - ``per_dataset``: frame AUC/AP per value of the ``dataset`` column (when any is set);
    - ``region_level`` (and per data set ``region_auc``): the region criterion over the
      frames of the videos that have both grid features and pixel masks;
    - ``heatmaps/VIDEO.png`` for the anomalous videos with grid features (``heatmaps``: how many).
    """
    table = feature_store.read_table(store, columns=["dataset", "mask_uri", "source_uri"], split=split)
    if table.num_rows == 0:
        return {}
    row_of = {vid: i for i, vid in enumerate(table.column("video_id").to_pylist())}
    order = [row_of[vid] for vid in bags.video_ids]
    datasets = [table.column("dataset")[i].as_py() for i in order]
    masks = [table.column("mask_uri")[i].as_py() for i in order]
    sources = [table.column("source_uri")[i].as_py() for i in order]
    out: dict = {}
    if any(datasets):
        out["per_dataset"] = per_dataset_metrics(
            datasets, scores, *bags.frame_truth(), protocol=protocol, clip_len=clip_len
        )
    # Cell scores, streamed: the grid features (cells x 32 x D per video) are never all in memory.
    position = {vid: k for k, vid in enumerate(bags.video_ids)}
    cell_scores: dict[int, np.ndarray] = {}
    for batch in feature_store.iter_batches(store, ["features_grid"], split=split):
        ids = batch.column("video_id").to_pylist()
        for vid, grid_features in zip(
            ids, feature_store.grid_from_arrow(batch.column("features_grid")), strict=True
        ):
            k = position.get(vid)
            if k is not None and grid_features is not None and k not in cell_scores:
                cell_scores[k] = score_bags(model, grid_features)  # (cells, 32)
    if not cell_scores:
        return out

    region_labels: dict[str, list[np.ndarray]] = {}
    region_scores: dict[str, list[np.ndarray]] = {}
    videos = 0
    for k in sorted(cell_scores):
        cells = cell_scores[k]
        grid = grid_of(cells.shape[0])
        frames = int(bags.num_frames[k])
        per_frame = cells[:, frame_segments(frames, cells.shape[1])].T  # (frames, cells)
        if masks[k]:
            counts = []
            for mask in iter_masks(masks[k]):
                if len(counts) == frames:
                    break
                counts.append(cell_pixel_counts(mask, grid))
            if len(counts) < frames:
                logger.warning(
                    "%s: %d masks for %d frames; only those frames count", masks[k], len(counts), frames
                )
            if counts:
                labels_k, scores_k = frame_region_scores(per_frame[: len(counts)], np.stack(counts))
                name = datasets[k] or ""
                region_labels.setdefault(name, []).append(labels_k)
                region_scores.setdefault(name, []).append(scores_k)
                videos += 1
        if heatmaps and bags.labels[k] == 1:
            out["heatmaps"] = out.get("heatmaps", 0) + 1
            _write_heatmap(
                out_dir, bags.video_ids[k], sources[k], masks[k], scores[k], per_frame, bags, k, threshold
            )
    if region_labels:
        all_labels = np.concatenate([a for parts in region_labels.values() for a in parts])
        all_scores = np.concatenate([a for parts in region_scores.values() for a in parts])
        out["region_level"] = {
            **region_summary(all_labels, all_scores, threshold=threshold),
            "videos": videos,
            "grid": grid_of(next(iter(cell_scores.values())).shape[0]),
            "criterion": f"detected when cells scoring > threshold cover >= {COVERAGE:.0%} of the anomalous pixels",
        }
        for name in region_labels:
            if name and name in out.get("per_dataset", {}):
                summary = region_summary(
                    np.concatenate(region_labels[name]), np.concatenate(region_scores[name])
                )
                out["per_dataset"][name]["region_auc"] = summary["auc"]
                out["per_dataset"][name]["region_detection_rate"] = summary["detection_rate"]
    return out


def _write_heatmap(
    out_dir, video_id, source, mask_uri, segment_scores, per_frame, bags, k, threshold
) -> None:
    """Heat map of the frame in the middle of the video's highest-scoring segment."""
    frames = int(bags.num_frames[k])
    best = int(np.argmax(segment_scores))
    bounds = segment_bounds(frames, len(segment_scores))
    index = int(min(frames - 1, (bounds[best] + max(bounds[best + 1] - 1, bounds[best])) // 2))
    try:
        if not source:
            raise AnomalyError(video_id, "the store records no source URI")
        image = read_frame(source, index, fps=float(bags.fps[k]) or None)
    except AnomalyError as exc:
        logger.warning("%s: no frame for the heat map (%s); drawing on grey", video_id, exc)
        image = np.full((120, 160, 3), 128, dtype=np.uint8)
    mask = None
    if mask_uri:
        try:
            mask = mask_at(mask_uri, index)
        except AnomalyError as exc:
            logger.warning("%s: no mask for the heat map (%s)", video_id, exc)
    heatmap_plot(
        image,
        per_frame[index],
        uris.join(out_dir, "heatmaps", f"{uris.safe_file_name(video_id)}.png"),
        title=f"{video_id} frame {index} (segment score {float(segment_scores[best]):.2f})",
        mask=mask,
        threshold=threshold,
    )
