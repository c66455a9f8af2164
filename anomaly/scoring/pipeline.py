"""The scoring entry point, :func:`score`: one recording or many on Ray Data, exactly like extraction, with
the trained head applied on the workers. Its settings are one :class:`~anomaly.scoring.job.ScoringJob`
(:func:`~anomaly.scoring.job.scoring_job`: the checkpoint's training-store settings and the caller's overrides).

Pipeline (the stages are extraction's own, :mod:`anomaly.extraction.pipeline`)::

    driver: list, ids (relative paths), skip ids already in OUT/scores (part footers), plan windows
    from_items(one block per window)
      -> flat_map(decode_window)         CPU tasks, torch-free: clip rows + an end row per window
      -> map_batches(ClipFeatureExtractor, ActorPoolStrategy, num_gpus)   clips -> D features
      -> map_batches(write_clip_rows)    CPU tasks: features -> OUT/_clips (atomic files);
                                         out: a few summary rows per batch (runs of clip indices)
    driver: VideoTracker folds summaries; each flush_every complete videos -> score_videos_task
            (a Ray task, anomaly.scoring.workers: clip table -> clip-window head -> alarms ->
            timelines -> one atomic OUT/scores part whose footer keeps the batch's alarms)
    driver: alarms.parquet / alarms.csv from the part footers' alarm records (small rows);
            one video given: its CSV and timeline (and MP4s when asked) from its rows in OUT/scores

Why this shape: a clip's score needs the features of its neighbours (a
window about one training segment long, more for context heads), and those
arrive in other batches from other actors, so the head cannot run inside the
model actors. The design before this one gathered every clip feature in the
driver and ran the head there, and rebuilt alarms by reading every score back
into the driver: the driver's CPU and memory grew with the clip count and D,
the same cap that extraction removed (issue 12). Here features never leave
the workers: the writer tasks put them in the clip table, and the scoring
task reads a complete video's clips back from storage, so a video's clips are
together where the head runs, and the driver sees per batch a handful of
integers (runs of clip indices) and per video its clip count and alarms. The
head is cheap next to the backbone (``benchmarks/score.py``), so a task with a
quarter of a CPU beside the decode tasks and actors is enough; the model goes to the
tasks once, as an object ref.

Guarantees, as extraction's: a video is scored only when every clip of every
window is in the clip table, and committed whole (one atomic part file per
batch, named after its video ids, so a retried task overwrites its own file;
a clip written twice counts once); one whose decode fails, or that ends
short, is recorded in ``OUT/_failures.parquet`` with a one-line reason and the
rest go on. A re-run skips videos already in ``OUT/scores`` and rebuilds
``alarms.*`` from every part's footer (a part written with other alarm
settings, or by an older version, is re-alarmed from its own scores by a
task), so a killed and resumed job writes the same outputs as an
uninterrupted one. Each run writes its clip features into its own folder
``OUT/_clips/run-…`` and removes a clip file as soon as every video with
clips in it is scored or failed (another run's files are never touched). The
driver loop is extraction's (:mod:`anomaly.extraction.stream`); a scoring task
that fails after its retries becomes its videos' failure records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from anomaly import store as feature_store
from anomaly import uris
from anomaly.alarms import Alarm, AlarmSettings
from anomaly.checkpoints import MODEL_FILE, load_scorer
from anomaly.cluster import TASK_CPUS
from anomaly.extraction import VIDEO_EXTENSIONS, ExtractionSettings, stream, weights_tag
from anomaly.extraction.commit import TrackedVideo, VideoTracker
from anomaly.extraction.pipeline import resolve_ids, sampling_of
from anomaly.extraction.settings import warn_if_random
from anomaly.extraction.stream import VideoSink
from anomaly.scoring import outputs
from anomaly.scoring.job import ScoringJob, check_job, check_weights, expected_weights, scoring_job
from anomaly.scoring.single import VideoScores, write_annotated_video, write_outputs
from anomaly.scoring.workers import ScoreRules, creation_time, realarm_part, score_videos_task

logger = logging.getLogger(__name__)

__all__ = ["ScoringJob", "ScoringReport", "creation_time", "prepare", "score", "scoring_job"]

# A scoring task runs the head with one torch thread: a share of a CPU, never 0 (a 0-CPU head would take it).
SCORING_CPUS = TASK_CPUS


@dataclass
class ScoringReport:
    out: str
    scored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    num_clips: int = 0
    num_alarms: int = 0  # over all videos in OUT, this run's and earlier runs'
    alarms: list[tuple[Alarm, dict]] = field(default_factory=list)  # those alarms, highest peak first
    seconds: float = 0.0
    written: dict[str, str] = field(default_factory=dict)
    video: VideoScores | None = None  # one video given: its clip scores (OUT/VIDEO.csv, its timeline)

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


def scoring_settings_record(
    checkpoint_sha: str, settings: ExtractionSettings, spec, job: ScoringJob, weights: str
) -> dict:
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

    Returns ``(model, payload, spec, weights_sha256)`` for :func:`score`.
    """
    model, payload = load_scorer(job.checkpoint)
    spec = check_job(job, model)
    weights = weights_tag(job.extraction)
    check_weights(job.extraction.weights or "weights", weights, expected_weights(payload))
    warn_if_random(job.extraction)
    return model, payload, spec, weights


