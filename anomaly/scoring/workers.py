"""The scoring task: complete videos' clip rows -> the trained head -> one scores part, alarms, timelines.

:func:`score_videos_task` is what :mod:`anomaly.scoring.pipeline` launches (a Ray
task) for every ``flush_every`` complete videos, in the place where extraction
launches :func:`anomaly.extraction.commit.commit_videos`. It runs on a worker:

1. reads each video's clip rows back from the clip table files the driver's
   :class:`~anomaly.extraction.commit.VideoTracker` named, ``SCORE_CHUNK`` clips
   (plus the windows around them) at a time, so memory is bounded by the window
   and the chunk, not by the recording's length (a clip written twice by a
   retried task counts once);
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
from anomaly.crops import score_crops
from anomaly.scoring import outputs
from anomaly.scoring.windows import clip_times, halo_clips, score_clip_range, window_clips

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreRules:
    """What the task needs besides the model: clip geometry, the window, context, the alarm rule.

    The worker-side slice of a :class:`~anomaly.scoring.job.ScoringJob`, made only by
    :meth:`ScoringJob.rules <anomaly.scoring.job.ScoringJob.rules>` (both entry points).
    """

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


# Clips scored per read of the clip table: a task holds (SCORE_CHUNK + 2 halos) x D features of one
# video at a time, whatever the recording's length (a 24-h C3D recording is ~160,000 clips x 4096).
SCORE_CHUNK = 4096


def read_clip_range(out: str, video: dict, dim: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """``((hi - lo, D) features, seen mask)`` of the full-frame clips ``lo .. hi`` of one video."""
    features = np.zeros((hi - lo, dim), np.float32)
    seen = np.zeros(hi - lo, bool)
    columns = ["cell", "clip_index", "features"]
    for batch in feature_store.iter_clip_batches(
        out, video["files"], [video["video_id"]], columns=columns, clip_range=(lo, hi)
    ):
        cells = batch.column("cell").to_numpy()
        index = batch.column("clip_index").to_numpy()
        flat = batch.column("features").flatten().to_numpy(zero_copy_only=False)
        feats = flat.reshape(len(batch), -1) if len(batch) else flat.reshape(0, dim)
        rows = np.flatnonzero((cells == -1) & (index >= lo) & (index < hi))
        features[index[rows] - lo] = feats[rows]  # a duplicate clip overwrites with the same features
        seen[index[rows] - lo] = True
    return features, seen


def score_video(out: str, video: dict, model, rules: ScoreRules, fps: float) -> tuple[np.ndarray, int]:
    """``(scores, clips found)`` of one video, read and scored ``SCORE_CHUNK`` clips at a time."""
    n = int(video["num_clips"])
    window = rules.window(fps)
    halo = halo_clips(window, n, rules.context)
    scores = np.zeros(n, np.float32)
    found = 0
    for start in range(0, n, SCORE_CHUNK):
        end = min(n, start + SCORE_CHUNK)
        lo, hi = max(0, start - halo), min(n, end + halo)
        features, seen = read_clip_range(out, video, rules.dim * rules.crops, lo, hi)
        found += int(seen[start - lo : end - lo].sum())
        if not seen.all():
            continue  # incomplete: counted, not scored
        scores[start:end] = score_range(
            model, features, rules, lo=lo, n=n, window=window, start=start, end=end
        )
    return scores, found


def score_range(
    model, features: np.ndarray, rules: ScoreRules, *, lo: int, n: int, window: int, start: int, end: int
) -> np.ndarray:
    """The scoring rule, the one both entry points run: scores of clips ``start .. end`` of an ``n``-clip video.

    ``features``: clips ``lo .. lo + len(features)``, reaching the window's halo
    (:func:`~anomaly.scoring.windows.halo_clips`); ten-crop features are ``(clips, crops * D)`` or
    ``(clips, crops, D)``, each crop scored as its own sequence (:func:`anomaly.crops.score_crops`).
    """
    if rules.crops > 1:
        features = features.reshape(len(features), rules.crops, rules.dim)
    return score_crops(
        lambda f: score_clip_range(
            model, f, lo=lo, n=n, window=window, start=start, end=end, context=rules.context
        ),
        features,
        crop_scores=rules.crop_scores,
    )


def score_videos_task(out: str, videos: Sequence[dict], model, rules: ScoreRules) -> dict:
    """Score complete videos from the clip table; write one scores part (alarms in its metadata).

    ``videos``: per video ``{"video_id", "uri", "num_clips", "num_frames", "fps",
    "files"}`` (from the driver's tracker). Returns ``{"part": uri or None,
    "videos": [{"video_id", "source_uri", "num_clips", "alarms"}], "failed":
    [(id, uri, reason)], "timelines": [uri]}``, where ``alarms`` are :func:`outputs.alarm_record` dicts.
    Runs as a Ray task (or in-process). Memory: one video's scores and ``SCORE_CHUNK`` clips' features.
    """
    import torch

    torch.set_num_threads(1)  # a task with a share of a CPU next to decode tasks and actors
    tables, index, failed, timelines = [], [], [], []
    for video in videos:
        video_id, uri, n = video["video_id"], video["uri"], int(video["num_clips"])
        if n == 0:
            failed.append((video_id, uri, "no clips: the video has no decodable frames"))
            continue
        fps = video["fps"] if np.isfinite(video["fps"]) and video["fps"] > 0 else (rules.fps_default or 0.0)
        scores, found = score_video(out, video, model, rules, fps)
        if found < n:
            failed.append((video_id, uri, f"incomplete: {found} of {n} clips in the clip table"))
            continue
        times = clip_times(n, video["num_frames"], rules.clip_len, rules.stride, fps)
        created = outputs.parse_creation_time(creation_time(uri))
        table = outputs.video_rows(
            video_id, uri, times, scores, fps=fps, num_frames=video["num_frames"], created=created
        )
        alarms = outputs.video_alarms(video_id, table, rules.alarms)  # clip rows in clip order
        records = [outputs.alarm_record(alarm, extra) for alarm, extra in alarms]
        tables.append(table)
        index.append({"video_id": video_id, "source_uri": uri, "num_clips": n, "alarms": records})
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
