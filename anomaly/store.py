"""The Parquet feature store: one row per video, 32 x D features, at any fsspec URI.

Layout of ``STORE``:
- ``part-*.parquet``: video rows (schema below), each file written atomically,
  so a killed job leaves whole videos or nothing;
- ``_store.json``: how the features were made (backbone, weights hash, clip
  settings, code version), defined by :class:`StoreMetadata`; stores refuse
  rows made with other settings;
- ``_clips/part-*.parquet``: the clip table (extraction only): one row per
  clip (and grid cell) with its features, written by the workers; the bags are
  derived from it, and bags with another segment count can be derived later
  without decoding again (:func:`read_clips`);
- ``_failures/*.parquet``: the failure log, append-only (one small file per
  write, so two jobs never lose each other's records); ``_failures.parquet``
  is its latest summary (one row per URI), rewritten after each log write;
Files starting with ``_`` or ``.`` are skipped by pyarrow's and Ray's dataset
readers, so the store directory reads as a plain Parquet dataset.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # pa.compute
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from anomaly import __version__, uris
from anomaly.errors import AnomalyError, first_line
from anomaly.segments import NUM_SEGMENTS

logger = logging.getLogger(__name__)

METADATA_FILE = "_store.json"
FAILURES_FILE = "_failures.parquet"
FAILURES_LOG = "_failures"
CLIPS_DIR = "_clips"

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
        # Optional columns (null in stores made before them, and where not applicable):
        pa.field("dataset", pa.string()),  # e.g. "ucsd_ped2", "avenue", "shanghaitech"
        pa.field("mask_uri", pa.string()),  # pixel masks of the video (anomaly.masks.iter_masks)
        pa.field("features_grid", pa.list_(pa.list_(pa.list_(pa.float32())))),  # cells x 32 x D
        pa.field("source_rows", pa.int64()),  # rows of the imported file before pooling to 32 (importer)
        # ten-crop stores (anomaly.crops): crops x 32 x D, each crop its own bag; `features` is their mean
        pa.field("features_crops", pa.list_(pa.list_(pa.list_(pa.float32())))),
    ]
)

# Columns of the per-video bags training and evaluation read (everything but the large grid and crop features).
BAG_COLUMNS = [name for name in SCHEMA.names if name not in ("features_grid", "features_crops")]

FAILURES_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string()),
        pa.field("video_id", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("stage", pa.string()),
    ]
)

# The clip table: one row per clip (cell -1) and per grid cell (0..G*G-1) of every extracted video.
CLIP_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("window", pa.int32()),  # the decode task (time window) that produced it
        pa.field("clip_index", pa.int64(), nullable=False),  # start_frame // stride
        pa.field("cell", pa.int16(), nullable=False),  # -1 full frame, else the grid cell
        pa.field("first_frame", pa.int64()),
        pa.field("last_frame", pa.int64()),  # inclusive
        pa.field("time", pa.float64()),  # seconds at first_frame; null when the rate is unknown
        pa.field("features", pa.list_(pa.float32()), nullable=False),  # D
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
    "grid",  # recorded only for grid runs (anomaly.grid), so stores made without one still match
    "crops",  # recorded only for ten-crop stores (anomaly.crops), likewise
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


def grid_to_arrow(grids: Sequence[np.ndarray | None]) -> pa.Array:
    """Per row a ``(cells, 32, D)`` array or None -> list<list<list<float32>>> (null where None)."""
    grid_type = SCHEMA.field("features_grid").type
    present = [np.ascontiguousarray(g, dtype=np.float32) for g in grids if g is not None]
    if not present:
        return pa.nulls(len(grids), type=grid_type)
    shapes = {g.shape for g in present}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"grid features must be (cells, segments, dim), all alike; got {sorted(shapes)}")
    cells, segments, dim = present[0].shape
    count = len(present)
    values = pa.array(np.stack(present).reshape(-1))
    level3 = pa.ListArray.from_arrays(
        pa.array(np.arange(count * cells * segments + 1, dtype=np.int32) * dim), values
    )
    level2 = pa.ListArray.from_arrays(
        pa.array(np.arange(count * cells + 1, dtype=np.int32) * segments), level3
    )
    lengths = np.array([0 if g is None else cells for g in grids], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    mask = pa.array([g is None for g in grids], type=pa.bool_())
    return pa.ListArray.from_arrays(offsets, level2, mask=mask).cast(grid_type)


def grid_from_arrow(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray | None]:
    """list<list<list<float32>>> -> per row a ``(cells, 32, D)`` float32 array, or None where null."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], type=column.type)
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    out: list[np.ndarray | None] = [None] * len(column)
    rows = np.flatnonzero(valid)
    if rows.size == 0:
        return out
    present = column.take(pa.array(rows))
    cells = present.value_lengths().to_numpy(zero_copy_only=False)
    level2 = present.flatten()
    segments = level2.value_lengths().to_numpy(zero_copy_only=False)
    values = level2.flatten().flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if len(set(cells.tolist())) != 1 or len(set(segments.tolist())) != 1:
        raise ValueError("rows of the features_grid column have different shapes")
    n, c, s = len(rows), int(cells[0]), int(segments[0])
    grids = values.reshape(n, c, s, -1)
    for i, row in enumerate(rows):
        out[int(row)] = grids[i]
    return out


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
        elif schema_field.name in ("features_grid", "features_crops"):
            columns[schema_field.name] = grid_to_arrow([r.get(schema_field.name) for r in rows])
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
    """Whole videos as one part file named after their ids (:func:`part_name`), written atomically."""
    table = rows if isinstance(rows, pa.Table) else make_table(rows)
    if table.num_rows == 0:
        return None
    part = uris.join(store, part_name(table.column("video_id").to_pylist()))
    uris.write_bytes_atomic(part, _table_bytes(table.cast(SCHEMA)))
    return part


