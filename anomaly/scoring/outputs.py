"""What a scoring run writes under ``OUT``, every file atomically.

- ``scores/part-*.parquet``: one row per clip (:data:`SCORES_SCHEMA`), whole videos per part file,
  so a killed run leaves whole videos or nothing and a re-run skips what is there;
- ``alarms.parquet`` and ``alarms.csv``: one row per alarm (:data:`ALARMS_SCHEMA`), sorted by peak;
- ``timelines/VIDEO.png``: the score over time of every video that raised an alarm;
- ``_failures.parquet``: videos that could not be scored, with a one-line reason (the store's format);
- ``_scoring.json``: the checkpoint and settings the scores were made with (a re-run must match).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from anomaly import uris
from anomaly.errors import AnomalyError
from anomaly.scoring.alarms import Alarm, AlarmSettings, find_alarms, sort_by_peak

logger = logging.getLogger(__name__)

SCORES_DIR = "scores"
ALARMS_PARQUET = "alarms.parquet"
ALARMS_CSV = "alarms.csv"
TIMELINES_DIR = "timelines"
SETTINGS_FILE = "_scoring.json"

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
    video_id: str, source_uri: str, times: dict[str, np.ndarray], scores: np.ndarray, *,
    fps: float, num_frames: int, created: datetime | None,
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


def write_scores_part(out: str, tables: list[pa.Table]) -> str | None:
    """Whole videos' clip rows as one new part file (atomic); None when there is nothing to write."""
    if not tables:
        return None
    uri = uris.join(out, SCORES_DIR, f"part-{uuid.uuid4().hex}.parquet")
    uris.write_bytes_atomic(uri, _parquet_bytes(pa.concat_tables(tables)))
    return uri


def read_scores(out: str) -> pa.Table:
    """Every clip row under ``OUT/scores`` (part files only: dot/underscore files are skipped)."""
    folder = uris.join(out, SCORES_DIR)
    if not uris.exists(folder):
        return SCORES_SCHEMA.empty_table()
    fs, path = uris.pyarrow_filesystem(folder)
    dataset = pads.dataset(path, filesystem=fs, format="parquet", schema=SCORES_SCHEMA)
    return dataset.to_table()


def scored_video_ids(out: str) -> set[str]:
    table = read_scores(out)
    return set(table.column("video_id").unique().to_pylist()) if table.num_rows else set()


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
            raise AnomalyError(out, "scored with other settings: " + "; ".join(clashes) + " (use another --out)")
    uris.write_bytes_atomic(uri, json.dumps(settings, indent=2, sort_keys=True).encode())  # also the write check


def alarms_of(table: pa.Table, settings: AlarmSettings) -> list[tuple[Alarm, dict]]:
    """Alarms of every video in a scores table, sorted by peak, each with its wall-clock times."""
    found = []
    for video_id in sorted(set(table.column("video_id").to_pylist())):
        rows = table.filter(pc.equal(table.column("video_id"), video_id)).sort_by("clip_index")
        starts = rows.column("start_time").to_pylist()
        ends = rows.column("end_time").to_pylist()
        uri = rows.column("source_uri")[0].as_py()
        for alarm in find_alarms(
            video_id,
            rows.column("start_s").to_numpy(),
            rows.column("end_s").to_numpy(),
            rows.column("score").to_numpy(),
            settings,
        ):
            found.append(
                (alarm, {"source_uri": uri, "start_time": starts[alarm.first_clip], "end_time": ends[alarm.last_clip]})
            )
    order = {id(a): i for i, a in enumerate(sort_by_peak([a for a, _ in found]))}
    return sorted(found, key=lambda pair: order[id(pair[0])])


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


def write_timelines(out: str, table: pa.Table, alarms: list[tuple[Alarm, dict]], threshold: float) -> list[str]:
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
