"""The Parquet feature store: one row per video, 32 x D features, at any fsspec URI.

Layout of ``STORE``:
- ``part-*.parquet``: video rows (schema below), each file written atomically,
  so a killed job leaves whole videos or nothing;
- ``_store.json``: how the features were made (backbone, weights hash, clip
  settings, code version); stores refuse rows made with other settings;
- ``_failures.parquet``: videos that could not be read, with a one-line reason.
Files starting with ``_`` or ``.`` are skipped by pyarrow's and Ray's dataset
readers, so the store directory reads as a plain Parquet dataset.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from anomaly import __version__, uris
from anomaly.errors import AnomalyError
from anomaly.segments import NUM_SEGMENTS

logger = logging.getLogger(__name__)

METADATA_FILE = "_store.json"
FAILURES_FILE = "_failures.parquet"

SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # "train" | "test"
        pa.field("label", pa.int8(), nullable=False),  # 0 normal, 1 anomalous
        pa.field("anomaly_class", pa.string(), nullable=False),
        pa.field("num_frames", pa.int64()),  # null when unknown
        pa.field("anomaly_intervals", pa.list_(pa.list_(pa.int64()))),  # [[start, end), ...] 0-based
        pa.field("backbone", pa.string(), nullable=False),
        pa.field("features", pa.list_(pa.list_(pa.float32())), nullable=False),  # 32 x D
        pa.field("fps", pa.float64()),  # null when unknown
        pa.field("source_uri", pa.string()),
    ]
)

FAILURES_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string()),
        pa.field("video_id", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("stage", pa.string()),
    ]
)

# Settings that must agree for rows to live in one store.
COMPATIBILITY_KEYS = (
    "backbone",
    "feature_dim",
    "num_segments",
    "weights_sha256",
    "clip_len",
    "stride",
    "crop",
)


def features_to_arrow(features: np.ndarray) -> pa.Array:
    """(N, 32, D) float32 -> list<list<float32>> without Python loops."""
    feats = np.ascontiguousarray(features, dtype=np.float32)
    n, segments, dim = feats.shape
    inner = pa.ListArray.from_arrays(
        pa.array(np.arange(n * segments + 1, dtype=np.int32) * dim), pa.array(feats.reshape(-1))
    )
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * segments), inner)


def features_from_arrow(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """list<list<float32>> -> (N, 32, D) float32; every row must have the same shape."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if n == 0:
        return np.zeros((0, NUM_SEGMENTS, 0), dtype=np.float32)
    inner = column.flatten()
    values = inner.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    segments = len(inner) // n
    if segments * n != len(inner) or values.size % (n * segments):
        raise ValueError("rows of the features column have different shapes")
    return values.reshape(n, segments, -1)


def make_table(rows: Sequence[dict]) -> pa.Table:
    """Rows (dicts with the schema's keys; ``features`` a (32, D) array) -> an Arrow table."""
    if not rows:
        return SCHEMA.empty_table()
    features = np.stack([np.asarray(r["features"], dtype=np.float32) for r in rows])
    if features.ndim != 3:
        raise ValueError(f"features must be (segments, dim) per video, got {features.shape[1:]}")
    columns = {}
    for schema_field in SCHEMA:
        if schema_field.name == "features":
            columns["features"] = features_to_arrow(features)
        else:
            values = [r.get(schema_field.name) for r in rows]
            columns[schema_field.name] = pa.array(values, type=schema_field.type)
    return pa.table(columns, schema=SCHEMA)


def _table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_parquet(uri: str, table: pa.Table) -> str:
    """Write one Parquet file atomically (readers never see half a file)."""
    uris.write_bytes_atomic(uri, _table_bytes(table))
    return uri


def write_rows(store: str, rows: Sequence[dict] | pa.Table) -> str | None:
    """Append whole videos as one new part file, written atomically. Returns its URI."""
    table = rows if isinstance(rows, pa.Table) else make_table(rows)
    if table.num_rows == 0:
        return None
    part = uris.join(store, f"part-{uuid.uuid4().hex}.parquet")
    uris.write_bytes_atomic(part, _table_bytes(table.cast(SCHEMA)))
    return part


def _dataset(store: str) -> pads.Dataset | None:
    fs, path = uris.pyarrow_filesystem(store)
    info = fs.get_file_info(path)
    if info.type.name == "NotFound":
        return None
    return pads.dataset(path, format="parquet", filesystem=fs, schema=SCHEMA)


def read_table(store: str, *, columns: list[str] | None = None, split: str | None = None) -> pa.Table:
    """All video rows (optionally one split); duplicates by ``video_id`` keep the first."""
    dataset = _dataset(store)
    if dataset is None:
        raise AnomalyError(store, "feature store not found")
    wanted = None if columns is None else list(dict.fromkeys(["video_id", *columns]))
    filter_ = pads.field("split") == split if split else None
    table = dataset.to_table(columns=wanted, filter=filter_)
    ids = table.column("video_id").to_pylist()
    if len(set(ids)) != len(ids):
        first: dict[str, int] = {}
        for index, video_id in enumerate(ids):
            first.setdefault(video_id, index)
        logger.warning("%s: %d duplicate video rows ignored", store, len(ids) - len(first))
        table = table.take(sorted(first.values()))
    return table


