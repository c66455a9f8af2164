"""The one driver loop of extraction and scoring: summary rows in, whole videos out to Ray tasks.

Both jobs run the same Ray Data pipeline (:func:`build_pipeline`: header reads
and window planning, decode, the model, the clip-table writer) and the same
driver loop (:func:`run`): the :class:`~anomaly.extraction.commit.VideoTracker`
folds the writer's summary rows; every ``flush_every`` complete videos go to
one Ray task (extraction: pooling into bags; scoring: the trained head and
alarms), launched and collected by a :class:`VideoSink`. What differs per job
is the task and what its result means: :meth:`VideoSink.entry`,
:meth:`VideoSink.launch` and :meth:`VideoSink.accept`. Around the loop, the
steps both jobs take alike: :func:`tidy_interrupted_writes` and
:func:`split_done` before it, :func:`run_job` (the wait for the cluster, the
run's own clip folder, the final drain) around it.

Shared guarantees:

- the driver never plans windows: header reads run inside the pipeline (a
  flat map, then a streaming repartition to one window per block, so each
  window is its own decode task), and the driver holds one small row per
  video, not per window, so GPUs start on the first videos while the rest are
  planned;
- every task asks for a share of a CPU (:data:`anomaly.cluster.TASK_CPUS`),
  never 0, so nothing runs on a 0-CPU head; how many run at once follows the
  cluster's CPUs (:func:`anomaly.cluster.tasks_in_flight`);
- a task that fails after its retries (a lost node, a bad file) becomes a
  failure record of each of its videos, never the end of the job;
- the clip table of this run lives in its own folder (``_clips/run-…``); a
  clip file is removed as soon as every video with clips in it is committed or
  failed (unless ``keep_clips``), so the table holds only what is still needed
  and no live run removes another's files; a killed run's folder is adopted by
  the next run and then removed (:mod:`anomaly.extraction.clip_runs`);
- failure records are appended to the log (never re-read); the summary file
  is rewritten once, at the end.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Container, Iterable, Mapping

import numpy as np

from anomaly import store as feature_store
from anomaly import uris
from anomaly.cluster import TASK_CPUS, tasks_in_flight, wait_for_resources
from anomaly.console import Progress
from anomaly.errors import first_line
from anomaly.extraction import clip_runs
from anomaly.extraction.commit import VideoTracker, write_clip_rows
from anomaly.extraction.decode import ClipSampling, decode_window, plan_video
from anomaly.extraction.settings import ExtractionSettings
from anomaly.extractors import BackboneSpec, ClipFeatureExtractor

logger = logging.getLogger(__name__)

# Videos per input block of the planning stage: a handful, so the first windows reach the GPUs
# after a few header reads; capped so a 100,000-video job is not 100,000 blocks.
VIDEOS_PER_PLAN_BLOCK = 8
MAX_PLAN_BLOCKS = 2048


def extractor_kwargs(settings: ExtractionSettings, spec: BackboneSpec, *, post=None) -> dict:
    """``ClipFeatureExtractor(settings.backbone, settings.weights, **these)``: the model actors' and
    in-process scoring's one construction (:func:`anomaly.scoring.single.clip_features`)."""
    return {
        "crop": spec.crop,
        "clip_len": spec.clip_len,
        "device": settings.device,
        "amp": settings.amp,
        "require_gpu": settings.on_gpu,
        "post": post,
        "crops": settings.crops,
    }


def model_stage(ds, settings: ExtractionSettings, spec: BackboneSpec, post=None):
    """``ds.map_batches(ClipFeatureExtractor)`` on an actor pool; ``post``: a hook run on the actors."""
    import ray

    low, high = settings.actor_pool()
    if settings.num_gpus_per_actor > 0 and not settings.on_gpu:
        logger.warning(
            "device cpu with num_gpus_per_actor %g: each model actor reserves %g GPU but runs on CPU",
            settings.num_gpus_per_actor,
            settings.num_gpus_per_actor,
        )
    logger.info(
        "model actors: %d..%s, %g GPU and %g CPU each, batches of %d clips",
        low,
        "every GPU" if high is None else high,
        settings.num_gpus_per_actor,
        settings.num_cpus_per_actor,
        settings.effective_batch_size(),
    )
    return ds.map_batches(
        ClipFeatureExtractor,
        fn_constructor_args=(settings.backbone, settings.weights),
        fn_constructor_kwargs=extractor_kwargs(settings, spec, post=post),
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
        batch_size=settings.effective_batch_size(),
        batch_format="numpy",
        num_cpus=settings.num_cpus_per_actor,
        num_gpus=settings.num_gpus_per_actor or None,
    )


