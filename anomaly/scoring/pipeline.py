"""Score many recordings on Ray Data: extraction's listing, ids, decode and model actors, then clip scores.

Pipeline::

    anomaly.extraction.build_dataset(todo, settings, spec)   decode tasks -> backbone actors (features per clip)
      -> iter_batches() in the driver                         fold each video's clip features, in any order
      -> a video complete: anomaly.scoring.windows.score_clips (the trained head), its alarms
      -> every ``flush_every`` videos: one atomic OUT/scores part file

Everything that makes extraction reliable is extraction's own code here: the
listing and ids (:func:`anomaly.extraction.list_videos`, :func:`~anomaly.extraction.sanity_check`),
the decode stage that never raises and holds back a video's last clip until
it decoded cleanly, the actor pool, and the failures table format. A video is
scored only when all of its clips are in; one whose decoding fails, or that
ends short, is recorded in ``OUT/_failures.parquet`` with its reason and the
rest go on. A re-run skips videos already in ``OUT/scores`` (resume) and
rebuilds ``alarms.*`` and the timelines from all scores, so a killed and
resumed job writes the same outputs as an uninterrupted one.

Why the head runs in the driver, next to the fold, and not in the actors:
a clip's score needs the features of its neighbours (a window about one
training segment long, more for context heads), and those arrive in other
batches from other actors. The driver already gathers each video's clips (as
extraction's fold does); the head is a few hundred thousand multiply-adds per
clip against billions for the backbone on the workers (measured in
``benchmarks/score.py``). Memory: one ``(clips, D)`` float32 array per video
in flight (an hour at 25 fps, 16-frame clips, 512-d: 12 MB).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from anomaly import store as feature_store
from anomaly import uris
from anomaly.checkpoints import MODEL_FILE, load_scorer, stored_metadata
from anomaly.errors import AnomalyError
from anomaly.extraction import ExtractionSettings, _weights_tag, build_dataset, list_videos, sanity_check
from anomaly.scoring import outputs
from anomaly.scoring.alarms import AlarmSettings, find_alarms
from anomaly.scoring.single import check_feature_dim, check_weights
from anomaly.scoring.windows import (
    DEFAULT_WINDOW_SECONDS,
    clip_times,
    context_segments,
    score_clips,
    window_clips,
)
from anomaly.store import StoreMetadata

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringJob:
    """What to score with: the checkpoint, decode/actor settings (extraction's), window and alarm rules."""

    checkpoint: str
    extraction: ExtractionSettings
    alarms: AlarmSettings = AlarmSettings()
    window_seconds: float = DEFAULT_WINDOW_SECONDS  # about one training segment (anomaly.scoring.windows)
    window_clips: int | None = None
    annotated_videos: bool = False


@dataclass
class ScoringReport:
    out: str
    scored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    num_clips: int = 0
    num_alarms: int = 0  # over all videos in OUT, this run's and earlier runs'
    seconds: float = 0.0
    written: dict[str, str] = field(default_factory=dict)

    @property
    def all_failed(self) -> bool:
        return bool(self.failed) and not self.scored and not self.skipped

    @property
    def clips_per_second(self) -> float:
        return self.num_clips / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"{len(self.scored)} scored ({self.num_clips} clips, {self.clips_per_second:.1f} clips/s), "
            f"{len(self.skipped)} skipped as done, {len(self.failed)} failed — {self.num_alarms} alarms in "
            f"{uris.join(self.out, outputs.ALARMS_CSV)}"
        )


def extraction_settings(payload: dict, **overrides) -> ExtractionSettings:
    """Extraction settings that reproduce the training store's features, overridden by the user's."""
    meta = stored_metadata(payload) or StoreMetadata(backbone="")
    backbone = overrides.pop("backbone", None) or meta.backbone
    if not backbone or backbone in ("synthetic", "imported"):
        raise AnomalyError("--backbone", "the checkpoint does not record an extractor backbone; pass --backbone")
    values = {
        "clip_len": meta.clip_len,
        "stride": meta.stride,
        "crop": meta.crop,
        **{key: value for key, value in overrides.items() if value is not None},
    }
    expected = meta.weights_sha256
    if values.get("weights") in (None, "none") and expected not in (None, "random"):
        raise AnomalyError(
            "--weights", f"the model was trained on features of weights sha256 {expected[:12]}…; pass them"
        )
    return ExtractionSettings(backbone=backbone, **values)


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


