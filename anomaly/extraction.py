"""Videos -> clip features -> 32 segments per video -> the feature store, streamed with Ray Data.

Pipeline (one Ray Data dataset, no hand-made pools or queues)::

    from_items([{uri, video_id}], one block per video)
      -> flat_map(decode_video)         CPU tasks: probe, then stream clips (one row per clip)
      -> map_batches(ClipFeatureExtractor, compute=ActorPoolStrategy(min, max), batch_size, num_gpus)
                                        model actors: clips of many videos in one batch -> features (D,)
      -> iter_batches() in the driver   fold features into each video's 32 segments; commit whole videos

Why the grouping stage is a driver-side fold and not ``groupby``:
``groupby(video_id)`` is a shuffle, i.e. a barrier: nothing is written until every
clip of every video has been through the model, and each group (all clip
features of a video) must sit in one worker. The fold instead consumes the
streamed feature rows as they arrive (in any order, from any actor), keeps per
in-flight video only a ``(32, D)`` running sum (clips are added straight into
their segment, because the segment boundaries follow from the clip count every
row carries), and commits a video the moment its last clip is in. Memory is
therefore bounded by the number of videos in flight times ``32 x D`` floats,
whatever the length of a video or of the dataset; Ray Data's backpressure
bounds the decoded clips in flight. Finished videos are buffered and written
every ``flush_every`` videos as one atomic part file (:func:`anomaly.store.write_rows`),
so a killed job loses at most the buffered videos, never writes a partial one,
and a re-run skips what is committed (resume).

Failure handling: the decode stage never raises for bad input. A video that
cannot be probed or decoded yields one *error row* (the reason, a zero clip so
the batch stays rectangular, and no real clip). The last clip of a video is
held back until its decoder has finished cleanly, so a video whose decoding
fails part-way can never look complete: it is committed only when all of its
``num_clips`` clips are in, and dropped (recorded as failed) when an error row
arrives or clips are missing at the end. Failures go to ``STORE/_failures.parquet``
with a one-line reason and the stage (``list``, ``decode``, ``group``); a
success clears an old failure of the same URI.

Settings that decide what the features mean (backbone, weights hash, clip
length, stride, crop, resize) are written to ``STORE/_store.json`` before any
work, and a store made with other settings is refused before anything is written.
"""

from __future__ import annotations

import logging
import posixpath
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from anomaly import store as feature_store
from anomaly import uris
from anomaly.errors import AnomalyError
from anomaly.extractors import BackboneSpec, ClipFeatureExtractor, get_backbone, load_backbone
from anomaly.ground_truth import GroundTruth
from anomaly.segments import NUM_SEGMENTS, l2_normalize, pool_segments, segment_bounds

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".ts")
LIST_FILE_EXTENSIONS = (".txt",)

# Columns of the rows between the stages (besides "clip" before the model and "features" after it).
# "cell" is -1 for the full-frame clip and 0..G*G-1 for the cells of a grid run (anomaly.grid).
ROW_COLUMNS = ("video_id", "uri", "clip_index", "cell", "num_clips", "num_frames", "fps", "error")


