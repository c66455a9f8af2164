"""What a scoring run writes under ``OUT``, every file atomically.

- ``scores/part-*.parquet``: one row per clip (:data:`SCORES_SCHEMA`), whole videos per part file,
  so a killed run leaves whole videos or nothing and a re-run skips what is there; each part's
  Parquet key-value metadata (:data:`INDEX_KEY`) lists its videos, clip counts and alarms, so
  resuming and rebuilding ``alarms.*`` read part footers, not scores;
- ``alarms.parquet`` and ``alarms.csv``: one row per alarm (:data:`ALARMS_SCHEMA`), sorted by peak;
- ``timelines/VIDEO.png``: the score over time of every video that raised an alarm;
- ``_failures.parquet``: videos that could not be scored, with a one-line reason (the store's format);
- ``_scoring.json``: the checkpoint and settings the scores were made with (a re-run must match).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from anomaly import store as feature_store
from anomaly import uris
from anomaly.alarms import Alarm, AlarmSettings, find_alarms, sort_by_peak
from anomaly.errors import AnomalyError

logger = logging.getLogger(__name__)

SCORES_DIR = "scores"
ALARMS_PARQUET = "alarms.parquet"
ALARMS_CSV = "alarms.csv"
TIMELINES_DIR = "timelines"
SETTINGS_FILE = "_scoring.json"
INDEX_KEY = "anomaly.scoring.index"  # a scores part's key-value metadata: its videos and their alarms

_TIME = pa.timestamp("ms", tz="UTC")
SCORES_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("clip_index", pa.int64(), nullable=False),
        pa.field("first_frame", pa.int64(), nullable=False),
        pa.field("last_frame", pa.int64(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("start_time", _TIME),  # wall clock, null when the container states no creation time
        pa.field("end_time", _TIME),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("num_frames", pa.int64(), nullable=False),
    ]
)
ALARMS_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string()),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("start_time", _TIME),
        pa.field("end_time", _TIME),
        pa.field("peak_score", pa.float64(), nullable=False),
        pa.field("mean_score", pa.float64(), nullable=False),
    ]
)


def parse_creation_time(text: str | None) -> datetime | None:
    """A container's ``creation_time`` tag (ISO 8601, FFmpeg writes ``…Z``) as an aware UTC datetime."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:  # FFmpeg tags are UTC
        value = value.replace(tzinfo=timezone.utc)
    return value


def video_rows(
    video_id: str,
    source_uri: str,
    times: dict[str, np.ndarray],
    scores: np.ndarray,
    *,
    fps: float,
    num_frames: int,
    created: datetime | None,
) -> pa.Table:
    """The clip rows of one scored video."""
    n = len(scores)
    wall = (
        [created + timedelta(seconds=float(s)) for s in times[key]] if created else [None] * n
        for key in ("start_s", "end_s")
    )
    start_time, end_time = wall
    return pa.table(
        {
            "video_id": [video_id] * n,
            "source_uri": [source_uri] * n,
            "clip_index": np.arange(n, dtype=np.int64),
            "first_frame": times["first_frame"],
            "last_frame": times["last_frame"],
            "start_s": times["start_s"],
            "end_s": times["end_s"],
            "start_time": pa.array(start_time, type=_TIME),
            "end_time": pa.array(end_time, type=_TIME),
            "score": np.asarray(scores, dtype=np.float32),
            "fps": np.full(n, float(fps)),
            "num_frames": np.full(n, int(num_frames), dtype=np.int64),
        },
        schema=SCORES_SCHEMA,
    )


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _part_name(tables: list[pa.Table]) -> str:
    """A part file named after its video ids: a retried task overwrites its own file."""
    ids = sorted({v for table in tables for v in table.column("video_id").unique().to_pylist()})
    return f"part-{hashlib.sha256(chr(10).join(ids).encode()).hexdigest()[:32]}.parquet"


