"""Where in the frame: per-cell features, per-cell scores, heat maps and region-level metrics.

Grid features (``extract --grid G``): every clip is also resized to ``(G*h, G*w)``
and cut into ``G x G`` tiles of the backbone's ``h x w`` input (:func:`tile_clip`);
each tile goes through the backbone like a whole clip and is pooled into 32
segments like the full-frame features, giving the store's optional
``features_grid`` column ``(G*G, 32, D)``, cells in row-major order. Cell
``(i, j)`` covers rows ``bounds_h[i]:bounds_h[i+1]`` and columns
``bounds_w[j]:bounds_w[j+1]`` of the frame, with ``bounds = round(linspace(0,
size, G+1))`` (:func:`cell_bounds`) at any resolution, so a cell maps onto a
pixel mask of any size. The standard ``features`` column stays the full-frame
features, so training and the frame-level protocol are unchanged; the trained
scorer is applied to each cell's features as it is to a whole frame's.

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

Pixel masks (``mask_uri``, :func:`iter_masks`): a folder of mask images in
natural order (UCSD ``Test001_gt/``; nonzero = anomalous), a ``(T, H, W)``
``.npy`` (ShanghaiTech ``test_pixel_mask``) or an Avenue ``N_label.mat``
(``volLabel``). One mask is held at a time (the ``.mat`` format is loaded whole).
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Iterator, Sequence

import numpy as np

from anomaly import uris
from anomaly.errors import AnomalyError

logger = logging.getLogger(__name__)

COVERAGE = 0.4  # share of a frame's anomalous pixels the predicted region must cover
THRESHOLD = 0.5  # operating point reported beside the threshold-free curve summary
MAX_GRID = 8


# ----------------------------------------------------------------------------------------- geometry


def parse_grid(text: str | int | None) -> int:
    """``"2x2"``, ``"3"`` or ``3`` -> 3; ``None``/``"1"``/``"1x1"``/``"none"`` -> 1 (no grid)."""
    if text is None:
        return 1
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        raw = str(text).strip().lower()
        if raw in ("", "none", "off"):
            return 1
        match = re.fullmatch(r"(\d+)(?:\s*x\s*(\d+))?", raw)
        if not match or (match.group(2) and match.group(2) != match.group(1)):
            raise AnomalyError("--grid", f"expected GxG with equal sides (e.g. 2x2, 3x3), got {text!r}")
        value = int(match.group(1))
    if not 1 <= value <= MAX_GRID:
        raise AnomalyError("--grid", f"grid must be between 1x1 and {MAX_GRID}x{MAX_GRID}, got {value}")
    return value


def grid_of(cells: int) -> int:
    """Grid side from a cell count (``9`` -> 3)."""
    side = int(round(math.sqrt(cells)))
    if side * side != cells:
        raise ValueError(f"{cells} cells do not form a square grid")
    return side


def cell_bounds(height: int, width: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column boundaries (``grid + 1`` each) of the cells of a ``height x width`` frame."""
    rows = np.round(np.linspace(0, height, grid + 1)).astype(np.int64)
    cols = np.round(np.linspace(0, width, grid + 1)).astype(np.int64)
    return rows, cols


def tile_clip(frames: np.ndarray, grid: int) -> np.ndarray:
    """``(T, G*h, G*w, C)`` -> ``(G*G, T, h, w, C)``: the cells of a clip, row-major."""
    t, height, width, channels = frames.shape
    if height % grid or width % grid:
        raise ValueError(f"a {height}x{width} clip does not split into {grid}x{grid} equal tiles")
    h, w = height // grid, width // grid
    tiles = frames.reshape(t, grid, h, grid, w, channels).transpose(1, 3, 0, 2, 4, 5)
    return np.ascontiguousarray(tiles.reshape(grid * grid, t, h, w, channels))


