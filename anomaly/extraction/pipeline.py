"""Videos -> clip table -> 32 segments per video -> the feature store. Workers write, the driver orchestrates.

::

    driver: list, ids, skip committed ids, plan windows (header reads, a Ray Data map)
    from_items(one block per window)
      -> flat_map(decode_window)        CPU tasks, torch-free: one decode pass, clip rows + an end row
      -> map_batches(ClipFeatureExtractor, ActorPoolStrategy, num_gpus)   clips -> D features
      -> map_batches(write_clip_rows)   CPU tasks: features -> STORE/_clips (atomic files);
                                        out: a few summary rows per batch (runs of clip indices)
    driver: VideoTracker folds summaries; each flush_every complete videos -> commit_videos (a Ray task:
            clip table -> 32 segments -> one atomic part file of bags)

Why this shape (measured in ``benchmarks/extract.py``, figures in ``benchmarks/RESULTS.md``):
the old design pulled every clip feature into the driver and folded it there
(``np.add.at``, Parquet encoding and uploads in one Python thread), so the driver's
CPU grew with D and with the clip count and capped a cluster at a few GPUs. Here
features never leave the workers: they are written by the writer tasks into the
clip table, and the pooling tasks read them back from storage; the driver sees
per batch a handful of integers (runs of clip indices), so its CPU per 1,000
clips is flat in D and in the clip count. A ``groupby(video_id)`` pooling pass
was not chosen because it is a barrier (no video is committed before every clip
of every video is through the model) and needs each video's clips in one worker;
pooling per complete video from the clip table commits videos while the stream
runs, with ``(32, D)`` sums per video in memory.

Guarantees: bounded memory whatever a video's length (frames stream through a
``clip_len`` buffer, pooling keeps ``(32, D)`` sums); a video is committed whole
or not at all (its bag row is written only when every clip of every window is in
the clip table, in one atomic part file); a killed job resumes without
duplicates or gaps (committed ids are skipped; clip files are named after their
keys, so a retried task overwrites its own file, and a clip seen twice counts
once when pooled); a failure is recorded with a one-line reason and stage.
Long recordings are split into windows (``window_seconds``), decoded by
separate tasks and pooled back into one video, so they parallelise and a lost
task costs one window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np

from anomaly import listing, uris
from anomaly import store as feature_store
from anomaly.errors import AnomalyError
from anomaly.extraction.commit import VideoTracker, commit_videos, write_clip_rows
from anomaly.extraction.decode import ClipSampling, decode_window, plan_video
from anomaly.extraction.settings import (
    ExtractionReport,
    ExtractionSettings,
    store_settings,
    weights_tag,
)
from anomaly.extractors import BackboneSpec, ClipFeatureExtractor
from anomaly.ground_truth import GroundTruth

logger = logging.getLogger(__name__)

# Pooling tasks in flight at once: they are short, and more would only compete with decoding.
MAX_COMMITS_IN_FLIGHT = 2


def sampling_of(settings: ExtractionSettings, spec: BackboneSpec) -> ClipSampling:
    """The torch-free part of the settings that the decode stage needs."""
    return ClipSampling(
        clip_len=spec.clip_len,
        stride=settings.effective_stride(spec),
        crop=tuple(spec.crop),
        resize=tuple(spec.resize),
        grid=settings.grid,
        fps_default=settings.fps,
        threads=max(1, int(round(settings.decode_num_cpus))),
        window_seconds=settings.window_seconds,
        crops=settings.crops,
    )


def plan(todo: Mapping[str, str], sampling: ClipSampling) -> list[dict]:
    """One row per window of every video: header reads spread over the cluster (small rows back)."""
    import ray

    items = [{"video_id": video_id, "uri": uri} for video_id, uri in todo.items()]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 64))
    ds = ds.flat_map(plan_video, fn_kwargs={"sampling": sampling}, num_cpus=0.25)
    return sorted(ds.take_all(), key=lambda row: (row["video_id"], row["window"]))


def check_gpus(settings: ExtractionSettings) -> None:
    """GPUs per actor on a cluster without GPUs would wait forever: say so in one line instead."""
    import ray

    if settings.num_gpus_per_actor > 0 and not ray.cluster_resources().get("GPU", 0):
        raise AnomalyError(
            "--num-gpus-per-actor",
            f"{settings.num_gpus_per_actor} GPUs per actor asked for, but the Ray cluster has no GPU "
            "(use 0 to run on CPU)",
        )


def model_stage(ds, settings: ExtractionSettings, spec: BackboneSpec, post=None):
    """``ds.map_batches(ClipFeatureExtractor)`` on an actor pool; ``post``: a hook run on the actors."""
    import ray

    low, high = settings.concurrency
    return ds.map_batches(
        ClipFeatureExtractor,
        fn_constructor_args=(settings.backbone, settings.weights),
        fn_constructor_kwargs={
            "crop": spec.crop,
            "clip_len": spec.clip_len,
            "device": settings.device,
            "amp": settings.amp,
            "require_gpu": settings.num_gpus_per_actor > 0,
            "post": post,
            "crops": settings.crops,
        },
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
        batch_size=settings.batch_size,
        batch_format="numpy",
        num_cpus=settings.num_cpus_per_actor,
        num_gpus=settings.num_gpus_per_actor or None,
    )


def build_pipeline(windows: list[dict], settings: ExtractionSettings, spec: BackboneSpec, store: str):
    """The Ray Data pipeline over planned windows: summary rows out (see the module docstring)."""
    import ray

    sampling = sampling_of(settings, spec)
    ds = ray.data.from_items(windows, override_num_blocks=len(windows))  # one decode task per window
    ds = ds.flat_map(decode_window, fn_kwargs={"sampling": sampling}, num_cpus=settings.decode_num_cpus)
    ds = model_stage(ds, settings, spec)
    return ds.map_batches(
        write_clip_rows,
        fn_kwargs={"store": store, "stride": sampling.stride, "fps_default": settings.fps},
        batch_size=None,
        batch_format="numpy",
        num_cpus=0.25,
    )


class _Committer:
    """Driver side of committing: bag metadata of complete videos -> pooling tasks -> report."""

    def __init__(self, store, settings, spec, truth, todo, report, started) -> None:
        import ray

        self.ray = ray
        self.store, self.settings, self.spec, self.truth = store, settings, spec, truth
        self.todo, self.report, self.started = todo, report, started
        self.pending: list[dict] = []
        self.in_flight: list = []
        self.new_failures: list[dict] = []
        self.clips: dict[str, int] = {}
        self.counted_before = len(report.extracted) + len(report.failed)
        self.task = ray.remote(commit_videos).options(num_cpus=0, max_retries=3)

    def complete(self, video_id: str, video, num_clips: int) -> None:
        try:
            row = self.truth.describe(video_id)
        except AnomalyError as exc:  # ground truth that does not know this video
            self.fail(video_id, video.uri, exc.what, "annotations")
            return
        num_frames = int(video.num_frames)
        known = row.get("num_frames")
        if known is not None and known != num_frames:
            logger.info(
                "%s: %d decodable frames, the frame-counts file says %d; keeping %d",
                video_id,
                num_frames,
                known,
                num_frames,
            )
        fps = video.fps if np.isfinite(video.fps) and video.fps > 0 else self.settings.fps
        row.update(
            video_id=video_id,
            num_frames=num_frames,
            backbone=self.settings.backbone,
            fps=fps,
            source_uri=video.uri,
        )
        cells = self.settings.grid**2 if self.settings.grid > 1 else 0
        self.clips[video_id] = num_clips
        self.pending.append(
            {"row": row, "num_clips": num_clips, "cells": cells, "files": sorted(video.files)}
        )
        if len(self.pending) >= self.settings.flush_every:
            self.submit()

    def submit(self) -> None:
        if self.pending:
            while len(self.in_flight) >= MAX_COMMITS_IN_FLIGHT:
                self.collect(wait=True)
            self.in_flight.append(
                self.task.remote(self.store, self.pending, self.spec.feature_dim, self.settings.crops)
            )
            self.pending = []

    def collect(self, *, wait: bool = False) -> None:
        if not self.in_flight:
            return
        ready, self.in_flight = self.ray.wait(
            self.in_flight, num_returns=1 if wait else len(self.in_flight), timeout=None if wait else 0
        )
        for ref in ready:
            result = self.ray.get(ref)
            for video_id, uri, reason in result["failed"]:
                self.fail(video_id, uri, reason, "group")
            if result["part"]:
                self.report.part_files.append(result["part"])
                feature_store.clear_failures(self.store, [self.todo[v] for v in result["committed"]])
                logger.info("committed %d videos to %s", len(result["committed"]), result["part"])
            for video_id in result["committed"]:
                if self.report.first_commit_seconds is None:
                    self.report.first_commit_seconds = time.monotonic() - self.started
                self.report.extracted.append(video_id)
                self.report.num_clips += self.clips.pop(video_id, 0)
                done = len(self.report.extracted) + len(self.report.failed) - self.counted_before
                logger.info(
                    "[%d/%d] %s (%.1f s elapsed)",
                    done,
                    len(self.todo),
                    video_id,
                    time.monotonic() - self.started,
                )
        self.flush_failures()

    def fail(self, video_id: str, uri: str, reason: str, stage: str) -> None:
        failure = {
            "uri": uri or self.todo.get(video_id, ""),
            "video_id": video_id,
            "reason": reason,
            "stage": stage,
        }
        self.new_failures.append(failure)
        self.report.failed.append(failure)
        done = len(self.report.extracted) + len(self.report.failed) - self.counted_before
        logger.warning("[%d/%d] %s failed (%s): %s", done, len(self.todo), failure["uri"], stage, reason)

    def flush_failures(self) -> None:
        if self.new_failures:
            feature_store.record_failures(self.store, self.new_failures)
            self.new_failures = []

    def drain(self) -> None:
        self.submit()
        while self.in_flight:
            self.collect(wait=True)
        self.flush_failures()


def resolve_ids(videos: str | Sequence[str] | Mapping[str, str]) -> tuple[dict[str, str], list[dict]]:
    """``(id -> URI, list-stage failures)`` by :mod:`anomaly.listing`'s rule (or the caller's mapping)."""
    if isinstance(videos, Mapping):  # ids given by the caller (data sets whose ids are not file stems)
        ids = {str(k): str(v) for k, v in videos.items()}
        if not ids:
            raise AnomalyError("videos", "no videos given")
        listing.refuse_unsafe_ids(ids)
        return ids, []
    found, root = listing.list_inputs(videos)
    return listing.assign_ids(found, root)


def extract(
    videos: str | Sequence[str] | Mapping[str, str],
    store: str,
    settings: ExtractionSettings,
    truth: GroundTruth | None = None,
) -> ExtractionReport:
    """Extract the features of every video not yet in ``store``; see the module docstring.

    Order: check the settings, list the videos and refuse duplicate ids, check
    the weights and the GPUs, record (or check against) ``_store.json`` — all
    before any video is touched — then plan, stream, and commit whole videos.
    """
    started = time.monotonic()
    started_wall = time.time()
    truth = truth if truth is not None else GroundTruth()
    spec = settings.validate()
    ids, list_failures = resolve_ids(videos)
    weights_sha256 = weights_tag(settings)
    check_gpus(settings)
    # Also the write check: a store this process cannot write is refused here, before any work.
    feature_store.ensure_metadata(store, store_settings(settings, spec, weights_sha256))
    # A run killed while writing leaves a dot-prefixed temporary file (readers skip it); tidy up.
    for path in uris.remove_stale_temp_files(store, older_than=started_wall):
        logger.info("removed %s, left by an interrupted write", path)

    report = ExtractionReport(store=store)
    done = feature_store.video_ids(store)
    report.skipped = sorted(vid for vid in ids if vid in done)
    todo = {vid: uri for vid, uri in sorted(ids.items()) if vid not in done}
    report.failed.extend(list_failures)
    sampling = sampling_of(settings, spec)
    logger.info(
        "%d videos: %d already in %s, %d to extract with %s (%d frames x %dx%d, stride %d, weights %s)",
        len(ids),
        len(report.skipped),
        store,
        len(todo),
        settings.backbone,
        spec.clip_len,
        *spec.crop,
        sampling.stride,
        weights_sha256[:12],
    )
    committer = _Committer(store, settings, spec, truth, todo, report, started)
    committer.new_failures.extend(list_failures)
    tracker = VideoTracker(clip_len=spec.clip_len, stride=sampling.stride, cells=committer_cells(settings))
    try:
        if todo:
            windows = plan(todo, sampling)
            for batch in build_pipeline(windows, settings, spec, store).iter_batches(
                batch_size=None, batch_format="numpy"
            ):
                complete, failed = tracker.consume(batch)
                for video_id, uri, reason in failed:
                    committer.fail(video_id, uri, reason, "decode")
                for video_id, video in complete:
                    committer.complete(video_id, video, tracker.num_clips(video))
                committer.collect()
            for video_id, uri, reason in tracker.finish(todo):
                committer.fail(video_id, uri, reason, "group")
    finally:
        # Complete videos are whole: committing them on the way out (an error, Ctrl-C) keeps finished work.
        committer.drain()
    report.seconds = time.monotonic() - started
    return report


def committer_cells(settings: ExtractionSettings) -> int:
    return settings.grid**2 if settings.grid > 1 else 0