# --------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ExtractionSettings:
    """How to turn videos into features; the defaults suit a CPU run of a handful of videos.

    ``weights``: a local path or any fsspec URI of a state dict, or ``None``/``"none"``
    for the seeded random initialisation (tests, smoke runs; recorded as such).
    ``clip_len``/``crop``: ``None`` keeps the backbone's own input size; giving
    them runs the backbone at another size (CPU demos, tests).
    ``stride``: frames between clip starts; ``None`` = ``clip_len`` (non-overlapping clips, as Sultani et al.).
    ``concurrency``: ``(min, max)`` model actors (Ray Data's ``ActorPoolStrategy``).
    ``flush_every``: finished videos per part file; smaller loses less on a kill, larger makes fewer files.
    ``fps``: frame rate of inputs that state none: frame folders (default there
    :data:`anomaly.frame_folder.DEFAULT_FPS`) and containers without a rate (else left empty).
    A container's own rate always wins.
    ``grid``: ``G > 1`` also extracts ``G x G`` per-cell features into ``features_grid``
    (:mod:`anomaly.grid`); the ``features`` column stays the full frame's.
    """

    backbone: str
    weights: str | None = None
    clip_len: int | None = None
    stride: int | None = None
    crop: tuple[int, int] | None = None
    batch_size: int = 16
    num_gpus_per_actor: float = 0.0
    num_cpus_per_actor: float = 1.0
    concurrency: tuple[int, int] = (1, 1)
    decode_num_cpus: float = 1.0
    device: str = "auto"
    amp: bool = True
    flush_every: int = 16
    fps: float | None = None
    grid: int = 1

    @property
    def random_weights(self) -> bool:
        return self.weights is None or str(self.weights).strip().lower() == "none"

    def spec(self) -> BackboneSpec:
        """The backbone's spec at this run's input size (refuses sizes the architecture cannot take)."""
        return get_backbone(self.backbone).with_input_size(crop=self.crop, clip_len=self.clip_len)

    def effective_stride(self, spec: BackboneSpec) -> int:
        return spec.clip_len if self.stride is None else self.stride

    def validate(self) -> BackboneSpec:
        spec = self.spec()
        checks = [
            ("--stride", self.stride is None or (isinstance(self.stride, int) and self.stride >= 1)),
            ("--batch-size", isinstance(self.batch_size, int) and self.batch_size >= 1),
            ("--num-gpus-per-actor", self.num_gpus_per_actor >= 0),
            ("--flush-every", isinstance(self.flush_every, int) and self.flush_every >= 1),
            ("--fps-default", self.fps is None or self.fps > 0),
            ("--grid", isinstance(self.grid, int) and 1 <= self.grid <= 8),
        ]
        for where, ok in checks:
            if not ok:
                raise AnomalyError(where, f"invalid value in {self!r}")
        low, high = self.concurrency
        if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
            raise AnomalyError("--concurrency", f"expected 1 <= MIN <= MAX, got {low},{high}")
        return spec


@dataclass
class ExtractionReport:
    """What one run did; ``summary()`` is the line the command prints."""

    store: str
    extracted: list[str] = field(default_factory=list)  # video ids committed by this run
    skipped: list[str] = field(default_factory=list)  # video ids already in the store
    failed: list[dict] = field(default_factory=list)  # {uri, video_id, reason, stage}
    num_clips: int = 0
    seconds: float = 0.0  # wall time of the whole call
    first_commit_seconds: float | None = None  # from the start of the call to the first finished video
    part_files: list[str] = field(default_factory=list)

    @property
    def all_failed(self) -> bool:
        """True when there was work and none of it succeeded (the command exits 1)."""
        return bool(self.failed) and not self.extracted and not self.skipped

    @property
    def failures_uri(self) -> str:
        return uris.join(self.store, feature_store.FAILURES_FILE)

    def summary(self) -> str:
        return (
            f"{len(self.extracted)} extracted, {len(self.skipped)} skipped as done, "
            f"{len(self.failed)} failed — see {self.failures_uri}"
        )


# ---------------------------------------------------------------------------------------------- listing


def _with_protocol(source: str, path: str) -> str:
    """A path from ``fs.find`` back as a URI of the same scheme as ``source``."""
    if uris.is_local(source) or "://" in path:
        return path
    return f"{source.split('://', 1)[0]}://{path}"


def _hidden(relative: str) -> bool:
    """True when any component of a path below the listed root starts with ``.`` or ``_``."""
    return any(part.startswith((".", "_")) for part in relative.replace("\\", "/").split("/") if part)