def build_pipeline(
    todo: Mapping[str, str],
    settings: ExtractionSettings,
    spec: BackboneSpec,
    sampling: ClipSampling,
    store: str,
    run: str,
):
    """The Ray Data pipeline over ``{video id: uri}``: summary rows out (see the module docstring)."""
    import ray

    items = [{"video_id": video_id, "uri": uri} for video_id, uri in todo.items()]
    blocks = min(len(items), max(1, min(MAX_PLAN_BLOCKS, math.ceil(len(items) / VIDEOS_PER_PLAN_BLOCK))))
    blocks = max(blocks, min(len(items), 64))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    ds = ds.flat_map(plan_video, fn_kwargs={"sampling": sampling}, num_cpus=TASK_CPUS)
    ds = ds.repartition(target_num_rows_per_block=1)  # streaming: one decode task per window
    ds = ds.flat_map(decode_window, fn_kwargs={"sampling": sampling}, num_cpus=settings.decode_num_cpus)
    ds = model_stage(ds, settings, spec)
    return ds.map_batches(
        write_clip_rows,
        fn_kwargs={"store": store, "clip_len": spec.clip_len, "fps_default": settings.fps, "run": run},
        batch_size=None,
        batch_format="numpy",
        num_cpus=TASK_CPUS,
    )


def wait_for_cluster(settings: ExtractionSettings, what: str) -> None:
    """Wait (at most ``settings.wait_for_resources``) for nodes that hold a model actor and a decode task."""
    wait_for_resources(
        [settings.actor_bundle(), {"CPU": settings.decode_num_cpus}],
        settings.wait_for_resources,
        what=what,
    )


def tidy_interrupted_writes(folders: Iterable[str], *, started_wall: float) -> None:
    """Remove the dot-prefixed temporary files a killed run left in ``folders`` (readers skip them).

    Only files older than ``started_wall`` (this run's ``time.time()`` at its start): never a write in progress.
    """
    for folder in folders:
        for path in uris.remove_stale_temp_files(folder, older_than=started_wall):
            logger.info("removed %s, left by an interrupted write", path)


def split_done(ids: Mapping[str, str], done: Container[str]) -> tuple[list[str], dict[str, str]]:
    """``(ids already done, sorted; {id: uri} still to do, by id)``: what a re-run skips and what it runs."""
    skipped = sorted(video_id for video_id in ids if video_id in done)
    return skipped, {video_id: uri for video_id, uri in sorted(ids.items()) if video_id not in done}


class VideoSink:
    """Driver side of a job: complete videos -> batched Ray tasks -> results; failures and clip files.

    Subclasses say what a video's entry is (:meth:`entry`), which task takes a
    batch of them (:meth:`launch`) and what a result means (:meth:`accept`,
    returning the ids it settled).
    """

    stage = "group"
    label = "videos"  # the progress line's name for the job

    def __init__(self, *, out: str, todo: Mapping[str, str], flush_every: int, keep_clips: bool) -> None:
        import ray

        self.ray = ray
        self.out, self.todo, self.flush_every, self.keep_clips = out, todo, flush_every, keep_clips
        self.started = time.monotonic()
        self.pending: list[dict] = []
        self.in_flight: dict = {}  # ref -> its entries
        self.max_in_flight = tasks_in_flight()
        self.failed: list[dict] = []
        self.new_failures: list[dict] = []
        self.file_videos: dict[str, set[str]] = {}  # clip file -> videos with clips in it, not yet settled
        self.video_files: dict[str, set[str]] = {}
        self.settled = 0
        self.removed_clip_files = 0
        # URIs whose latest record is a failure, read once: a success clears only these (an append),
        # so a job without earlier failures writes no failure log at all.
        self.failed_before = set(feature_store.read_failures(out).column("uri").to_pylist())
        self.bar = Progress(self.label, len(todo), "videos")
        self.clip_run = ""  # this run's clip folder (run_job), claimed again every HEARTBEAT_S
        self.heartbeat = time.monotonic()

    # --- what differs per job
    def adopt(self, videos: list[dict]) -> None:
        """Take over complete videos a killed run recorded (:func:`clip_runs.manifests`); by default
        nothing is adopted (scoring re-scores a killed run's unfinished recordings)."""

    def entry(self, video_id: str, video, num_clips: int) -> dict | None:
        raise NotImplementedError

    def launch(self, entries: list[dict]):
        raise NotImplementedError

    def accept(self, result: dict, entries: list[dict]) -> None:
        raise NotImplementedError

    # --- shared
    def saw_files(self, batch: dict[str, np.ndarray]) -> None:
        """Note which videos have clips in which clip files (from the writer's summary rows)."""
        kinds = np.asarray(batch["kind"]).astype(str)
        for i in np.flatnonzero(kinds == "clips"):
            path, video_id = str(batch["file"][i]), str(batch["video_id"][i])
            self.file_videos.setdefault(path, set()).add(video_id)
            self.video_files.setdefault(video_id, set()).add(path)

    def note(self) -> str:
        """What the progress line says besides counts and rates."""
        return f"{len(self.failed)} failed" if self.failed else ""

    def settle(self, video_id: str) -> None:
        """The video is committed or failed: clip files no other open video needs are removed."""
        self.settled += 1
        self.bar.update(self.settled, note=self.note())
        files = self.video_files.pop(video_id, set())
        if self.keep_clips:
            return
        gone = []
        for path in files:
            videos = self.file_videos.get(path)
            if videos is None:
                continue
            videos.discard(video_id)
            if not videos:
                del self.file_videos[path]
                gone.append(path)
        if gone:
            self.removed_clip_files += feature_store.remove_clip_files(self.out, gone)

    def complete(self, video_id: str, video, num_clips: int) -> None:
        entry = self.entry(video_id, video, num_clips)
        if entry is None:
            return
        self.pending.append(entry)
        if len(self.pending) >= self.flush_every:
            self.submit()

    def submit(self) -> None:
        if self.pending:
            while len(self.in_flight) >= self.max_in_flight:
                self.collect(wait=True)
            self.in_flight[self.launch(self.pending)] = self.pending
            self.pending = []

    def collect(self, *, wait: bool = False) -> None:
        if not self.in_flight:
            return
        refs = list(self.in_flight)
        ready, _ = self.ray.wait(refs, num_returns=1 if wait else len(refs), timeout=None if wait else 0)
        for ref in ready:
            entries = self.in_flight.pop(ref)
            try:
                result = self.ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - after its retries: its videos fail, the job goes on
                reason = f"{type(exc).__name__} after retries: {first_line(exc)}"
                for entry in entries:
                    self.fail(entry["video_id"], entry["uri"], reason, self.stage)
                continue
            self.accept(result, entries)
        self.flush_failures()
        if self.clip_run and time.monotonic() - self.heartbeat > clip_runs.HEARTBEAT_S:
            clip_runs.claim(self.out, self.clip_run)
            self.heartbeat = time.monotonic()

    def progress(self) -> str:
        return f"[{self.settled}/{len(self.todo)}]"

    def fail(self, video_id: str, uri: str, reason: str, stage: str) -> None:
        failure = {
            "uri": uri or self.todo.get(video_id, ""),
            "video_id": video_id,
            "reason": reason,
            "stage": stage,
        }
        self.new_failures.append(failure)
        self.failed.append(failure)
        self.settle(video_id)
        logger.warning("%s %s failed (%s): %s", self.progress(), failure["uri"], stage, reason)

    def clear_failures(self, done_uris) -> None:
        """Forget earlier failures of videos this job has now done (retried and succeeded)."""
        cleared = sorted(self.failed_before.intersection(done_uris))
        if cleared:
            feature_store.clear_failures(self.out, cleared, summary=False)
            self.failed_before.difference_update(cleared)

    def flush_failures(self) -> None:
        if self.new_failures:
            feature_store.record_failures(self.out, self.new_failures, summary=False)
            self.new_failures = []

    def drain(self) -> None:
        self.submit()
        while self.in_flight:
            self.collect(wait=True)
        self.flush_failures()
        feature_store.write_failure_summary(self.out)
        self.bar.close()