class _Scorer(VideoSink):
    """Scoring's sink: complete videos -> scoring tasks (head, alarms, one scores part) -> the report."""

    label = "score"

    def note(self) -> str:
        alarms = f"{self.alarms_so_far} alarms"
        return f"{alarms}, {len(self.failed)} failed" if self.failed else alarms

    def __init__(self, out: str, rules: ScoreRules, model, todo: dict[str, str], report, flush_every) -> None:
        super().__init__(out=out, todo=todo, flush_every=flush_every, keep_clips=False)
        self.rules, self.report = rules, report
        self.model = self.ray.put(model)  # once, not once per task
        self.task = self.ray.remote(score_videos_task).options(num_cpus=SCORING_CPUS, max_retries=3)
        self.alarms_so_far = 0

    def entry(self, video_id: str, video: TrackedVideo, num_clips: int) -> dict:
        return {
            "video_id": video_id,
            "uri": video.uri,
            "num_clips": num_clips,
            "num_frames": int(video.num_frames),
            "fps": float(video.fps),
            "files": sorted(video.files),
        }

    def launch(self, entries: list[dict]):
        return self.task.remote(self.out, entries, self.model, self.rules)

    def accept(self, result: dict, entries: list[dict]) -> None:
        for video_id, uri, reason in result["failed"]:
            self.fail(video_id, uri, reason, "group")
        if result["part"]:
            self.clear_failures(video["source_uri"] for video in result["videos"])
            logger.debug("committed %d videos to %s", len(result["videos"]), result["part"])
        for uri in result["timelines"]:
            self.report.written[f"timeline {uri.rsplit('/', 1)[-1]}"] = uri
        for video in result["videos"]:
            self.report.scored.append(video["video_id"])
            self.report.num_clips += video["num_clips"]
            self.alarms_so_far += len(video["alarms"])
            self.settle(video["video_id"])
            elapsed = time.monotonic() - self.started
            logger.debug(
                "%s %s: %d clips, %d alarms; %.1f clips/s, %d alarms so far",
                self.progress(),
                video["video_id"],
                video["num_clips"],
                len(video["alarms"]),
                self.report.num_clips / max(elapsed, 1e-9),
                self.alarms_so_far,
            )

    def fail(self, video_id: str, uri: str, reason: str, stage: str) -> None:
        super().fail(video_id, uri, reason, stage)
        self.report.failed.append(self.failed[-1])


def rebuild_alarms(out: str, settings: AlarmSettings) -> list[tuple[Alarm, dict]]:
    """Every alarm in ``OUT``, highest peak first, from the scores parts' footers (small records).

    A part whose alarms were found with other settings (or that has no index) is re-alarmed
    from its own scores by a Ray task, which also redraws its videos' timelines.
    """
    import ray

    records, stale = [], []
    for part, index in outputs.read_index(out):
        if index is not None and index["alarm_settings"] == asdict(settings):
            records.extend(alarm for video in index["videos"] for alarm in video["alarms"])
        else:
            stale.append(part)
    if stale:
        logger.info("%d scores parts were alarmed with other settings: re-alarming them", len(stale))
        task = ray.remote(realarm_part).options(num_cpus=0.25)
        for found in ray.get([task.remote(out, part, settings) for part in stale]):
            records.extend(found)
    return outputs.from_records(records)


