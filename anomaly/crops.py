"""Ten crops: the geometry of the RTFM-era releases, and the crop axis where bags are read and scored.

Geometry (GowthamGottimukkala/I3D_Feature_Extraction_resnet ``oversample_data``,
the extractor behind the RTFM, MGFN and UR-DMU UCF-Crime features): from the
resized frame, five ``h x w`` windows -- top-left, top-right, centre,
bottom-left, bottom-right -- then the same five windows of the horizontally
flipped frame, in that order, so crop 2 is the centre crop (the one-crop
extraction) and crop ``5 + k`` is the mirror image of the window opposite crop
``k``. The centre window starts at ``((H - h) // 2, (W - w) // 2)``, as
``anomaly.video.reader.center_crop`` and the reference's ``[16:240, 58:282]``
of a 256x340 frame.

Stores: a ten-crop store keeps per video ``features_crops`` ``(crops, 32, D)``
(each crop pooled into its own 32 segments) beside ``features`` ``(32, D)``,
the mean over crops, which every reader that does not know about crops keeps
using. Training (config ``crops``): ``"bags"`` makes each crop its own bag,
as RTFM does; ``"mean"`` trains on the crop mean. Evaluation and scoring
average the crop scores (:func:`score_crop_batch`).

This module imports neither torch nor Ray at import time (the decode stage uses it).
"""

from __future__ import annotations

import numpy as np

CENTRE = 2  # index of the centre crop among the ten
CROP_MODES = ("bags", "mean")
CROPS_COLUMN = "features_crops"


def crop_windows(height: int, width: int, crop: tuple[int, int]) -> list[tuple[int, int]]:
    """``(top, left)`` of the five windows: top-left, top-right, centre, bottom-left, bottom-right."""
    h, w = crop
    if h > height or w > width:
        raise ValueError(f"crop {h}x{w} is larger than the frame {height}x{width}")
    bottom, right = height - h, width - w
    return [(0, 0), (0, right), (bottom // 2, right // 2), (bottom, 0), (bottom, right)]


def ten_crop(frames: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """``(T, H, W, C)`` resized frames -> ``(10, T, h, w, C)``: five windows, then the same of the flipped frames."""
    h, w = crop
    windows = crop_windows(frames.shape[1], frames.shape[2], crop)
    flipped = frames[:, :, ::-1]
    out = np.empty((10, frames.shape[0], h, w, frames.shape[3]), dtype=frames.dtype)
    for k, (top, left) in enumerate(windows):
        out[k] = frames[:, top : top + h, left : left + w]
        out[5 + k] = flipped[:, top : top + h, left : left + w]
    return out


def check_crops(crops: object, where: str = "crops") -> int:
    from anomaly.errors import AnomalyError

    if crops not in (1, 10) or isinstance(crops, bool):
        raise AnomalyError(where, f"expected 1 (centre crop) or 10 (ten crops), got {crops!r}")
    return int(crops)


def check_mode(mode: object, where: str = "crops") -> str:
    from anomaly.errors import AnomalyError

    if mode not in CROP_MODES:
        raise AnomalyError(where, f"expected one of {', '.join(CROP_MODES)}, got {mode!r}")
    return str(mode)


# ------------------------------------------------------------------------------------ bags and scores


def crop_bags_from_arrow(column) -> np.ndarray:
    """A ``features_crops`` column (list<list<list<float32>>>, no nulls) -> ``(N, crops, 32, D)`` float32."""
    from anomaly import store as feature_store

    grids = feature_store.grid_from_arrow(column)
    if any(g is None for g in grids):
        raise ValueError("rows without crop features in a ten-crop store")
    if not grids:
        return np.zeros((0, 0, 0, 0), dtype=np.float32)
    return np.stack(grids)


def expand_crop_bags(batch):
    """Ray Data ``map_batches`` (pyarrow): each row's crops become rows of their own ``features`` bags.

    ``crops: bags`` (RTFM): a video of ten crops is ten training bags of its label.
    Columns other than the features are repeated per crop.
    """
    import pyarrow as pa

    from anomaly import store as feature_store

    if CROPS_COLUMN not in batch.column_names:
        return batch
    bags = crop_bags_from_arrow(batch.column(CROPS_COLUMN))
    rest = [name for name in batch.column_names if name not in (CROPS_COLUMN, "features")]
    n, crops = bags.shape[:2] if bags.ndim == 4 and len(bags) else (0, 0)
    repeat = pa.array(np.repeat(np.arange(n), crops), type=pa.int64())
    columns = {name: batch.column(name).take(repeat) for name in rest}  # a table of no columns has no rows
    flat = bags.reshape(n * crops, *bags.shape[2:]) if n else np.zeros((0, 32, 0), dtype=np.float32)
    columns["features"] = feature_store.features_to_arrow(flat)
    return pa.table(columns)


def score_crop_batch(score_bags, model, batch) -> np.ndarray:
    """``(N, 32)`` scores of a pyarrow batch: the mean over crops when it has them, else of ``features``.

    ``score_bags(model, (N, 32, D)) -> (N, 32)``; a crop's scores are its own
    bag's, averaged over crops per segment (what RTFM's test does with its ten crops).
    """
    from anomaly import store as feature_store

    if CROPS_COLUMN in batch.column_names and batch.column(CROPS_COLUMN).null_count == 0 and batch.num_rows:
        bags = crop_bags_from_arrow(batch.column(CROPS_COLUMN))
        n, crops = bags.shape[:2]
        scores = np.asarray(score_bags(model, bags.reshape(n * crops, *bags.shape[2:])))
        return scores.reshape(n, crops, -1).mean(axis=1)
    return np.asarray(score_bags(model, feature_store.features_from_arrow(batch.column("features"))))


def score_crops(score, features: np.ndarray, *, crop_scores: bool = True) -> np.ndarray:
    """Per-clip scores of ``(clips, D)`` or ten-crop ``(clips, crops, D)`` features.

    ``score((clips, D)) -> (clips,)`` is the scoring rule (a whole video's
    :func:`anomaly.scoring.windows.score_clips`, or a chunk's ``score_clip_range``).
    With crops: every crop is scored as its own clip sequence and the scores
    averaged (``crop_scores``, a model trained with ``crops: bags``), or the
    crops' mean is scored (``crops: mean``).
    """
    if features.ndim == 2:
        return score(features)
    if not crop_scores:
        return score(features.mean(axis=1))
    return np.mean([score(features[:, k]) for k in range(features.shape[1])], axis=0).astype(np.float32)


def crop_scores_of(payload: dict) -> bool:
    """Whether a checkpoint's model scores crops one by one (trained with ``crops: bags``, the default)."""
    return payload.get("config", {}).get("crops", "bags") != "mean"