def run_job(
    sink: VideoSink,
    tracker: VideoTracker,
    settings: ExtractionSettings,
    spec: BackboneSpec,
    sampling: ClipSampling,
    *,
    what: str,
) -> None:
    """The job's pipeline over ``sink.todo`` through :func:`run`, in a clip folder of this run's own.

    First the folders killed runs left (:mod:`anomaly.extraction.clip_runs`): the sink adopts
    what it can of them (:meth:`VideoSink.adopt`), then they are removed. Whatever happens
    (nothing to do, no cluster, an error), the sink is drained, so the failures found before the
    pipeline are written too. A run that ends on its own removes its folder (or, keeping its
    clips, releases it); an interrupted one leaves it claimed for the next run to adopt.
    ``what``: the job's name in the wait message.
    """
    clip_run = feature_store.new_clip_run()  # no live run's clip files are touched
    sink.clip_run = clip_run
    clip_runs.claim(sink.out, clip_run)
    ended = False
    try:
        stale = clip_runs.abandoned(sink.out, clip_run)  # folders of killed runs
        if sink.todo:
            wait_for_cluster(settings, f"{what} of {len(sink.todo)} videos")
            for folder in stale:
                sink.adopt(clip_runs.manifests(sink.out, folder))
        for folder in stale:
            clip_runs.remove(sink.out, folder)
        if stale:
            logger.info("removed %d clip folder(s) left by killed runs", len(stale))
        if sink.todo:
            run(build_pipeline(sink.todo, settings, spec, sampling, sink.out, clip_run), tracker, sink)
        ended = True
    finally:
        sink.drain()
        if ended and sink.keep_clips:
            clip_runs.release(sink.out, clip_run)
        elif ended:
            clip_runs.remove(sink.out, clip_run)
        # else (an error, Ctrl-C): the folder stays claimed, for the next run to adopt


def run(ds, tracker: VideoTracker, sink: VideoSink) -> bool:
    """Stream the pipeline's summary rows through the tracker into the sink; True when it ran to its end.

    Complete videos are whole, so they are committed on the way out too (an error, Ctrl-C).
    """
    finished = False
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            sink.saw_files(batch)
            complete, failed = tracker.consume(batch)
            for video_id, uri, reason in failed:
                sink.fail(video_id, uri, reason, "decode")
            for video_id, video in complete:
                sink.complete(video_id, video, tracker.num_clips(video))
            sink.collect()
        for video_id, uri, reason in tracker.finish(sink.todo):
            sink.fail(video_id, uri, reason, "group")
        finished = True
    finally:
        sink.drain()
    return finished