def is_one_video(videos: str | Sequence[str]) -> bool:
    """Whether ``videos`` names one video file (it then also gets ``OUT/VIDEO.csv`` and its timeline)."""
    return isinstance(videos, str) and videos.lower().endswith(VIDEO_EXTENSIONS)


def video_scores(table, video_id: str) -> VideoScores:
    """One video's :class:`~anomaly.scoring.single.VideoScores` from its clip rows in ``OUT/scores``."""
    import pyarrow.compute as pc

    rows = table.filter(pc.equal(table.column("video_id"), video_id)).sort_by("clip_index")
    first = rows.slice(0, 1).to_pylist()[0]
    clip_len = int(first["last_frame"] - first["first_frame"] + 1)
    stride = int(rows.column("first_frame")[1].as_py()) if rows.num_rows > 1 else clip_len
    return VideoScores(
        video_id=video_id,
        uri=first["source_uri"],
        fps=float(first["fps"]),
        num_frames=int(first["num_frames"]),
        stride=stride,
        clip_len=clip_len,
        clip_scores=rows.column("score").to_numpy(),
    )


def score(videos: str | Sequence[str], out: str, job: ScoringJob, *, prepared=None) -> ScoringReport:
    """The library's scoring entry point, one video or many, on Ray Data.

    Scores every video not yet in ``OUT/scores``, then rebuilds ``alarms.*`` of all of them
    from the part footers (small rows). One video file given (``videos`` a path or URI
    ending in a video extension): also ``OUT/VIDEO.csv`` and ``OUT/VIDEO_timeline.png``
    (:func:`~anomaly.scoring.single.write_outputs`), and with ``job.annotated_videos``
    ``OUT/VIDEO_scored.mp4``; many: ``OUT/annotated/VIDEO.mp4`` for each video with an alarm.
    ``prepared``: :func:`prepare`'s result, when the caller checked the job before starting Ray.
    """
    report = _score_all(videos, out, job, prepared)
    threshold = job.alarms.threshold
    if is_one_video(videos) and report.scored + report.skipped:
        video_id = (report.scored + report.skipped)[0]
        report.video = video_scores(outputs.read_scores(out, [video_id]), video_id)
        report.written.update(write_outputs(report.video, out, threshold=threshold))
        if job.annotated_videos:
            target = uris.join(out, f"{video_id}_scored.mp4")
            report.written["video"] = write_annotated_video(report.video, target, threshold=threshold)
    elif job.annotated_videos:
        for video_id in sorted({alarm.video_id for alarm, _ in report.alarms}):
            report.written[f"video {video_id}"] = write_annotated_video(
                video_scores(outputs.read_scores(out, [video_id]), video_id),
                uris.join(out, "annotated", f"{video_id}.mp4"),
                threshold=threshold,
            )
    return report


def _score_all(videos, out: str, job: ScoringJob, prepared) -> ScoringReport:
    started = time.monotonic()
    started_wall = time.time()
    model, payload, spec, weights = prepared or prepare(job)
    settings = job.extraction
    ids, list_failures = resolve_ids(videos)
    outputs.ensure_settings(
        out, scoring_settings_record(_checkpoint_sha(job.checkpoint), settings, spec, job, weights)
    )
    folders = (outputs.SCORES_DIR, feature_store.CLIPS_DIR)
    stream.tidy_interrupted_writes([uris.join(out, folder) for folder in folders], started_wall=started_wall)

    report = ScoringReport(out=out)
    report.skipped, todo = stream.split_done(ids, outputs.scored_video_ids(out))
    report.failed.extend(list_failures)
    logger.info(
        "%d videos: %d already scored in %s, %d to score", len(ids), len(report.skipped), out, len(todo)
    )
    sampling = sampling_of(settings, spec)
    rules = job.rules(spec, payload, model)
    scorer = _Scorer(out, rules, model, todo, report, settings.flush_every)
    scorer.new_failures.extend(list_failures)
    tracker = VideoTracker(clip_len=spec.clip_len, stride=sampling.stride, cells=0)
    stream.run_job(scorer, tracker, settings, spec, sampling, what="scoring")
    report.seconds = time.monotonic() - started
    report.alarms = rebuild_alarms(out, job.alarms)
    report.num_alarms = len(report.alarms)
    report.written.update(outputs.write_alarms(out, report.alarms))
    return report
