"""The scoring task: complete videos' clip rows -> the trained head -> one scores part, alarms, timelines.

:func:`score_videos_task` is what :mod:`anomaly.scoring.pipeline` launches (a Ray
task) for every ``flush_every`` complete videos, in the place where extraction
launches :func:`anomaly.extraction.commit.commit_videos`. It runs on a worker:

1. reads the videos' clip rows back from the clip table files the driver's
   :class:`~anomaly.extraction.commit.VideoTracker` named (record batches; a
   clip written twice by a retried task counts once);
2. scores every clip with the head (:func:`anomaly.scoring.windows.score_clips`:
   the clip-window rule, context for sequence heads) and finds the alarms
   (:func:`anomaly.alarms.find_alarms`, through :func:`outputs.video_alarms`);
3. writes the timelines of videos with alarms, then the batch's clip scores as
   one atomic ``OUT/scores`` part file named after its video ids (a retried task
   overwrites its own file) whose Parquet key-value metadata holds the batch's
   alarm records: the part file is the commit of both, so a killed job leaves
   scores and their alarms together or neither;
4. returns small rows only: per video its id, clip count and alarms.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anomaly import store as feature_store
from anomaly import uris
from anomaly.alarms import AlarmSettings
from anomaly.crops import score_clip_crops
from anomaly.scoring import outputs
from anomaly.scoring.windows import clip_times, score_clips, window_clips

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreRules:
    """What the task needs besides the model: clip geometry, the window, context, the alarm rule."""

    clip_len: int
    stride: int
    dim: int
    window_seconds: float
    window_clips: int | None
    context: int
    fps_default: float | None
    alarms: AlarmSettings
    crops: int = 1  # ten-crop features: (clips, crops * dim) in the clip table (anomaly.crops)
    crop_scores: bool = True  # average the crops' scores (crops: bags), else score their mean

    def window(self, fps: float) -> int:
        if self.window_clips:
            return int(self.window_clips)
        return window_clips(self.window_seconds, fps, self.stride)


def creation_time(uri: str) -> str:
    """The container's ``creation_time`` tag (ISO 8601), '' when absent or unreadable (then no wall clock)."""
    import av

    try:
        fs, path = uris.filesystem(uri)
        if fs.isdir(path):
            return ""
        with fs.open(path, "rb", block_size=256 * 1024) as handle, av.open(handle, mode="r") as container:
            tags = dict(container.metadata or {})
            if not tags.get("creation_time") and container.streams.video:
                tags = dict(container.streams.video[0].metadata or {})
            return str(tags.get("creation_time") or "")
    except Exception:  # noqa: BLE001 - a missing tag must never fail a video; decode reports real problems
        return ""


def read_clip_features(
    out: str, videos: Sequence[dict], dim: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``id -> ((clips, D) features, seen mask)`` of the full-frame clips of ``videos`` from the clip table."""
    gathered = {
        video["video_id"]: (
            np.zeros((video["num_clips"], dim), np.float32),
            np.zeros(video["num_clips"], bool),
        )
        for video in videos
    }
    files = sorted({path for video in videos for path in video["files"]})
    columns = ["video_id", "cell", "clip_index", "features"]
    for batch in feature_store.iter_clip_batches(out, files, list(gathered), columns=columns):
        vids = np.asarray(batch.column("video_id").to_pylist(), dtype=object)
        cells = batch.column("cell").to_numpy()
        index = batch.column("clip_index").to_numpy()
        flat = batch.column("features").flatten().to_numpy(zero_copy_only=False)
        feats = flat.reshape(len(batch), -1) if len(batch) else flat.reshape(0, dim)
        for video_id in set(vids.tolist()):
            features, seen = gathered[video_id]
            rows = np.flatnonzero((vids == video_id) & (cells == -1))
            rows = rows[(index[rows] >= 0) & (index[rows] < len(seen))]
            features[index[rows]] = feats[rows]  # a duplicate clip overwrites with the same features
            seen[index[rows]] = True
    return gathered


def score_videos_task(out: str, videos: Sequence[dict], model, rules: ScoreRules) -> dict:
    """Score complete videos from the clip table; write one scores part (alarms in its metadata).

    ``videos``: per video ``{"video_id", "uri", "num_clips", "num_frames", "fps",
    "files"}`` (from the driver's tracker). Returns ``{"part": uri or None,
    "videos": [{"video_id", "source_uri", "num_clips", "alarms"}], "failed":
    [(id, uri, reason)], "timelines": [uri]}``, where ``alarms`` are :func:`outputs.alarm_record` dicts.
    Runs as a Ray task (or in-process).
    """
    import torch

    torch.set_num_threads(1)  # a zero-CPU task next to decode tasks and actors: do not oversubscribe
    gathered = read_clip_features(out, videos, rules.dim * rules.crops)
    tables, index, failed, timelines = [], [], [], []
    for video in videos:
        video_id, uri = video["video_id"], video["uri"]
        features, seen = gathered[video_id]
        if seen.size == 0:
            failed.append((video_id, uri, "no clips: the video has no decodable frames"))
            continue
        if not seen.all():
            failed.append(
                (video_id, uri, f"incomplete: {int(seen.sum())} of {seen.size} clips in the clip table")
            )
            continue
        fps = video["fps"] if np.isfinite(video["fps"]) and video["fps"] > 0 else (rules.fps_default or 0.0)
        if rules.crops > 1:
            features = features.reshape(len(features), rules.crops, rules.dim)
        scores = score_clip_crops(
            score_clips,
            model,
            features,
            rules.window(fps),
            context=rules.context,
            crop_scores=rules.crop_scores,
        )
        times = clip_times(seen.size, video["num_frames"], rules.clip_len, rules.stride, fps)
        created = outputs.parse_creation_time(creation_time(uri))
        table = outputs.video_rows(
            video_id, uri, times, scores, fps=fps, num_frames=video["num_frames"], created=created
        )
        alarms = outputs.video_alarms(video_id, table, rules.alarms)  # clip rows in clip order
        records = [outputs.alarm_record(alarm, extra) for alarm, extra in alarms]
        tables.append(table)
        index.append(
            {"video_id": video_id, "source_uri": uri, "num_clips": int(seen.size), "alarms": records}
        )
        if alarms:
            timelines.append((table, alarms))
    drawn = []
    for table, alarms in timelines:  # before the part file: a committed video has its timeline
        drawn.extend(outputs.write_timelines(out, table, alarms, rules.alarms.threshold))
    part = outputs.write_scores_part(out, tables, index=index, alarm_settings=rules.alarms)
    return {"part": part, "videos": index, "failed": failed, "timelines": drawn}


def realarm_part(out: str, part: str, settings: AlarmSettings) -> list[dict]:
    """Alarms of one scores part under other alarm settings than it was written with (and their timelines).

    For an ``OUT`` first scored with another ``--threshold``/``--min-duration``/``--merge-gap``, or
    written before part files carried their alarms. Runs as a Ray task: it reads that part's scores.
    """
    table = outputs.read_scores_part(out, part)
    alarms = outputs.alarms_of(table, settings)
    outputs.write_timelines(out, table, alarms, settings.threshold)
    return [outputs.alarm_record(alarm, extra) for alarm, extra in alarms]