def grid_clips(uri: str, *, spec, stride: int, grid: int) -> Iterator[np.ndarray]:
    """The cells of every clip of ``uri``: per clip (same starts as the full-frame clips) a
    ``(G*G, T, h, w, 3)`` array, the clip resized to ``(G*h, G*w)`` (``(h, w)`` = the backbone's
    crop) and cut by :func:`tile_clip`. Streams like :func:`anomaly.video.iter_clips`."""
    from anomaly.video import iter_clips

    h, w = spec.crop
    for clip in iter_clips(uri, clip_len=spec.clip_len, stride=stride, size=(grid * h, grid * w)):
        yield tile_clip(clip.frames, grid)


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
    from sklearn.metrics import roc_auc_score, roc_curve

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


# -------------------------------------------------------------------------------------------- masks


def _mask_image(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("L")) != 0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise AnomalyError(where, f"not a mask image: {exc}") from exc


def iter_masks(mask_uri: str) -> Iterator[np.ndarray]:
    """The pixel masks of a video, one ``(H, W)`` bool array per frame, in frame order."""
    from anomaly.frame_folder import list_frames

    lower = mask_uri.lower().rstrip("/")
    if lower.endswith(".npy"):
        if uris.is_local(mask_uri):
            _, path = uris.filesystem(mask_uri)
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            array = np.load(io.BytesIO(uris.read_bytes(mask_uri)), allow_pickle=False)
        if array.ndim != 3:
            raise AnomalyError(mask_uri, f"pixel masks must be (frames, height, width), got {array.shape}")
        for frame in array:
            yield np.asarray(frame) != 0
        return
    if lower.endswith(".mat"):
        from anomaly.ground_truth import read_vol_label

        yield from read_vol_label(mask_uri)
        return
    fs, path = uris.filesystem(mask_uri)
    for frame_path in list_frames(fs, path, mask_uri):
        yield _mask_image(fs.cat_file(frame_path), f"{mask_uri}: {frame_path.rsplit('/', 1)[-1]}")


def mask_at(mask_uri: str, index: int) -> np.ndarray | None:
    """The mask of one frame (None past the end); reads only that frame for folders and local ``.npy``."""
    from anomaly.frame_folder import list_frames

    lower = mask_uri.lower().rstrip("/")
    if not lower.endswith((".npy", ".mat")):
        fs, path = uris.filesystem(mask_uri)
        frames = list_frames(fs, path, mask_uri)
        return _mask_image(fs.cat_file(frames[index]), mask_uri) if 0 <= index < len(frames) else None
    for i, mask in enumerate(iter_masks(mask_uri)):
        if i == index:
            return mask
    return None


# ------------------------------------------------------------------------------------------ frames


def read_frame(uri: str, index: int, *, fps: float | None = None) -> np.ndarray:
    """Frame ``index`` of a video as uint8 RGB (random access for frame folders, a decode for files)."""
    from anomaly.frame_folder import FrameFolderVideo
    from anomaly.video import open_video

    reader = open_video(uri, fps=fps)
    if isinstance(reader, FrameFolderVideo):
        return reader.read_frame(index)
    for i, convert in enumerate(reader._frames(None)):  # noqa: SLF001 - the package's own backend API
        if i == index:
            return convert()
    raise AnomalyError(uri, f"frame {index} is past the end of the video")


# ------------------------------------------------------------------------------------------- plots