def write_scores_part(
    out: str,
    tables: list[pa.Table],
    *,
    index: list[dict] | None = None,
    alarm_settings: AlarmSettings | None = None,
) -> str | None:
    """Whole videos' clip rows as one part file (atomic); None when there is nothing to write.

    ``index``: per video ``{"video_id", "source_uri", "num_clips", "alarms"}`` (alarm records made with
    ``alarm_settings``), kept in the file's Parquet key-value metadata so that resuming and rebuilding
    ``alarms.*`` read footers, never scores.
    """
    if not tables:
        return None
    table = pa.concat_tables(tables)
    if index is not None:
        record = {"alarm_settings": asdict(alarm_settings or AlarmSettings()), "videos": index}
        table = table.replace_schema_metadata({INDEX_KEY: json.dumps(record, sort_keys=True)})
    uri = uris.join(out, SCORES_DIR, _part_name(tables))
    uris.write_bytes_atomic(uri, _parquet_bytes(table))
    return uri


def score_parts(out: str) -> list[str]:
    """Scheme-less paths of the part files under ``OUT/scores`` (temporary dot files are not parts).

    Listed as a feature store lists its own parts: one listing for both folders of ``part-*.parquet``.
    """
    return feature_store.part_files(uris.join(out, SCORES_DIR))


def _part_index(out: str, part: str) -> dict | None:
    fs, _ = uris.pyarrow_filesystem(out)
    meta = pq.read_metadata(part, filesystem=fs).metadata or {}
    text = meta.get(INDEX_KEY.encode())
    return json.loads(text) if text else None


def read_index(out: str) -> list[tuple[str, dict | None]]:
    """``(part, its index or None)`` for every scores part: footers only, a few at a time (object stores)."""
    parts = score_parts(out)
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(zip(parts, pool.map(lambda part: _part_index(out, part), parts), strict=True))


def read_scores_part(out: str, part: str) -> pa.Table:
    fs, _ = uris.pyarrow_filesystem(out)
    return pq.read_table(part, filesystem=fs, schema=SCORES_SCHEMA).replace_schema_metadata(None)


def read_scores(out: str, video_ids: list[str] | None = None) -> pa.Table:
    """Clip rows under ``OUT/scores`` (all, or of ``video_ids``), part files only (for users and tests)."""
    parts = score_parts(out)
    if not parts:
        return SCORES_SCHEMA.empty_table()
    fs, _ = uris.pyarrow_filesystem(out)
    dataset = pads.dataset(parts, filesystem=fs, format="parquet", schema=SCORES_SCHEMA)
    wanted = None if video_ids is None else pads.field("video_id").isin(pa.array(video_ids, type=pa.string()))
    return dataset.to_table(filter=wanted).replace_schema_metadata(None)


def scored_video_ids(out: str) -> set[str]:
    """Ids in ``OUT/scores`` from the part files' indexes (a part written without one: its id column)."""
    found: set[str] = set()
    for part, index in read_index(out):
        if index is None:
            found.update(read_scores_part(out, part).column("video_id").unique().to_pylist())
        else:
            found.update(video["video_id"] for video in index["videos"])
    return found


def ensure_settings(out: str, settings: dict) -> None:
    """Record what the scores mean; refuse to add to an ``OUT`` made with another model or settings."""
    uri = uris.join(out, SETTINGS_FILE)
    if uris.exists(uri):
        existing = json.loads(uris.read_bytes(uri))
        clashes = [
            f"{key}={existing.get(key)!r} (OUT) vs {value!r} (this run)"
            for key, value in settings.items()
            if existing.get(key) != value
        ]
        if clashes:
            raise AnomalyError(
                out, "scored with other settings: " + "; ".join(clashes) + " (use another `out`)"
            )
    uris.write_bytes_atomic(
        uri, json.dumps(settings, indent=2, sort_keys=True).encode()
    )  # also the write check


def video_alarms(video_id: str, rows: pa.Table, settings: AlarmSettings) -> list[tuple[Alarm, dict]]:
    """Alarms of one video from its clip rows (sorted by ``clip_index``), each with its wall-clock times."""
    starts = rows.column("start_time").to_pylist()
    ends = rows.column("end_time").to_pylist()
    uri = rows.column("source_uri")[0].as_py()
    return [
        (
            alarm,
            {"source_uri": uri, "start_time": starts[alarm.first_clip], "end_time": ends[alarm.last_clip]},
        )
        for alarm in find_alarms(
            video_id,
            rows.column("start_s").to_numpy(),
            rows.column("end_s").to_numpy(),
            rows.column("score").to_numpy(),
            settings,
        )
    ]


