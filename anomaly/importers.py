"""Import published per-video feature files (``.txt`` and ``.npy``) into the feature store.

Rules (also in the README):
- a file's video id is its stem; split, label, class and intervals come from
  the official annotation files (see :mod:`anomaly.annotations`);
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
from anomaly.annotations import GroundTruth, video_id_of
from anomaly.errors import AnomalyError
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


def to_segments(rows: np.ndarray) -> np.ndarray:
    return rows if rows.shape[0] == NUM_SEGMENTS else pool_segments(rows)


def _parse_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data stage: read and parse a batch of files in a worker; errors become rows."""
    features, errors, dims = [], [], []
    for uri in batch["uri"]:
        try:
            segments = to_segments(parse_feature_file(uri, uris.read_bytes(uri)))
            features.append(segments.tobytes())
            dims.append(segments.shape[1])
            errors.append("")
        except (ValueError, AnomalyError) as exc:
            features.append(b"")
            dims.append(0)
            errors.append(str(exc.what if isinstance(exc, AnomalyError) else exc))
    return {
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
    duplicates = [vid for vid, n in Counter(video_id_of(f) for f in files).items() if n > 1]
    if duplicates:
        raise AnomalyError(
            src, f"the same video id appears in several files: {', '.join(sorted(duplicates)[:5])}"
        )
    report = ImportReport()
    present = feature_store.video_ids(out)
    todo = [f for f in files if video_id_of(f) not in present]
    report.already_present = len(files) - len(todo)
    metadata = feature_store.read_metadata(out)
    if metadata:
        feature_store.ensure_metadata(out, {"backbone": backbone})  # refuses a store of another backbone
    dim = metadata.get("feature_dim") if metadata else None
    pending: list[dict] = []
    dataset = ray.data.from_items([{"uri": f} for f in todo]).map_batches(_parse_batch, batch_size=16)
    for row in dataset.iter_rows() if todo else []:
        uri = row["uri"]
        if row["error"]:
            report.skipped.append((uri, row["error"]))
            continue
        if dim is None:
            dim = int(row["dim"])
            feature_store.ensure_metadata(out, {"backbone": backbone, "feature_dim": dim, "source": "import"})
        if int(row["dim"]) != dim:
            report.skipped.append((uri, f"features are {row['dim']}-d but the store holds {dim}-d features"))
            continue
        video_id = video_id_of(uri)
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