def part_name(video_ids: Iterable[str]) -> str:
    """``part-<sha256 of the sorted ids>.parquet``: the same videos always get the same name.

    So a retried or repeated commit of a batch overwrites its own file instead of
    writing its videos a second time.
    """
    digest = hashlib.sha256("\0".join(sorted(video_ids)).encode()).hexdigest()[:32]
    return f"part-{digest}.parquet"


def part_files(store: str) -> list[str]:
    """The store's committed part files (scheme-less paths), in name order; empty for a new store."""
    fs, path = uris.filesystem(store)
    if not fs.exists(path):
        return []
    return sorted(fs.glob(f"{path.rstrip('/')}/part-*.parquet"))


def _dataset(store: str) -> pads.Dataset | None:
    """Only ``part-*.parquet`` at the top: anything else a user puts in the folder is not a row."""
    files = part_files(store)
    if not files:
        fs, path = uris.filesystem(store)
        return pads.dataset([], format="parquet", schema=SCHEMA) if fs.exists(path) else None
    filesystem, _ = uris.pyarrow_filesystem(store)
    return pads.dataset(files, format="parquet", filesystem=filesystem, schema=SCHEMA)


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


def iter_batches(
    store: str, columns: list[str], *, split: str | None = None, batch_rows: int = 16
) -> Iterator[pa.RecordBatch]:
    """Rows in record batches of at most ``batch_rows``, for columns too large to read at once
    (``features_grid``); duplicate ``video_id`` rows are not removed here (keep the first seen)."""
    dataset = _dataset(store)
    if dataset is None:
        raise AnomalyError(store, "feature store not found")
    wanted = list(dict.fromkeys(["video_id", *columns]))
    filter_ = pads.field("split") == split if split else None
    yield from dataset.to_batches(columns=wanted, filter=filter_, batch_size=batch_rows)


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

    def frame_truth(self) -> tuple:
        """``(labels, num_frames, intervals, classes)``: what frame-level metrics need besides scores."""
        return self.labels, self.num_frames, self.intervals, self.classes

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


def load_bags(store: str, split: str | None = None, *, features: bool = True) -> Bags:
    """Read the store (or one split) into memory as :class:`Bags`.

    ``features=False`` reads everything but the features (``Bags.features`` is then (N, 32, 0)),
    for callers that stream them in record batches (:func:`iter_batches`).
    """
    columns = BAG_COLUMNS if features else [name for name in BAG_COLUMNS if name != "features"]
    table = read_table(store, columns=columns, split=split)
    if table.num_rows == 0:
        what = f"no '{split}' videos" if split else "no videos"
        raise AnomalyError(store, f"feature store has {what}")
    if features:
        features = features_from_arrow(table.column("features"))
    else:
        features = np.zeros((table.num_rows, NUM_SEGMENTS, 0), dtype=np.float32)
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


