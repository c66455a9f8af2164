"""Import published per-video feature files (``.txt`` and ``.npy``) into the feature store.

Rules (also in the README):
- a file's video id is its stem, cut after ``_x264`` when the stem goes on
  (``Abuse028_x264_i3d.npy`` and ``Abuse028_x264__3.npy`` are both
  ``Abuse028_x264``); split, label, class and intervals come from the official
  annotation files (see :mod:`anomaly.ground_truth.ucf_crime`);
- several files with one video id are crops of that video (the ten-crop
  releases' ``__0`` … ``__9`` files): their features are averaged;
- ``.txt``: one row per segment (or clip), whitespace-separated numbers;
  ``.npy``: a 2-D array (rows, D), or 3-D (rows, crops, D) whose crops are averaged;
- a file with exactly 32 rows is kept as it is; any other row count (the
  published releases' 31- and 33-row quirks, or clip-level features) is treated
  as consecutive clips and re-pooled to 32 segments with Sultani's rule
  (:func:`anomaly.segments.pool_segments`): 33 rows -> one segment averages two
  neighbouring rows, 31 rows -> one row is repeated;
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


def parse_feature_file(uri: str, data: bytes) -> np.ndarray:
    """Bytes of one feature file -> (rows, D) float32; ValueError with a one-line reason."""
    if not data:
        raise ValueError("empty file (0 bytes)")
    if uri.lower().endswith(".npy"):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - numpy raises many types for a bad file
            raise ValueError(f"not a readable .npy array: {exc}") from exc
        if array.ndim == 3:
            array = array.mean(axis=1)
        if array.ndim != 2:
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
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"no features (shape {array.shape})")
    if not np.isfinite(array).all():
        raise ValueError("contains NaN or infinite values")
    return array


def feature_video_id(uri: str) -> str:
    """The video id of a feature file (see the module's rules)."""
    stem = video_id_of(uri)
    cut = stem.find("_x264")
    return stem[: cut + len("_x264")] if cut >= 0 else stem


def to_segments(rows: np.ndarray) -> np.ndarray:
    return rows if rows.shape[0] == NUM_SEGMENTS else pool_segments(rows)


def read_video_features(files: list[str]) -> np.ndarray:
    """(32, D) segments of one video from its file, or the average of its crop files."""
    arrays = [parse_feature_file(uri, uris.read_bytes(uri)) for uri in files]
    if len({a.shape for a in arrays}) > 1:
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise ValueError(f"crop files of one video have different shapes ({shapes})")
    return to_segments(np.mean(arrays, axis=0) if len(arrays) > 1 else arrays[0])


def _parse_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data stage: read and parse a batch of videos' files in a worker; errors become rows."""
    features, errors, dims = [], [], []
    for files in batch["files"]:
        try:
            segments = read_video_features(list(files))
            features.append(segments.tobytes())
            dims.append(segments.shape[1])
            errors.append("")
        except (ValueError, AnomalyError) as exc:
            features.append(b"")
            dims.append(0)
            errors.append(str(exc.what if isinstance(exc, AnomalyError) else exc))
    return {
        "video_id": batch["video_id"],
        "uri": batch["uri"],
        "segments": np.array(features, dtype=object),
        "dim": np.array(dims, dtype=np.int64),
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
    pending: list[dict] = []
    dataset = ray.data.from_items(todo).map_batches(_parse_batch, batch_size=16)
    for row in dataset.iter_rows() if todo else []:
        uri = row["uri"]
        if row["error"]:
            report.skipped.append((uri, row["error"]))
            continue
        if dim is None:
            dim = int(row["dim"])
            feature_store.ensure_metadata(
                out, feature_store.StoreMetadata(backbone=backbone, feature_dim=dim, source="import")
            )
        if int(row["dim"]) != dim:
            report.skipped.append((uri, f"features are {row['dim']}-d but the store holds {dim}-d features"))
            continue
        video_id = row["video_id"]
        facts = truth.describe(video_id)
        pending.append(
            {
                "video_id": video_id,
                **facts,
                "backbone": backbone,
                "features": np.frombuffer(row["segments"], dtype=np.float32).reshape(NUM_SEGMENTS, dim),
                "fps": None,
                "source_uri": uri,
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