def _read_list_file(uri: str) -> list[str]:
    try:
        text = uris.read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AnomalyError(uri, f"list file is not UTF-8 text: {exc}") from exc
    base = uri.rsplit("/", 1)[0] if "/" in uri.replace("\\", "/") else "."
    out = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if "://" not in entry and not entry.startswith("/"):  # relative: next to the list file
            entry = uris.join(base, entry)
        out.append(entry)
    return out


def list_videos(videos: str | Sequence[str]) -> list[str]:
    """Video URIs from a folder or prefix (recursive), a ``.txt`` list file, one video, or a list of URIs.

    Under a folder or prefix, a video is a file with a video extension
    (:data:`VIDEO_EXTENSIONS`, any case) or a *frame folder*: a folder that
    directly holds image files (:mod:`anomaly.frame_folder`); anything below a
    hidden (``.``) or ``_`` name is skipped. A folder that itself holds images
    is one video. A list file or a Python list is taken as given (one URI per
    line; blank lines and ``#`` comments skipped; relative lines are relative
    to the list file). Sorted, repeated URIs removed.
    """
    from anomaly.frame_folder import folder_has_frames, is_image_name

    if not isinstance(videos, str):
        found = [str(v) for v in videos]
    elif videos.lower().endswith(LIST_FILE_EXTENSIONS):
        found = _read_list_file(videos)
    else:
        fs, path = uris.filesystem(videos)
        if not fs.exists(path):
            raise AnomalyError(videos, "no such folder, file or prefix")
        if fs.isfile(path) or folder_has_frames(fs, path):
            found = [videos.rstrip("/") or videos]
        else:
            root = path.rstrip("/")
            paths = set()
            for name in fs.find(path):
                relative = name[len(root) :] if name.startswith(root) else name
                if _hidden(relative):
                    continue
                if name.lower().endswith(VIDEO_EXTENSIONS):
                    paths.add(name)
                elif is_image_name(name):
                    paths.add(posixpath.dirname(name))  # its folder is the video
            found = [_with_protocol(videos, p) for p in paths]
    found = sorted(dict.fromkeys(found))
    if not found:
        where = videos if isinstance(videos, str) else "videos"
        raise AnomalyError(where, f"no videos found (files {', '.join(VIDEO_EXTENSIONS)} or image folders)")
    return found


def sanity_check(video_uris: Sequence[str]) -> tuple[dict[str, str], list[dict]]:
    """Map video id -> URI; refuse duplicate ids (two files would write one row); unusable names fail.

    Returns ``(ids, failures)``. Raises :class:`AnomalyError` listing the
    duplicates before any work starts.
    """
    from anomaly.video import video_id_from_uri

    ids: dict[str, list[str]] = {}
    failures = []
    for uri in video_uris:
        try:
            ids.setdefault(video_id_from_uri(uri), []).append(uri)
        except AnomalyError as exc:
            failures.append({"uri": uri, "video_id": None, "reason": exc.what, "stage": "list"})
    duplicates = {vid: found for vid, found in ids.items() if len(found) > 1}
    if duplicates:
        shown = "; ".join(f"{vid}: {', '.join(found)}" for vid, found in sorted(duplicates.items())[:5])
        more = f" (+{len(duplicates) - 5} more)" if len(duplicates) > 5 else ""
        raise AnomalyError(
            "videos", f"{len(duplicates)} duplicate video ids (ids are file stems): {shown}{more}"
        )
    return {vid: found[0] for vid, found in ids.items()}, failures


# ----------------------------------------------------------------------------------------- decode stage


def _error_row(row: dict, reason: str, zero_clip: np.ndarray) -> dict:
    return {
        "video_id": row["video_id"],
        "uri": row["uri"],
        "clip_index": -1,
        "cell": -1,
        "num_clips": 0,
        "num_frames": -1,
        "fps": float("nan"),
        "error": reason or "unknown error",
        "clip": zero_clip,
    }