def video_ids(store: str) -> set[str]:
    """Ids of the videos already committed to the store (empty for a new store)."""
    if _dataset(store) is None:
        return set()
    return set(read_table(store, columns=["video_id"]).column("video_id").to_pylist())


@dataclass
class Bags:
    """The store's videos as arrays: one MIL bag of 32 segment instances per video."""

    video_ids: list[str]
    features: np.ndarray  # (N, 32, D) float32
    labels: np.ndarray  # (N,) int64
    num_frames: np.ndarray  # (N,) int64, -1 when unknown
    intervals: list[list[tuple[int, int]]]
    classes: list[str]
    splits: list[str]
    fps: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[-1])

    def subset(self, index: Iterable[int]) -> Bags:
        idx = np.asarray(list(index), dtype=np.int64)
        return Bags(
            video_ids=[self.video_ids[i] for i in idx],
            features=self.features[idx],
            labels=self.labels[idx],
            num_frames=self.num_frames[idx],
            intervals=[self.intervals[i] for i in idx],
            classes=[self.classes[i] for i in idx],
            splits=[self.splits[i] for i in idx],
            fps=self.fps[idx],
        )


def load_bags(store: str, split: str | None = None) -> Bags:
    """Read the store (or one split) into memory as :class:`Bags`."""
    table = read_table(store, split=split)
    if table.num_rows == 0:
        what = f"no '{split}' videos" if split else "no videos"
        raise AnomalyError(store, f"feature store has {what}")
    features = features_from_arrow(table.column("features"))
    frames = table.column("num_frames").to_numpy(zero_copy_only=False)
    fps = table.column("fps").to_numpy(zero_copy_only=False)
    return Bags(
        video_ids=table.column("video_id").to_pylist(),
        features=features,
        labels=table.column("label").to_numpy().astype(np.int64),
        num_frames=np.nan_to_num(frames.astype(np.float64), nan=-1).astype(np.int64),
        intervals=[[tuple(iv) for iv in ivs or []] for ivs in table.column("anomaly_intervals").to_pylist()],
        classes=table.column("anomaly_class").to_pylist(),
        splits=table.column("split").to_pylist(),
        fps=np.nan_to_num(fps.astype(np.float64), nan=0.0),
    )


# --- metadata -------------------------------------------------------------------------------


def read_metadata(store: str) -> dict | None:
    uri = uris.join(store, METADATA_FILE)
    if not uris.exists(uri):
        return None
    return json.loads(uris.read_bytes(uri))


def ensure_metadata(store: str, settings: dict) -> dict:
    """Record how features are made; refuse a store made with incompatible settings."""
    settings = {"num_segments": NUM_SEGMENTS, "code_version": __version__, **settings}
    existing = read_metadata(store)
    if existing is not None:
        clashes = [
            f"{key}={existing.get(key)!r} (store) vs {settings.get(key)!r} (this run)"
            for key in COMPATIBILITY_KEYS
            if key in settings and _normal(existing.get(key)) != _normal(settings.get(key))
        ]
        if clashes:
            raise AnomalyError(store, "store was made with other settings: " + "; ".join(clashes))
        return existing
    uris.write_bytes_atomic(uris.join(store, METADATA_FILE), json.dumps(settings, indent=2).encode())
    return settings


def _normal(value):
    return list(value) if isinstance(value, tuple) else value


# --- failures -------------------------------------------------------------------------------


def read_failures(store: str) -> pa.Table:
    uri = uris.join(store, FAILURES_FILE)
    if not uris.exists(uri):
        return FAILURES_SCHEMA.empty_table()
    fs, path = uris.pyarrow_filesystem(uri)
    return pq.read_table(path, filesystem=fs)


def record_failures(store: str, failures: Sequence[dict]) -> None:
    """Merge failures into ``_failures.parquet`` (one row per URI, latest reason wins), atomically."""
    if not failures:
        return
    rows = {row["uri"]: row for row in read_failures(store).to_pylist()}
    for row in failures:
        rows[row["uri"]] = {key: row.get(key) for key in FAILURES_SCHEMA.names}
    table = pa.Table.from_pylist(list(rows.values()), schema=FAILURES_SCHEMA)
    uris.write_bytes_atomic(uris.join(store, FAILURES_FILE), _table_bytes(table))


def clear_failures(store: str, uris_done: Iterable[str]) -> None:
    """Forget failures of videos that have since been extracted."""
    done = set(uris_done)
    table = read_failures(store)
    if table.num_rows == 0 or not done:
        return
    keep = [row for row in table.to_pylist() if row["uri"] not in done]
    if len(keep) != table.num_rows:
        uris.write_bytes_atomic(
            uris.join(store, FAILURES_FILE), _table_bytes(pa.Table.from_pylist(keep, schema=FAILURES_SCHEMA))
        )