def by_peak(found: list[tuple[Alarm, dict]]) -> list[tuple[Alarm, dict]]:
    """``(alarm, extra)`` pairs in :func:`~anomaly.alarms.sort_by_peak`'s order."""
    order = {id(a): i for i, a in enumerate(sort_by_peak([a for a, _ in found]))}
    return sorted(found, key=lambda pair: order[id(pair[0])])


def alarms_of(table: pa.Table, settings: AlarmSettings) -> list[tuple[Alarm, dict]]:
    """Alarms of every video in a scores table, sorted by peak, each with its wall-clock times."""
    found = []
    for video_id in sorted(set(table.column("video_id").to_pylist())):
        rows = table.filter(pc.equal(table.column("video_id"), video_id)).sort_by("clip_index")
        found.extend(video_alarms(video_id, rows, settings))
    return by_peak(found)


def alarm_record(alarm: Alarm, extra: dict) -> dict:
    """One alarm as a JSON-able dict (what a scores part's index keeps); :func:`from_records` inverts it."""
    wall = {key: extra[key].isoformat() if extra.get(key) else None for key in ("start_time", "end_time")}
    return {**alarm.to_dict(), "source_uri": extra["source_uri"], **wall}


def from_records(records: list[dict]) -> list[tuple[Alarm, dict]]:
    """Alarm records (from part indexes or scoring tasks) -> ``(alarm, extra)`` pairs sorted by peak."""
    fields = set(Alarm.__dataclass_fields__)
    found = [
        (
            Alarm(**{k: v for k, v in record.items() if k in fields}),
            {
                "source_uri": record["source_uri"],
                **{
                    k: datetime.fromisoformat(record[k]) if record[k] else None
                    for k in ("start_time", "end_time")
                },
            },
        )
        for record in records
    ]
    return by_peak(found)


def read_alarms(out: str) -> pa.Table:
    fs, path = uris.pyarrow_filesystem(uris.join(out, ALARMS_PARQUET))
    return pq.read_table(path, filesystem=fs)


def write_alarms(out: str, alarms: list[tuple[Alarm, dict]]) -> dict[str, str]:
    """``alarms.parquet`` and ``alarms.csv`` (same rows, same order)."""
    rows = [
        {
            "video_id": a.video_id,
            "source_uri": extra["source_uri"],
            "start_s": a.start_s,
            "end_s": a.end_s,
            "duration_s": a.duration_s,
            "start_time": extra["start_time"],
            "end_time": extra["end_time"],
            "peak_score": a.peak_score,
            "mean_score": a.mean_score,
        }
        for a, extra in alarms
    ]
    table = pa.Table.from_pylist(rows, schema=ALARMS_SCHEMA)
    parquet_uri = uris.join(out, ALARMS_PARQUET)
    uris.write_bytes_atomic(parquet_uri, _parquet_bytes(table))
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(ALARMS_SCHEMA.names)
    for row in rows:
        writer.writerow(
            [
                row["video_id"],
                row["source_uri"],
                f"{row['start_s']:.3f}",
                f"{row['end_s']:.3f}",
                f"{row['duration_s']:.3f}",
                row["start_time"].isoformat() if row["start_time"] else "",
                row["end_time"].isoformat() if row["end_time"] else "",
                f"{row['peak_score']:.4f}",
                f"{row['mean_score']:.4f}",
            ]
        )
    csv_uri = uris.join(out, ALARMS_CSV)
    uris.write_bytes_atomic(csv_uri, text.getvalue().encode())
    return {"alarms": parquet_uri, "alarms_csv": csv_uri}


def write_timelines(
    out: str, table: pa.Table, alarms: list[tuple[Alarm, dict]], threshold: float
) -> list[str]:
    """``timelines/VIDEO.png`` for every video with an alarm: clip scores over time, alarms shaded."""
    from anomaly.scoring.plots import clip_timeline_plot

    written = []
    for video_id in sorted({a.video_id for a, _ in alarms}):
        rows = table.filter(pc.equal(table.column("video_id"), video_id)).sort_by("clip_index")
        spans = [(a.start_s, a.end_s) for a, _ in alarms if a.video_id == video_id]
        written.append(
            clip_timeline_plot(
                rows.column("start_s").to_numpy(),
                rows.column("end_s").to_numpy(),
                rows.column("score").to_numpy(),
                spans,
                uris.join(out, TIMELINES_DIR, f"{video_id}.png"),
                title=f"{video_id}: anomaly score per clip",
                threshold=threshold,
            )
        )
    return written