def decode_video(
    row: dict, *, spec: BackboneSpec, stride: int, fps: float | None = None, grid: int = 1
) -> Iterator[dict]:
    """Ray Data ``flat_map`` generator: one video -> one row per clip, or one error row. Never raises.

    Clip rows carry ``num_clips`` (from :func:`anomaly.video.clip_starts` on the
    probed frame count) so the grouping stage knows when a video is complete.
    The last clip is held back until the decoder has finished without error, so
    a part-way failure always leaves the video short of clips. With ``grid > 1``
    every clip row (``cell`` -1) is followed by its ``G*G`` cells (``cell`` 0..G*G-1,
    see :func:`anomaly.grid.grid_clips`), held back together.
    """
    from anomaly.grid import grid_clips
    from anomaly.video import clip_starts, iter_clips, probe_video

    zero_clip = np.zeros((spec.clip_len, *spec.crop, 3), dtype=np.uint8)
    uri = row["uri"]
    try:
        info = probe_video(uri, fps=fps)  # fps: for inputs that state none (frame folders)
        num_clips = len(clip_starts(info.num_frames, spec.clip_len, stride))
        base = {
            "video_id": row["video_id"],
            "uri": uri,
            "num_clips": num_clips,
            "num_frames": info.num_frames,
            "fps": float(info.fps),
            "error": "",
        }
        size = spec.resized_shape(info.height, info.width)
        held: list[dict] | None = None
        decoded = 0
        cells = grid_clips(uri, spec=spec, stride=stride, grid=grid) if grid > 1 else None
        for clip in iter_clips(uri, clip_len=spec.clip_len, stride=stride, size=size, crop=spec.crop):
            if clip.index >= num_clips:
                yield _error_row(row, f"decoded more clips than the probe counted ({num_clips})", zero_clip)
                return
            if held is not None:
                yield from held
            held = [{**base, "clip_index": clip.index, "cell": -1, "clip": clip.frames}]
            if cells is not None:
                tiles = next(cells, None)
                if tiles is None:
                    yield _error_row(row, f"the grid pass ended after {clip.index} clips", zero_clip)
                    return
                held += [
                    {**base, "clip_index": clip.index, "cell": k, "clip": t} for k, t in enumerate(tiles)
                ]
            decoded += 1
        if decoded != num_clips:
            reason = (
                f"decoded {decoded} clips, the probe counted {info.num_frames} frames ({num_clips} clips)"
            )
            yield _error_row(row, reason, zero_clip)
            return
        yield from held
    except AnomalyError as exc:
        yield _error_row(row, exc.what, zero_clip)
    except Exception as exc:  # noqa: BLE001 - one bad video must not end a job over thousands
        logger.exception("%s: unexpected error while decoding", uri)
        first = (str(exc).strip().splitlines() or [""])[0]
        yield _error_row(row, f"unexpected {type(exc).__name__}: {first}", zero_clip)


# -------------------------------------------------------------------------------------------- grouping


class SegmentAccumulator:
    """The clip features of one video, folded into its 32 segments as they arrive, in any order.

    With ``num_clips >= 32`` every segment holds at least one clip, so a
    running ``(32, D)`` sum per segment is all that is kept (memory independent
    of the video's length); with fewer clips the few rows are kept and pooled
    by :func:`anomaly.segments.pool_segments` (empty runs repeat a clip). Both
    give Sultani's segments; a clip seen twice (a retried task) counts once.
    """

    def __init__(self, num_clips: int, dim: int) -> None:
        if num_clips < 1:
            raise ValueError(f"a video needs at least one clip, got {num_clips}")
        self.num_clips = num_clips
        self.seen = np.zeros(num_clips, dtype=bool)
        self.count = 0
        if num_clips < NUM_SEGMENTS:
            self.rows: np.ndarray | None = np.zeros((num_clips, dim), dtype=np.float32)
        else:
            self.rows = None
            bounds = segment_bounds(num_clips)
            self.bounds = bounds
            self.sums = np.zeros((NUM_SEGMENTS, dim), dtype=np.float64)
            self.sizes = np.diff(bounds).astype(np.float64)

    def add(self, clip_index: np.ndarray, features: np.ndarray) -> None:
        index = np.asarray(clip_index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.num_clips):
            raise ValueError(f"clip index out of range 0..{self.num_clips - 1}")
        index, first = np.unique(index, return_index=True)
        fresh = ~self.seen[index]
        index, feats = index[fresh], np.asarray(features, dtype=np.float32)[first[fresh]]
        self.seen[index] = True
        self.count += int(index.size)
        if self.rows is not None:
            self.rows[index] = feats
        else:
            segments = np.searchsorted(self.bounds, index, side="right") - 1
            np.add.at(self.sums, segments, feats)

    @property
    def complete(self) -> bool:
        return self.count == self.num_clips

    def pooled(self) -> np.ndarray:
        """``(32, D)`` float32, L2-normalised segments; only once :attr:`complete`."""
        if not self.complete:
            raise ValueError(f"only {self.count} of {self.num_clips} clips are in")
        if self.rows is not None:
            return pool_segments(self.rows)
        return l2_normalize((self.sums / self.sizes[:, None]).astype(np.float32))


