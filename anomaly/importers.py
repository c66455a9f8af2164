"""Import published per-video feature files (``.txt`` and ``.npy``) into the feature store.

Rules (also in the README):
- a file's video id is its stem, cut after ``_x264`` when the stem goes on
  (``Abuse028_x264_i3d.npy`` and ``Abuse028_x264__3.npy`` are both
  ``Abuse028_x264``); split, label, class and intervals come from the official
  annotation files (see :mod:`anomaly.ground_truth.ucf_crime`);
- several files with one video id are crops of that video (the ten-crop
  releases' ``__0`` … ``__9`` files, in the order of their number): the crop
  axis is kept (``features_crops``, each crop its own bag, see :mod:`anomaly.crops`)
  and ``features`` holds the crops' mean;
- ``.txt``: one row per segment (or clip), whitespace-separated numbers;
  ``.npy``: a 2-D array (rows, D), or 3-D with a crop axis, kept likewise:
  (rows, crops, D) or (crops, rows, D), told apart by size (the crop axis is the
  one of at most 10 when the other is longer; an ambiguous shape is refused);
  every video of one store has the same number of crops;
- one rule for every file, whatever its row count: the rows are consecutive clips
  or segments and are averaged into 32 segments by Sultani's boundaries
  (:func:`anomaly.segments.pool_segments` without L2 normalisation), so a
  32-row file is kept as it is, 33 rows -> one segment averages two neighbouring
  rows, 31 rows -> one row is repeated, and every row keeps the scale it was
  published with (normalisation is the model's job, :mod:`anomaly.normalization`);
  the store records each video's source row count (``source_rows``);
- an empty or unparsable file is skipped with a one-line reason, never silently.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import ray

from anomaly import store as feature_store
from anomaly import uris
from anomaly.errors import AnomalyError
from anomaly.ground_truth import GroundTruth, video_id_of
from anomaly.segments import NUM_SEGMENTS, pool_segments

logger = logging.getLogger(__name__)

FEATURE_SUFFIXES = (".txt", ".npy")


def list_feature_files(src: str) -> list[str]:
    """Every ``.txt``/``.npy`` under a folder or URI prefix (or the single file given), sorted."""
    fs, path = uris.filesystem(src)
    if not fs.exists(path):
        raise AnomalyError(src, "no such folder, file or prefix")
    if fs.isfile(path):
        found = [path]
    else:
        found = sorted(p for p in fs.find(path) if p.lower().endswith(FEATURE_SUFFIXES))
    protocol = src.split("://", 1)[0] + "://" if "://" in src else ""
    return [f"{protocol}{p}" if protocol and "://" not in p else p for p in found]


def parse_feature_file(uri: str, data: bytes, *, keep_crops: bool = False) -> np.ndarray:
    """Bytes of one feature file -> (rows, D) float32; ValueError with a one-line reason.

    ``keep_crops``: a 3-D ``.npy`` comes back as (rows, crops, D) instead of its crop mean.
    """
    if not data:
        raise ValueError("empty file (0 bytes)")
    if uri.lower().endswith(".npy"):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as exc:  # numpy raises many types for a bad file
            raise ValueError(f"not a readable .npy array: {exc}") from exc
        if array.ndim == 3:
            axis = crop_axis(array.shape)
            if not keep_crops:
                array = array.mean(axis=axis)
            elif axis == 0:
                array = array.transpose(1, 0, 2)
        if array.ndim != 2 and not (keep_crops and array.ndim == 3):
            raise ValueError(f"expected a 2-D (rows, dim) array, got shape {array.shape}")
    else:
        lines = [line.split() for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
        if not lines:
            raise ValueError("no feature rows (file is blank)")
        widths = Counter(len(line) for line in lines)
        if len(widths) > 1:
            raise ValueError(
                f"rows have different widths ({', '.join(str(w) for w in sorted(widths))} numbers)"
            )
        try:
            array = np.array(lines, dtype=np.float32)
        except ValueError as exc:
            raise ValueError(f"could not parse numbers: {str(exc).splitlines()[0]}") from exc
    array = np.asarray(array, dtype=np.float32)
    if array.shape[0] == 0 or array.shape[-1] == 0:
        raise ValueError(f"no features (shape {array.shape})")
    if not np.isfinite(array).all():
        raise ValueError("contains NaN or infinite values")
    return array


def feature_video_id(uri: str) -> str:
    """The video id of a feature file (see the module's rules)."""
    stem = video_id_of(uri)
    cut = stem.find("_x264")
    return stem[: cut + len("_x264")] if cut >= 0 else stem


MAX_CROPS = 10  # ten-crop releases are the most crops a published feature file has


def crop_axis(shape: tuple[int, ...]) -> int:
    """The crop axis (0 or 1) of a (rows, crops, D) or (crops, rows, D) array; ValueError if unclear."""
    rows_first = shape[1] <= MAX_CROPS < shape[0]
    crops_first = shape[0] <= MAX_CROPS < shape[1]
    if rows_first == crops_first:
        raise ValueError(
            f"cannot tell the crop axis of a {shape} array (expected (rows, crops<={MAX_CROPS}, dim) "
            f"or (crops<={MAX_CROPS}, rows, dim) with more rows than crops); save it as 2-D (rows, dim)"
        )
    return 1 if rows_first else 0


def to_segments(rows: np.ndarray) -> np.ndarray:
    """Any number of rows -> (32, D) by one rule (see the module docstring)."""
    return pool_segments(rows, NUM_SEGMENTS, l2=False)


def crop_number(uri: str) -> int:
    """The crop of a ``…__3.npy`` file (the ten-crop releases' suffix); 0 without one."""
    stem = video_id_of(uri)
    head, sep, tail = stem.rpartition("__")
    return int(tail) if sep and tail.isdigit() else 0


def read_video_features(files: list[str]) -> tuple[np.ndarray, int]:
    """``(crops, 32, D)`` segments of one video, each crop pooled on its own, and the row count.

    One 2-D file is one crop; a 3-D ``.npy`` or several crop files keep their crops.
    """
    files = sorted(files, key=lambda uri: (crop_number(uri), uri))
    arrays = [parse_feature_file(uri, uris.read_bytes(uri), keep_crops=True) for uri in files]
    if len({a.shape for a in arrays}) > 1:
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise ValueError(f"crop files of one video have different shapes ({shapes})")
    if len(arrays) > 1:
        if arrays[0].ndim == 3:
            raise ValueError("several files of one video that each hold crops (3-D arrays)")
        rows = np.stack(arrays, axis=1)  # (rows, crops, D)
    else:
        rows = arrays[0] if arrays[0].ndim == 3 else arrays[0][:, None]
    segments = np.stack([to_segments(rows[:, k]) for k in range(rows.shape[1])])
    return segments, int(rows.shape[0])


def _parse_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data stage: read and parse a batch of videos' files in a worker; errors become rows."""
    features, errors, dims, source_rows, crops = [], [], [], [], []
    for files in batch["files"]:
        try:
            segments, rows = read_video_features(list(files))
            features.append(segments.tobytes())
            crops.append(segments.shape[0])
            dims.append(segments.shape[2])
            source_rows.append(rows)
            errors.append("")
        except (ValueError, AnomalyError) as exc:
            features.append(b"")
            crops.append(0)
            dims.append(0)
            source_rows.append(0)
            errors.append(str(exc.what if isinstance(exc, AnomalyError) else exc))
    return {
        "video_id": batch["video_id"],
        "uri": batch["uri"],
        "segments": np.array(features, dtype=object),
        "dim": np.array(dims, dtype=np.int64),
        "crops": np.array(crops, dtype=np.int64),
        "source_rows": np.array(source_rows, dtype=np.int64),
        "error": np.array(errors, dtype=object),
    }


@dataclass
class ImportReport:
    imported: Counter = field(default_factory=Counter)  # (split, label) -> count
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (uri, reason)
    already_present: int = 0

    @property
    def total_imported(self) -> int:
        return sum(self.imported.values())


def import_features(
    src: str,
    out: str,
    *,
    truth: GroundTruth,
    backbone: str = "imported",
    rows_per_part: int = 64,
) -> ImportReport:
    """Parse every feature file under ``src`` in parallel (Ray Data) and append them to ``out``."""
    files = list_feature_files(src)
    if not files:
        raise AnomalyError(src, "no .txt or .npy feature files found")
    videos: dict[str, list[str]] = {}
    for uri in files:
        videos.setdefault(feature_video_id(uri), []).append(uri)
    report = ImportReport()
    present = feature_store.video_ids(out)
    todo = [
        {"video_id": vid, "uri": group[0], "files": group}
        for vid, group in videos.items()
        if vid not in present
    ]
    report.already_present = len(videos) - len(todo)
    metadata = feature_store.read_metadata(out)
    if metadata:
        # Refuses a store of another backbone.
        feature_store.ensure_metadata(out, feature_store.StoreMetadata(backbone=backbone))
    dim = metadata.feature_dim if metadata else None
    crops = (metadata.crops or 1) if metadata and metadata.feature_dim else None
    pending: list[dict] = []
    dataset = ray.data.from_items(todo).map_batches(_parse_batch, batch_size=16)
    for row in dataset.iter_rows() if todo else []:
        uri = row["uri"]
        if row["error"]:
            report.skipped.append((uri, row["error"]))
            continue
        if dim is None:
            dim, crops = int(row["dim"]), int(row["crops"])
            feature_store.ensure_metadata(
                out,
                feature_store.StoreMetadata(
                    backbone=backbone, feature_dim=dim, source="import", crops=crops if crops > 1 else None
                ),
            )
        if int(row["dim"]) != dim:
            report.skipped.append((uri, f"features are {row['dim']}-d but the store holds {dim}-d features"))
            continue
        if int(row["crops"]) != crops:
            report.skipped.append((uri, f"{row['crops']} crops but the store holds {crops} per video"))
            continue
        video_id = row["video_id"]
        facts = truth.describe(video_id)
        segments = np.frombuffer(row["segments"], dtype=np.float32).reshape(crops, NUM_SEGMENTS, dim)
        pending.append(
            {
                "video_id": video_id,
                **facts,
                "backbone": backbone,
                # the crops' mean, as the store's every reader that knows no crops expects
                "features": segments[0] if crops == 1 else segments.mean(axis=0),
                "features_crops": segments if crops > 1 else None,
                "fps": None,
                "source_uri": uri,
                "source_rows": int(row["source_rows"]),
            }
        )
        report.imported[(facts["split"], facts["label"])] += 1
        if len(pending) >= rows_per_part:
            feature_store.write_rows(out, pending)
            pending = []
    feature_store.write_rows(out, pending)
    for uri, reason in report.skipped:
        logger.warning("skipped %s: %s", os.path.basename(uri), reason)
    return report