def heatmap_plot(
    frame: np.ndarray,
    cell_scores: np.ndarray,
    uri: str,
    *,
    title: str,
    mask: np.ndarray | None = None,
    threshold: float = THRESHOLD,
) -> str:
    """The frame with its cell scores as a translucent heat map; cells above ``threshold`` outlined,
    the annotated anomalous pixels (``mask``) contoured in white. Written as a PNG to ``uri``."""
    from matplotlib.patches import Rectangle

    from anomaly.plots import _save, plt

    scores = np.asarray(cell_scores, dtype=np.float64).reshape(-1)
    grid = grid_of(scores.size)
    height, width = frame.shape[:2]
    rows, cols = cell_bounds(height, width, grid)
    heat = np.zeros((height, width), dtype=np.float64)
    for k, score in enumerate(scores):
        i, j = divmod(k, grid)
        heat[rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = score
    fig, ax = plt.subplots(figsize=(max(3.0, 5.0 * width / max(height, 1)), 5.0))
    ax.imshow(frame, interpolation="nearest")
    shown = ax.imshow(heat, cmap="inferno", alpha=0.45, vmin=0.0, vmax=1.0, interpolation="nearest")
    for k, score in enumerate(scores):
        i, j = divmod(k, grid)
        box = (cols[j] - 0.5, rows[i] - 0.5)
        size = (cols[j + 1] - cols[j], rows[i + 1] - rows[i])
        if score > threshold:
            ax.add_patch(Rectangle(box, *size, fill=False, edgecolor="tab:red", lw=2))
        ax.text(
            (cols[j] + cols[j + 1]) / 2,
            (rows[i] + rows[i + 1]) / 2,
            f"{score:.2f}",
            color="white",
            ha="center",
            va="center",
            fontsize=8,
        )
    if mask is not None and np.asarray(mask).any():
        mask = np.asarray(mask, dtype=float)
        if mask.shape != (height, width):  # masks may be stored at another resolution
            ys = (np.arange(height) * mask.shape[0] / height).astype(int)
            xs = (np.arange(width) * mask.shape[1] / width).astype(int)
            mask = mask[np.ix_(ys, xs)]
        ax.contour(mask, levels=[0.5], colors="white", linewidths=1.2)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="cell anomaly score")
    ax.set(title=title, xticks=[], yticks=[])
    return _save(fig, uri)


# -------------------------------------------------------------------------------------- evaluation


def _safe_name(video_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", video_id).lstrip(".") or "video"


def per_dataset_metrics(
    datasets: Sequence[str | None],
    scores: np.ndarray,
    labels: np.ndarray,
    num_frames: np.ndarray,
    intervals: Sequence,
    classes: Sequence[str],
) -> dict:
    """Frame-level metrics of each named data set's videos on their own (official protocol per set)."""
    from anomaly.metrics import evaluate_frames

    out = {}
    names = np.asarray([d or "" for d in datasets], dtype=object)
    for name in sorted({d for d in names if d}):
        idx = np.flatnonzero(names == name)
        result = evaluate_frames(
            scores[idx], labels[idx], num_frames[idx], [intervals[i] for i in idx], [classes[i] for i in idx]
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
) -> dict:
    """What :func:`anomaly.evaluation.evaluate` adds for stores with the optional columns.

    - ``per_dataset``: frame AUC/AP per value of the ``dataset`` column (when any is set);
    - ``region_level`` (and per data set ``region_auc``): the region criterion over the
      frames of the videos that have both grid features and pixel masks;
    - ``heatmaps/VIDEO.png`` for the anomalous videos with grid features (``heatmaps``: how many).
    """
    from anomaly import store as feature_store
    from anomaly.checkpoints import score_bags
    from anomaly.segments import frame_segments

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
            datasets, scores, bags.labels, bags.num_frames, bags.intervals, bags.classes
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
    from anomaly.segments import segment_bounds

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
        uris.join(out_dir, "heatmaps", f"{_safe_name(video_id)}.png"),
        title=f"{video_id} frame {index} (segment score {float(segment_scores[best]):.2f})",
        mask=mask,
        threshold=threshold,
    )


__all__ = [
    "COVERAGE",
    "cell_bounds",
    "cell_pixel_counts",
    "covered_share",
    "frame_detected",
    "frame_region_scores",
    "grid_clips",
    "heatmap_plot",
    "iter_masks",
    "localization_metrics",
    "mask_at",
    "parse_grid",
    "read_frame",
    "region_summary",
    "tile_clip",
]