@dataclass
class _InFlight:
    uri: str
    num_frames: int
    fps: float
    clips: SegmentAccumulator
    cells: list[SegmentAccumulator] = field(default_factory=list)  # grid runs: one per cell

    @property
    def complete(self) -> bool:
        return self.clips.complete and all(cell.complete for cell in self.cells)


class VideoCommitter:
    """Driver side: fold feature rows into videos, buffer finished rows, flush them as part files."""

    def __init__(
        self,
        store: str,
        settings: ExtractionSettings,
        spec: BackboneSpec,
        truth: GroundTruth,
        todo: dict[str, str],
        report: ExtractionReport,
        *,
        started: float | None = None,
    ) -> None:
        self.store, self.settings, self.spec, self.truth = store, settings, spec, truth
        self.todo, self.report = todo, report
        self.in_flight: dict[str, _InFlight] = {}
        self.finished: set[str] = set()  # committed or failed: later rows of these are ignored
        self.buffer: list[dict] = []
        self.new_failures: list[dict] = []
        self.started = time.monotonic() if started is None else started
        # Progress counts this committer's videos only (list-stage failures are in the report, not in todo).
        self.counted_before = len(report.extracted) + len(report.failed)

    # rows -> videos
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
            self.add_clips(video_id, batch, rows)

    def add_clips(self, video_id: str, batch: dict[str, np.ndarray], rows: np.ndarray) -> None:
        first = rows[0]
        video = self.in_flight.get(video_id)
        if video is None:
            video = _InFlight(
                uri=str(batch["uri"][first]),
                num_frames=int(batch["num_frames"][first]),
                fps=float(batch["fps"][first]),
                clips=SegmentAccumulator(int(batch["num_clips"][first]), self.spec.feature_dim),
                cells=[
                    SegmentAccumulator(int(batch["num_clips"][first]), self.spec.feature_dim)
                    for _ in range(self.settings.grid**2 if self.settings.grid > 1 else 0)
                ],
            )
            self.in_flight[video_id] = video
        index = np.asarray(batch["clip_index"])[rows]
        features = np.asarray(batch["features"])[rows]
        cell = np.asarray(batch["cell"])[rows] if "cell" in batch else np.full(len(rows), -1)
        try:
            video.clips.add(index[cell < 0], features[cell < 0])
            for k in np.unique(cell[cell >= 0]):
                if k >= len(video.cells):
                    raise ValueError(f"cell {k} of a {len(video.cells)}-cell grid")
                video.cells[k].add(index[cell == k], features[cell == k])
        except ValueError as exc:
            self.fail(video_id, str(exc), "group")
            return
        if video.complete:
            self.commit(video_id, self.in_flight.pop(video_id))

    def commit(self, video_id: str, video: _InFlight) -> None:
        try:
            row = self.truth.describe(video_id)
        except AnomalyError as exc:  # ground truth that does not know this video
            self.fail(video_id, exc.what, "annotations")
            return
        known = row.get("num_frames")
        if known is not None and known != video.num_frames:
            logger.info(
                "%s: %d decodable frames, the frame-counts file says %d; keeping %d",
                video_id,
                video.num_frames,
                known,
                video.num_frames,
            )
        fps = video.fps if np.isfinite(video.fps) and video.fps > 0 else self.settings.fps
        row.update(
            video_id=video_id,
            num_frames=video.num_frames,
            backbone=self.settings.backbone,
            features=video.clips.pooled(),
            features_grid=np.stack([cell.pooled() for cell in video.cells]) if video.cells else None,
            fps=fps,
            source_uri=video.uri,
        )
        self.buffer.append(row)
        if self.report.first_commit_seconds is None:
            self.report.first_commit_seconds = time.monotonic() - self.started
        self.finished.add(video_id)
        self.report.extracted.append(video_id)
        self.report.num_clips += video.clips.num_clips
        done = len(self.report.extracted) + len(self.report.failed) - self.counted_before
        logger.info(
            "[%d/%d] %s: %d clips (%.1f s elapsed)",
            done,
            len(self.todo),
            video_id,
            video.clips.num_clips,
            time.monotonic() - self.started,
        )
        if len(self.buffer) >= self.settings.flush_every:
            self.flush()

    def fail(self, video_id: str, reason: str, stage: str) -> None:
        self.in_flight.pop(video_id, None)
        self.finished.add(video_id)
        uri = self.todo.get(video_id, "")
        failure = {"uri": uri, "video_id": video_id, "reason": reason, "stage": stage}
        self.new_failures.append(failure)
        self.report.failed.append(failure)
        done = len(self.report.extracted) + len(self.report.failed) - self.counted_before
        logger.warning("[%d/%d] %s failed (%s): %s", done, len(self.todo), uri, stage, reason)

    def finish(self) -> None:
        """End of stream: whatever is still open is missing clips; videos with no rows at all are lost."""
        for video_id, video in list(self.in_flight.items()):
            self.fail(video_id, f"incomplete: {video.clips.count} of {video.clips.num_clips} clips", "group")
        for video_id in self.todo:
            if video_id not in self.finished:
                self.fail(video_id, "no output from the decode stage", "group")

    def flush(self) -> None:
        """Write buffered videos as one atomic part file, then bring ``_failures.parquet`` up to date."""
        if self.buffer:
            part = feature_store.write_rows(self.store, self.buffer)
            if part:
                self.report.part_files.append(part)
            feature_store.clear_failures(self.store, [row["source_uri"] for row in self.buffer])
            logger.info("committed %d videos to %s", len(self.buffer), part)
            self.buffer = []
        if self.new_failures:
            feature_store.record_failures(self.store, self.new_failures)
            self.new_failures = []