def _video_ids(videos: str | Sequence[str]) -> tuple[dict[str, str], list[dict]]:
    """Ids by extraction's rule: relative paths under a listed folder once extraction provides
    ``resolve_ids`` (issue 12: cameras with the same file names), file stems before that."""
    try:
        from anomaly.extraction import resolve_ids
    except ImportError:
        return sanity_check(list_videos(videos))
    return resolve_ids(videos)


def _creation_times(todo: dict[str, str]) -> dict[str, str]:
    """Header reads of every video, a few at a time (object stores: latency-bound, not bandwidth)."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        return dict(zip(todo, pool.map(creation_time, todo.values()), strict=True))


@dataclass
class _Video:
    uri: str
    num_clips: int
    num_frames: int
    fps: float
    features: np.ndarray
    seen: np.ndarray

    @property
    def complete(self) -> bool:
        return bool(self.seen.all())


class ClipScorer:
    """Driver side: gather each video's clip features, score it when complete, flush whole videos."""

    def __init__(self, out, job, model, payload, spec, stride, todo, created, report, started) -> None:
        self.out, self.job, self.model, self.payload = out, job, model, payload
        self.spec, self.stride, self.todo, self.created = spec, stride, todo, created
        self.report, self.started = report, started
        self.context = context_segments(payload, model)
        self.in_flight: dict[str, _Video] = {}
        self.finished: set[str] = set()
        self.buffer: list = []
        self.buffered_uris: list[str] = []
        self.new_failures: list[dict] = []
        self.alarms_so_far = 0

    def window(self, fps: float) -> int:
        if self.job.window_clips:
            return int(self.job.window_clips)
        return window_clips(self.job.window_seconds, fps, self.stride)

    def consume(self, batch: dict[str, np.ndarray]) -> None:
        ids = np.asarray(batch["video_id"])
        errors = np.asarray(batch["error"])
        for video_id in np.unique(ids):
            video_id = str(video_id)
            if video_id in self.finished:
                continue
            rows = np.flatnonzero(ids == video_id)
            failed = [str(e) for e in errors[rows] if e]
            if failed:
                self.fail(video_id, failed[0], "decode")
                continue
            first = rows[0]
            video = self.in_flight.get(video_id)
            if video is None:
                num_clips = int(batch["num_clips"][first])
                video = self.in_flight[video_id] = _Video(
                    uri=str(batch["uri"][first]),
                    num_clips=num_clips,
                    num_frames=int(batch["num_frames"][first]),
                    fps=float(batch["fps"][first]),
                    features=np.zeros((num_clips, self.spec.feature_dim), dtype=np.float32),
                    seen=np.zeros(num_clips, dtype=bool),
                )
            index = np.asarray(batch["clip_index"])[rows]
            if index.min() < 0 or index.max() >= video.num_clips:
                self.fail(video_id, f"clip index out of range 0..{video.num_clips - 1}", "group")
                continue
            video.features[index] = np.asarray(batch["features"])[rows]
            video.seen[index] = True  # a retried task's duplicate clip overwrites with the same features
            if video.complete:
                self.commit(video_id, self.in_flight.pop(video_id))

    def commit(self, video_id: str, video: _Video) -> None:
        fps = video.fps if np.isfinite(video.fps) and video.fps > 0 else (self.job.extraction.fps or 0.0)
        scores = score_clips(self.model, video.features, self.window(fps), context=self.context)
        times = clip_times(video.num_clips, video.num_frames, self.spec.clip_len, self.stride, fps)
        alarms = find_alarms(video_id, times["start_s"], times["end_s"], scores, self.job.alarms)
        table = outputs.video_rows(
            video_id,
            video.uri,
            times,
            scores,
            fps=fps,
            num_frames=video.num_frames,
            created=outputs.parse_creation_time(self.created.get(video_id)),
        )
        self.buffer.append(table)
        self.buffered_uris.append(video.uri)
        self.finished.add(video_id)
        self.report.scored.append(video_id)
        self.report.num_clips += video.num_clips
        self.alarms_so_far += len(alarms)
        elapsed = time.monotonic() - self.started
        logger.info(
            "[%d/%d] %s: %d clips, %d alarms; %.1f clips/s, %d alarms so far",
            len(self.finished),
            len(self.todo),
            video_id,
            video.num_clips,
            len(alarms),
            self.report.num_clips / max(elapsed, 1e-9),
            self.alarms_so_far,
        )
        if len(self.buffer) >= self.job.extraction.flush_every:
            self.flush()

    def fail(self, video_id: str, reason: str, stage: str) -> None:
        self.in_flight.pop(video_id, None)
        self.finished.add(video_id)
        failure = {"uri": self.todo.get(video_id, ""), "video_id": video_id, "reason": reason, "stage": stage}
        self.new_failures.append(failure)
        self.report.failed.append(failure)
        logger.warning("[%d/%d] %s failed (%s): %s", len(self.finished), len(self.todo), failure["uri"], stage, reason)

    def finish(self) -> None:
        for video_id, video in list(self.in_flight.items()):
            self.fail(video_id, f"incomplete: {int(video.seen.sum())} of {video.num_clips} clips", "group")
        for video_id in self.todo:
            if video_id not in self.finished:
                self.fail(video_id, "no output from the decode stage", "group")

    def flush(self) -> None:
        if self.buffer:
            part = outputs.write_scores_part(self.out, self.buffer)
            feature_store.clear_failures(self.out, self.buffered_uris)
            logger.info("committed %d videos to %s", len(self.buffer), part)
            self.buffer, self.buffered_uris = [], []
        if self.new_failures:
            feature_store.record_failures(self.out, self.new_failures)
            self.new_failures = []


