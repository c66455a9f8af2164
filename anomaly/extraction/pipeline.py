"""Videos -> clip table -> 32 segments per video -> the feature store. Workers write, the driver orchestrates.

::

    driver: list, ids, skip committed ids, wait for nodes with a model actor's resources
    from_items(one row per video)
      -> flat_map(plan_video)           header reads and window planning, in the pipeline
      -> repartition(1 row per block)   streaming: one decode task per window
      -> flat_map(decode_window)        CPU tasks, torch-free: one decode pass, clip rows + an end row
      -> map_batches(ClipFeatureExtractor, ActorPoolStrategy, num_gpus)   clips -> D features
      -> map_batches(write_clip_rows)   CPU tasks: features -> STORE/_clips/RUN (atomic files);
                                        out: a few summary rows per batch (runs of clip indices)
    driver: VideoTracker folds summaries; each flush_every complete videos -> commit_videos (a Ray task:
            clip table -> 32 segments -> one atomic part file of bags, named after its video ids);
            clip files of settled videos removed (the loop is anomaly.extraction.stream's, shared
            with scoring)

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
from dataclasses import dataclass

import numpy as np

from anomaly import listing, uris
from anomaly import store as feature_store
from anomaly.cluster import TASK_CPUS
from anomaly.errors import AnomalyError
from anomaly.extraction import clip_runs, stream
from anomaly.extraction.commit import VideoTracker, commit_videos
from anomaly.extraction.decode import ClipSampling
from anomaly.extraction.settings import (
    ExtractionReport,
    ExtractionSettings,
    store_settings,
    warn_if_random,
    weights_tag,
)
from anomaly.extraction.stream import VideoSink, build_pipeline, model_stage  # noqa: F401 - re-exported
from anomaly.extractors import BackboneSpec
from anomaly.ground_truth import GroundTruth

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class AdoptedVideo:
    """A complete video from a killed run's manifest: what :meth:`_Committer.entry` reads of a
    :class:`~anomaly.extraction.commit.TrackedVideo`."""

    uri: str
    num_frames: int
    fps: float
    files: set[str]


def _facts(entry: dict) -> dict:
    """A committed batch's video as its manifest records it (JSON-ready)."""
    return {
        "video_id": entry["video_id"],
        "uri": entry["uri"],
        "num_frames": int(entry["row"]["num_frames"]),
        "fps": float(entry["row"]["fps"]),
        "num_clips": int(entry["num_clips"]),
        "files": list(entry["files"]),
    }


class _Committer(VideoSink):
    """Extraction's sink: complete videos -> pooling tasks (bags, one part file per batch) -> the report."""

    label = "extract"

    def __init__(self, store, settings, spec, truth, todo, report) -> None:
        super().__init__(
            out=store, todo=todo, flush_every=settings.flush_every, keep_clips=settings.keep_clips
        )
        self.store, self.settings, self.spec, self.truth, self.report = store, settings, spec, truth, report
        self.clips: dict[str, int] = {}
        self.task = self.ray.remote(commit_videos).options(num_cpus=TASK_CPUS, max_retries=3)

    def entry(self, video_id: str, video, num_clips: int) -> dict | None:
        try:
            row = self.truth.describe(video_id)
        except AnomalyError as exc:  # ground truth that does not know this video
            self.fail(video_id, video.uri, exc.what, "annotations")
            return None
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
        self.clips[video_id] = num_clips
        return {
            "video_id": video_id,
            "uri": video.uri,
            "row": row,
            "num_clips": num_clips,
            "cells": committer_cells(self.settings),
            "files": sorted(video.files),
        }

    def launch(self, entries: list[dict]):
        # Recorded before the commit: a run killed before it ends leaves these for the next to adopt.
        clip_runs.write_manifest(self.store, self.clip_run, [_facts(entry) for entry in entries])
        return self.task.remote(self.store, entries, self.spec.feature_dim, self.settings.crops)

    def adopt(self, videos: list[dict]) -> None:
        """Commit the complete videos a killed run recorded whose clip files are all still there,
        without decoding them again; they leave ``todo``."""
        present = {uris.strip_scheme(path) for path in feature_store.clip_files(self.store)}
        adopted = []
        for video in videos:
            video_id = video["video_id"]
            if video_id not in self.todo or video_id in adopted:
                continue
            if not all(uris.strip_scheme(path) in present for path in video["files"]):
                continue
            adopted.append(video_id)
            facts = AdoptedVideo(
                video["uri"], int(video["num_frames"]), float(video["fps"]), set(video["files"])
            )
            self.complete(video_id, facts, int(video["num_clips"]))
        self.submit()
        while self.in_flight:
            self.collect(wait=True)
        if adopted:
            logger.info("reused the clip files of %d videos a killed run had extracted", len(adopted))
            self.report.adopted.extend(adopted)
            self.todo = {video_id: uri for video_id, uri in self.todo.items() if video_id not in adopted}

    def accept(self, result: dict, entries: list[dict]) -> None:
        for video_id, uri, reason in result["failed"]:
            self.fail(video_id, uri, reason, "group")
        if result["part"]:
            self.report.part_files.append(result["part"])
            self.clear_failures(self.todo[v] for v in result["committed"])
            logger.debug("committed %d videos to %s", len(result["committed"]), result["part"])
        for video_id in result["committed"]:
            if self.report.first_commit_seconds is None:
                self.report.first_commit_seconds = time.monotonic() - self.started
            self.report.extracted.append(video_id)
            self.report.num_clips += self.clips.pop(video_id, 0)
            self.settle(video_id)
            logger.debug("%s %s (%.1f s elapsed)", self.progress(), video_id, time.monotonic() - self.started)

    def fail(self, video_id: str, uri: str, reason: str, stage: str) -> None:
        super().fail(video_id, uri, reason, stage)
        self.report.failed.append(self.failed[-1])


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
    # Also the write check: a store this process cannot write is refused here, before any work.
    feature_store.ensure_metadata(store, store_settings(settings, spec, weights_sha256))
    warn_if_random(settings)  # after the checks: a refused run says one line only
    if settings.keep_clips:
        feature_store.note_kept_clips(store)
    stream.tidy_interrupted_writes([store], started_wall=started_wall)

    report = ExtractionReport(store=store)
    report.skipped, todo = stream.split_done(ids, feature_store.video_ids(store))
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
    committer = _Committer(store, settings, spec, truth, todo, report)
    committer.new_failures.extend(list_failures)
    tracker = VideoTracker(clip_len=spec.clip_len, stride=sampling.stride, cells=committer_cells(settings))
    stream.run_job(committer, tracker, settings, spec, sampling, what="extraction")
    report.seconds = time.monotonic() - started
    return report


def committer_cells(settings: ExtractionSettings) -> int:
    return settings.grid**2 if settings.grid > 1 else 0