# ------------------------------------------------------------------------------------------- the entry

_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]")


def _refuse_unsafe_ids(ids: Mapping[str, str]) -> None:
    """Ids given by a caller must be one safe name each, like the ids derived from file names."""
    bad = [vid for vid in ids if vid in ("", ".", "..") or vid.startswith(".") or _UNSAFE_ID.search(vid)]
    if bad:
        shown = ", ".join(repr(vid) for vid in bad[:5])
        raise AnomalyError(
            "videos",
            f"{len(bad)} video ids are not safe names (empty, '.', '..', hidden, a path separator or a "
            f"control character): {shown}",
        )


def _weights_tag(settings: ExtractionSettings) -> str:
    """sha256 of the weights after checking they load into the backbone, or ``"random"`` (loudly)."""
    if settings.random_weights:
        logger.warning(
            "RANDOM WEIGHTS: %s is randomly initialised (seed fixed); its features carry no learned "
            "meaning. Use them for tests and smoke runs only; pass --weights for real extraction.",
            settings.backbone,
        )
        return "random"
    # Load once here, so a wrong or unreadable file is one line before any work, not an actor crash.
    model, tag = load_backbone(settings.backbone, settings.weights, device="cpu")
    del model
    return tag


def store_settings(
    settings: ExtractionSettings, spec: BackboneSpec, weights_sha256: str
) -> feature_store.StoreMetadata:
    """What ``_store.json`` records for an extraction run."""
    return feature_store.StoreMetadata(
        backbone=settings.backbone,
        feature_dim=spec.feature_dim,
        weights_sha256=weights_sha256,
        random_weights=settings.random_weights,
        clip_len=spec.clip_len,
        stride=settings.effective_stride(spec),
        crop=tuple(spec.crop),
        resize=tuple(spec.resize),
        grid=settings.grid if settings.grid > 1 else None,  # absent without a grid: old stores match
        source="extract",
    )