def scoring_settings_record(checkpoint_sha: str, settings: ExtractionSettings, spec, job: ScoringJob, weights: str) -> dict:
    """What ``OUT/_scoring.json`` pins: scores of one OUT are comparable (same model, features, window)."""
    return {
        "checkpoint_sha256": checkpoint_sha,
        "backbone": settings.backbone,
        "weights_sha256": weights,
        "clip_len": spec.clip_len,
        "stride": settings.effective_stride(spec),
        "crop": list(spec.crop),
        "window_seconds": job.window_seconds,
        "window_clips": job.window_clips,
    }


def _checkpoint_sha(checkpoint: str) -> str:
    import hashlib

    target = checkpoint if checkpoint.endswith(".pt") else uris.join(checkpoint, MODEL_FILE)
    return hashlib.sha256(uris.read_bytes(target)).hexdigest()


def prepare(job: ScoringJob):
    """Everything checked before Ray starts: the model, its backbone's width and weights, the settings.

    Returns ``(model, payload, spec, weights_sha256)`` for :func:`score_videos`.
    """
    model, payload = load_scorer(job.checkpoint)
    settings = job.extraction
    spec = settings.validate()
    check_feature_dim(job.checkpoint, settings.backbone, spec.feature_dim, model.feature_dim)
    job.alarms.validate()
    if job.window_clips is not None and job.window_clips < 1:
        raise AnomalyError("--window-clips", f"must be >= 1, got {job.window_clips}")
    if not job.window_seconds > 0:
        raise AnomalyError("--window", f"must be > 0 seconds, got {job.window_seconds}")
    weights = _weights_tag(settings)
    meta = stored_metadata(payload)
    check_weights(settings.weights or "--weights", weights, meta.weights_sha256 if meta else None)
    return model, payload, spec, weights


def score_videos(videos: str | Sequence[str], out: str, job: ScoringJob, *, prepared=None) -> ScoringReport:
    """Score every video not yet in ``OUT/scores``, then (re)write alarms and timelines of all of them."""
    started = time.monotonic()
    model, payload, spec, weights = prepared or prepare(job)
    settings = job.extraction
    ids, list_failures = _video_ids(videos)
    outputs.ensure_settings(out, scoring_settings_record(_checkpoint_sha(job.checkpoint), settings, spec, job, weights))
    for path in uris.remove_stale_temp_files(uris.join(out, outputs.SCORES_DIR), older_than=time.time()):
        logger.info("removed %s, left by an interrupted write", path)

    report = ScoringReport(out=out)
    done = outputs.scored_video_ids(out)
    report.skipped = sorted(vid for vid in ids if vid in done)
    todo = {vid: uri for vid, uri in sorted(ids.items()) if vid not in done}
    report.failed.extend(list_failures)
    logger.info("%d videos: %d already scored in %s, %d to score", len(ids), len(report.skipped), out, len(todo))
    scorer = ClipScorer(
        out, job, model, payload, spec, settings.effective_stride(spec), todo, _creation_times(todo), report, started
    )
    scorer.new_failures.extend(list_failures)
    try:
        if todo:
            for batch in build_dataset(todo, settings, spec).iter_batches(batch_size=None, batch_format="numpy"):
                scorer.consume(batch)
            scorer.finish()
    finally:
        scorer.flush()
    report.seconds = time.monotonic() - started
    table = outputs.read_scores(out)
    alarms = outputs.alarms_of(table, job.alarms)
    report.num_alarms = len(alarms)
    report.written.update(outputs.write_alarms(out, alarms))
    for uri in outputs.write_timelines(out, table, alarms, job.alarms.threshold):
        report.written[f"timeline {uri.rsplit('/', 1)[-1]}"] = uri
    return report