@dataclass(frozen=True)
class StoreMetadata:
    """How a store's features were made: the one definition of ``_store.json``.

    Written by extraction, the importer and the synthetic store, checked by
    :func:`ensure_metadata`, copied into every checkpoint by training (as
    :meth:`to_dict`) and read back by scoring and evaluation (with
    :meth:`from_dict`). Unset fields (None) are left out of the file, so a store
    made without a grid, or by the importer, reads the same as before the field
    existed. Keys this version does not know (a newer writer) are kept in
    ``extra``, not dropped.
    """

    backbone: str
    feature_dim: int | None = None
    num_segments: int = NUM_SEGMENTS
    weights_sha256: str | None = None  # sha256 of the backbone's weights, or "random"
    random_weights: bool | None = None
    clip_len: int | None = None
    stride: int | None = None
    crop: tuple[int, int] | None = None
    resize: tuple[int, int] | None = None
    grid: int | None = None  # cells per side, only for grid runs (anomaly.grid)
    crops: int | None = None  # 10 for ten-crop stores (features_crops), unset for one crop
    source: str | None = None  # "extract" | "import" | "synthetic"
    code_version: str = __version__
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``_store.json`` (tuples as lists, unset fields left out)."""
        out: dict[str, Any] = {}
        for item in fields(self):
            if item.name == "extra":
                continue
            value = getattr(self, item.name)
            if value is not None:
                out[item.name] = _as_json(value)
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = METADATA_FILE) -> StoreMetadata:
        """Parse ``_store.json`` (or a checkpoint's copy); ``where`` names it in the error."""
        if not isinstance(data, Mapping) or not isinstance(data.get("backbone"), str):
            raise AnomalyError(where, "store metadata without a backbone name")
        known = {item.name for item in fields(cls)} - {"extra"}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("crop", "resize"):
            if values.get(key) is not None:
                values[key] = tuple(int(v) for v in values[key])
        try:
            return cls(**values, extra={k: v for k, v in data.items() if k not in known})
        except TypeError as exc:
            raise AnomalyError(where, f"not store metadata: {first_line(exc)}") from exc

    def clashes(self, other: StoreMetadata) -> list[str]:
        """``key=store vs this run`` for each setting that must agree and differs (unset in ``other``: no clash).

        ``crops`` is left unset by one-crop runs (so older stores still match), so a run that
        states its features (``feature_dim``) is compared as 1 crop: one-crop rows never enter a
        ten-crop store, nor ten-crop rows a one-crop store.
        """
        out = [
            f"{key}={_as_json(getattr(self, key))!r} (store) vs {_as_json(getattr(other, key))!r} (this run)"
            for key in COMPATIBILITY_KEYS
            if getattr(other, key) is not None and getattr(self, key) != getattr(other, key)
        ]
        if other.crops is None and other.feature_dim is not None and (self.crops or 1) != 1:
            out.append(f"crops={self.crops!r} (store) vs 1 (this run)")
        return out


def _as_json(value: Any) -> Any:
    """Tuples as the lists JSON holds (and errors show, as the file says them)."""
    return list(value) if isinstance(value, tuple) else value


def read_metadata(store: str) -> StoreMetadata | None:
    """The store's :class:`StoreMetadata`, or None for a store not made yet."""
    uri = uris.join(store, METADATA_FILE)
    if not uris.exists(uri):
        return None
    try:
        data = json.loads(uris.read_bytes(uri))
    except ValueError as exc:
        raise AnomalyError(uri, f"not JSON: {first_line(exc)}") from exc
    return StoreMetadata.from_dict(data, where=uri)


def ensure_metadata(store: str, settings: StoreMetadata) -> StoreMetadata:
    """Record how features are made; refuse a store made with incompatible settings.

    ``_store.json`` is created only if absent (an exclusive create: a local
    hard link, ``If-None-Match: *`` on S3), so of two runs that start at once
    on a new store exactly one records its settings and the other is compared
    with them. An existing store's file is written again with its own bytes,
    so a store this process may read but not write is refused here, before
    any work, and not at the first commit.
    """
    uri = uris.join(store, METADATA_FILE)
    existing = read_metadata(store)
    if existing is None:
        if uris.create_bytes(uri, json.dumps(settings.to_dict(), indent=2).encode()):
            return settings
        existing = read_metadata(store)  # another run created it a moment ago
    clashes = existing.clashes(settings)
    if clashes:
        raise AnomalyError(store, "store was made with other settings: " + "; ".join(clashes))
    uris.write_bytes_atomic(uri, uris.read_bytes(uri))  # the write check: same bytes, same meaning
    return existing


def note_kept_clips(store: str) -> None:
    """Say in ``_store.json`` that the clip table is kept (``--keep-clips``), for pooling again later."""
    uri = uris.join(store, METADATA_FILE)
    data = json.loads(uris.read_bytes(uri))
    if data.get("clip_table") != "kept":
        data["clip_table"] = "kept"
        uris.write_bytes_atomic(uri, json.dumps(data, indent=2).encode())


# --- failures -------------------------------------------------------------------------------

_LOG_SCHEMA = pa.schema([*FAILURES_SCHEMA, pa.field("time", pa.float64())])
_CLEARED = "cleared"  # the stage of a log entry that says a URI has since been extracted


def _log_entries(store: str) -> list[dict]:
    fs, path = uris.filesystem(uris.join(store, FAILURES_LOG))
    try:
        files = sorted(fs.glob(f"{path.rstrip('/')}/*.parquet"))
    except FileNotFoundError:
        return []
    if not files:
        return []
    filesystem, _ = uris.pyarrow_filesystem(store)
    table = pads.dataset(files, format="parquet", filesystem=filesystem, schema=_LOG_SCHEMA).to_table()
    return sorted(table.to_pylist(), key=lambda row: row["time"] or 0.0)


def read_failures(store: str) -> pa.Table:
    """One row per URI whose latest record is a failure: the log, over an older store's single file."""
    rows: dict[str, dict] = {}
    uri = uris.join(store, FAILURES_FILE)
    log = _log_entries(store)
    if not log and uris.exists(uri):  # a store from before the log (or only its summary)
        fs, path = uris.pyarrow_filesystem(uri)
        return pq.read_table(path, filesystem=fs).select(FAILURES_SCHEMA.names)
    for row in log:
        if row["stage"] == _CLEARED:
            rows.pop(row["uri"], None)
        else:
            rows[row["uri"]] = {key: row[key] for key in FAILURES_SCHEMA.names}
    return pa.Table.from_pylist(list(rows.values()), schema=FAILURES_SCHEMA)


def _append_log(store: str, rows: Sequence[dict]) -> None:
    """One new, uniquely named log file: concurrent writers never overwrite each other."""
    now = time.time()
    table = pa.Table.from_pylist(
        [{**{key: row.get(key) for key in FAILURES_SCHEMA.names}, "time": now} for row in rows],
        schema=_LOG_SCHEMA,
    )
    name = f"{int(now * 1000):013d}-{uuid.uuid4().hex}.parquet"
    uris.write_bytes_atomic(uris.join(store, FAILURES_LOG, name), _table_bytes(table))


def _write_summary(store: str) -> None:
    """``_failures.parquet``, the log's latest state (a convenience; the log is the truth)."""
    uris.write_bytes_atomic(uris.join(store, FAILURES_FILE), _table_bytes(read_failures(store)))


def _carry_old_summary(store: str) -> None:
    """A store from before the log keeps its failures in the summary only: copy them into the log once."""
    fs, path = uris.filesystem(uris.join(store, FAILURES_LOG))
    if not fs.exists(path) and uris.exists(uris.join(store, FAILURES_FILE)):
        _append_log(store, read_failures(store).to_pylist())


def record_failures(store: str, failures: Sequence[dict], *, summary: bool = True) -> None:
    """Append failures to the log (latest reason per URI wins); the log is never read here.

    ``summary=False`` leaves ``_failures.parquet`` to :func:`write_failure_summary` (a job calls
    it once at its end: rewriting it per write made a long job's failure I/O quadratic).
    """
    if not failures:
        return
    _carry_old_summary(store)
    _append_log(store, failures)
    if summary:
        _write_summary(store)


def clear_failures(store: str, uris_done: Iterable[str], *, summary: bool = True) -> None:
    """Forget failures of videos that have since been extracted (an append, never a read or rewrite).

    A "cleared" entry for a URI that never failed is harmless: readers drop it.
    """
    done = sorted(set(uris_done))
    if not done:
        return
    _carry_old_summary(store)
    _append_log(store, [{"uri": uri, "video_id": "", "reason": "", "stage": _CLEARED} for uri in done])
    if summary:
        _write_summary(store)


def write_failure_summary(store: str) -> None:
    """Rewrite ``_failures.parquet`` from the log (once per job), if there is a log."""
    fs, path = uris.filesystem(uris.join(store, FAILURES_LOG))
    if fs.exists(path):
        _write_summary(store)


# --- the clip table ---------------------------------------------------------------------------


def clips_to_table(columns: dict[str, np.ndarray]) -> pa.Table:
    """Clip rows as numpy columns (``features`` ``(N, D)``) -> a :data:`CLIP_SCHEMA` table."""
    feats = np.ascontiguousarray(columns["features"], dtype=np.float32)
    n = feats.shape[0]
    dim = feats.shape[1] if feats.ndim == 2 else 0
    features = pa.ListArray.from_arrays(
        pa.array(np.arange(n + 1, dtype=np.int32) * dim), pa.array(feats.reshape(-1))
    )
    out = {}
    for schema_field in CLIP_SCHEMA:
        if schema_field.name == "features":
            out["features"] = features
        else:
            out[schema_field.name] = pa.array(columns[schema_field.name], type=schema_field.type)
    return pa.table(out, schema=CLIP_SCHEMA)


def new_clip_run() -> str:
    """The clip-table folder of one run (``_clips/run-<time>-<random>``): no run touches another's files."""
    return f"run-{int(time.time())}-{uuid.uuid4().hex[:8]}"


def write_clip_file(store: str, table: pa.Table, run: str = "") -> str:
    """Write clip rows as one atomic file named after its (video, cell, clip) keys, in ``_clips/RUN``.

    The same clips always get the same name, so a retried task overwrites its
    own file instead of adding a second copy.
    """
    keys = pa.table({k: table.column(k) for k in ("video_id", "cell", "clip_index")})
    digest = hashlib.sha256(_table_bytes(keys)).hexdigest()[:32]
    uri = uris.join(store, CLIPS_DIR, *([run] if run else []), f"part-{digest}.parquet")
    uris.write_bytes_atomic(uri, _table_bytes(table))
    return uri


def clip_files(store: str) -> list[str]:
    """Every clip file of the store, every run's folder included (scheme-less paths)."""
    fs, path = uris.filesystem(uris.join(store, CLIPS_DIR))
    if not fs.exists(path):
        return []
    found = fs.find(path)
    return sorted(f for f in found if f.rsplit("/", 1)[-1].startswith("part-") and f.endswith(".parquet"))


def remove_clip_files(store: str, files: Iterable[str]) -> int:
    """Delete clip files (as :func:`write_clip_file` named them); missing ones are fine. Returns the count."""
    removed = 0
    for uri in files:
        fs, path = uris.filesystem(
            uri if "://" in uri or uris.is_local(store) else uris.in_scheme_of(store, uri)
        )
        try:
            fs.rm_file(path)
            removed += 1
        except FileNotFoundError:
            continue
    return removed


def iter_clip_batches(
    store: str,
    files: Sequence[str],
    video_ids: Iterable[str],
    *,
    columns: Sequence[str] | None = None,
    clip_range: tuple[int, int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Clip rows of ``video_ids`` from ``files`` (scheme-less paths), in record batches (bounded memory)."""
    filesystem, _ = uris.pyarrow_filesystem(store)
    paths = [uris.strip_scheme(path) for path in files]
    dataset = pads.dataset(paths, format="parquet", filesystem=filesystem, schema=CLIP_SCHEMA)
    wanted = pa.array(sorted(set(video_ids)), type=pa.string())
    where = pads.field("video_id").isin(wanted)
    if clip_range is not None:  # clips lo <= clip_index < hi (row groups outside are skipped by statistics)
        where = (
            where & (pads.field("clip_index") >= clip_range[0]) & (pads.field("clip_index") < clip_range[1])
        )
    yield from dataset.to_batches(columns=list(columns) if columns else None, filter=where, batch_size=4096)


def read_clips(store: str, ids: Iterable[str] | None = None, *, cell: int | None = -1) -> pa.Table:
    """The clip table of committed videos (or of ``video_ids``), one row per clip, sorted.

        Rows a retried or killed run wrote twice count once; clips of videos that
        were never committed (a run killed part-way) are left out. ``ids``: only
    these videos. ``cell``: -1 the
        full-frame clips, a grid cell, or None for all.
    """
    files = clip_files(store)
    committed = video_ids(store)
    wanted = committed if ids is None else set(ids) & committed
    if not files or not wanted:
        return CLIP_SCHEMA.empty_table()
    table = pa.Table.from_batches(list(iter_clip_batches(store, files, wanted)), schema=CLIP_SCHEMA)
    if cell is not None:
        table = table.filter(pa.compute.equal(table.column("cell"), cell))
    table = table.sort_by([("video_id", "ascending"), ("cell", "ascending"), ("clip_index", "ascending")])
    keys = list(zip(*(table.column(k).to_pylist() for k in ("video_id", "cell", "clip_index")), strict=True))
    keep = [i for i, key in enumerate(keys) if i == 0 or key != keys[i - 1]]
    return table.take(keep) if len(keep) != table.num_rows else table