def build_dataset(todo: dict[str, str], settings: ExtractionSettings, spec: BackboneSpec):
    """The Ray Data pipeline for the videos in ``todo`` (id -> URI): feature rows, streamed."""
    import ray

    items = [{"uri": uri, "video_id": video_id} for video_id, uri in todo.items()]
    low, high = settings.concurrency
    ds = ray.data.from_items(items, override_num_blocks=len(items))  # one decode task per video
    ds = ds.flat_map(
        decode_video,
        fn_kwargs={
            "spec": spec,
            "stride": settings.effective_stride(spec),
            "fps": settings.fps,
            "grid": settings.grid,
        },
        num_cpus=settings.decode_num_cpus,
    )
    return ds.map_batches(
        ClipFeatureExtractor,
        fn_constructor_args=(settings.backbone, settings.weights),
        fn_constructor_kwargs={
            "crop": spec.crop,
            "clip_len": spec.clip_len,
            "device": settings.device,
            "amp": settings.amp,
        },
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
        batch_size=settings.batch_size,
        batch_format="numpy",
        num_cpus=settings.num_cpus_per_actor,
        num_gpus=settings.num_gpus_per_actor or None,
    )


def extract(
    videos: str | Sequence[str] | Mapping[str, str],
    store: str,
    settings: ExtractionSettings,
    truth: GroundTruth | None = None,
) -> ExtractionReport:
    """Extract the features of every video not yet in ``store``; see the module docstring.

    Order: check the settings, list the videos and refuse duplicate ids, check
    the weights, record (or check against) ``_store.json`` — all before any
    video is touched — then stream the rest and commit whole videos.
    """
    started = time.monotonic()
    started_wall = time.time()
    truth = truth if truth is not None else GroundTruth()
    spec = settings.validate()
    if isinstance(videos, Mapping):  # ids given by the caller (data sets whose ids are not file stems)
        ids, list_failures = {str(k): str(v) for k, v in videos.items()}, []
        if not ids:
            raise AnomalyError("videos", "no videos given")
        _refuse_unsafe_ids(ids)
    else:
        ids, list_failures = sanity_check(list_videos(videos))
    weights_sha256 = _weights_tag(settings)
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
    logger.info(
        "%d videos: %d already in %s, %d to extract with %s (%d frames x %dx%d, stride %d, weights %s)",
        len(ids),
        len(report.skipped),
        store,
        len(todo),
        settings.backbone,
        spec.clip_len,
        *spec.crop,
        settings.effective_stride(spec),
        weights_sha256[:12],
    )
    committer = VideoCommitter(store, settings, spec, truth, todo, report, started=started)
    committer.new_failures.extend(list_failures)
    try:
        if todo:
            for batch in build_dataset(todo, settings, spec).iter_batches(
                batch_size=None, batch_format="numpy"
            ):
                committer.consume(batch)
            committer.finish()
    finally:
        # Buffered rows are whole videos: writing them on the way out (an error, Ctrl-C) keeps finished work.
        committer.flush()
    report.seconds = time.monotonic() - started
    return report
