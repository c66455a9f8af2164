"""How to turn videos into features (:class:`ExtractionSettings`) and what a run did (:class:`ExtractionReport`).

Settings that decide what the features mean (backbone, weights hash, clip
length, stride, crop, resize, grid) are written to ``STORE/_store.json`` before
any work (:func:`store_settings`); a store made with other settings is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from anomaly import store as feature_store
from anomaly import uris
from anomaly.cluster import DEFAULT_WAIT_SECONDS
from anomaly.crops import check_crops
from anomaly.errors import AnomalyError
from anomaly.extractors import BackboneSpec, get_backbone, load_backbone

logger = logging.getLogger(__name__)

CPU_BATCH_SIZE = 16
# Clips per model call on one GPU by default: large enough to keep an A10G-class GPU busy at the
# backbone's native input size, small enough for 24 GB in float16 (c3d 16x112x112, i3d 64x224x224).
GPU_BATCH_SIZES = {"c3d": 64, "r3d_18": 64, "i3d": 16}


@dataclass(frozen=True)
class ExtractionSettings:
    """How to turn videos into features; the defaults suit a CPU run of a handful of videos.

    ``weights``: a local path or any fsspec URI of a state dict, or ``None``/``"none"``
    for the seeded random initialisation (tests, smoke runs; recorded as such).
    ``clip_len``/``crop``: ``None`` keeps the backbone's own input size; giving
    them runs the backbone at another size (CPU demos, tests).
    ``stride``: frames between clip starts; ``None`` = ``clip_len`` (non-overlapping clips, as Sultani et al.).
    ``concurrency``: ``(min, max)`` model actors (Ray Data's ``ActorPoolStrategy``); ``None``: one
    actor on CPU, and on GPU an unbounded pool from 1 that Ray Data grows to every GPU the cluster
    has or its autoscaler can add, and shrinks when idle (:meth:`actor_pool`).
    ``batch_size``: clips per model call; ``None``: 16 on CPU, the backbone's GPU default on GPU
    (:data:`GPU_BATCH_SIZES`).
    ``wait_for_resources``: seconds a job waits for nodes holding one model actor and one decode
    task (GPU workers that the autoscaler starts on demand) before it stops with one line.
    ``keep_clips``: keep the clip table of committed videos (for pooling again with other
    segment counts); by default a committed video's clip files are removed.
    ``flush_every``: finished videos per part file; smaller loses less on a kill, larger makes fewer files.
    ``fps``: frame rate of inputs that state none: frame folders (default there
    :data:`anomaly.video.frame_folder.DEFAULT_FPS`) and containers without a rate (else left empty).
    A container's own rate always wins.
    ``window_seconds``: a video longer than 1.5 windows (by its container's
    duration) is split into windows of this length, each its own decode task,
    pooled back into one video; 0 keeps every video one task.
    ``grid``: ``G > 1`` also extracts ``G x G`` per-cell features into ``features_grid``
    (:mod:`anomaly.localization`); the ``features`` column stays the full frame's.
    ``crops``: 1, the centre crop; 10, the ten crops of the RTFM-era releases
    (:mod:`anomaly.crops`), stored in ``features_crops`` with their mean in ``features``.
    """

    backbone: str
    weights: str | None = None
    clip_len: int | None = None
    stride: int | None = None
    crop: tuple[int, int] | None = None
    batch_size: int | None = None
    num_gpus_per_actor: float = 0.0
    num_cpus_per_actor: float = 1.0
    concurrency: tuple[int, int] | None = None
    decode_num_cpus: float = 1.0
    device: str = "auto"
    amp: bool = True
    flush_every: int = 16
    fps: float | None = None
    grid: int = 1
    window_seconds: float = 300.0
    wait_for_resources: float = DEFAULT_WAIT_SECONDS
    keep_clips: bool = False
    crops: int = 1

    @property
    def on_gpu(self) -> bool:
        return self.num_gpus_per_actor > 0 and str(self.device) != "cpu"

    def effective_batch_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return GPU_BATCH_SIZES.get(self.backbone, 32) if self.on_gpu else CPU_BATCH_SIZE

    def actor_pool(self) -> tuple[int, int | None]:
        """``(min, max)`` model actors: the setting, else 1 on CPU, else 1..unbounded on GPU.

        Unbounded: Ray Data grows the pool while work queues up, to every GPU the cluster has
        or its autoscaler can add (Ray Data asks the autoscaler), and shrinks it when idle.
        """
        if self.concurrency is not None:
            return self.concurrency
        return (1, 1) if self.num_gpus_per_actor <= 0 else (1, None)

    def actor_bundle(self) -> dict[str, float]:
        """What one model actor reserves (the job waits for a node that holds it)."""
        return {"CPU": self.num_cpus_per_actor, "GPU": self.num_gpus_per_actor}

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
            (
                "stride",
                self.stride,
                self.stride is None or (isinstance(self.stride, int) and self.stride >= 1),
            ),
            (
                "batch_size",
                self.batch_size,
                self.batch_size is None or (isinstance(self.batch_size, int) and self.batch_size >= 1),
            ),
            ("wait_for_resources", self.wait_for_resources, self.wait_for_resources >= 0),
            ("num_gpus_per_actor", self.num_gpus_per_actor, self.num_gpus_per_actor >= 0),
            ("flush_every", self.flush_every, isinstance(self.flush_every, int) and self.flush_every >= 1),
            ("fps", self.fps, self.fps is None or self.fps > 0),
            ("grid", self.grid, isinstance(self.grid, int) and 1 <= self.grid <= 8),
            ("window_seconds", self.window_seconds, self.window_seconds >= 0),
            ("decode_num_cpus", self.decode_num_cpus, self.decode_num_cpus > 0),
        ]
        for where, value, ok in checks:
            if not ok:
                raise AnomalyError(where, f"invalid value {value!r}")
        check_crops(self.crops)
        if self.crops > 1 and self.grid > 1:
            raise AnomalyError("crops", "ten crops and a grid cannot be combined; choose one")
        if self.concurrency is None:
            return spec
        low, high = self.concurrency
        if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
            raise AnomalyError("concurrency", f"expected 1 <= MIN <= MAX, got {low},{high}")
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
    adopted: list[str] = field(default_factory=list)  # of `extracted`: clips a killed run had made

    @property
    def all_failed(self) -> bool:
        """True when there was work and none of it succeeded (the command exits 1)."""
        return bool(self.failed) and not self.extracted and not self.skipped

    @property
    def failures_uri(self) -> str:
        return uris.join(self.store, feature_store.FAILURES_FILE)

    def summary(self) -> str:
        reused = f" ({len(self.adopted)} from a killed run's clips)" if self.adopted else ""
        return (
            f"{len(self.extracted)} extracted{reused}, {len(self.skipped)} skipped as done, "
            f"{len(self.failed)} failed — see {self.failures_uri}"
        )


def warn_if_random(settings: ExtractionSettings) -> None:
    """Say loudly that features of random weights mean nothing (once a run is past its checks)."""
    if settings.random_weights:
        logger.warning(
            "RANDOM WEIGHTS: %s is randomly initialised (seed fixed); its features carry no learned "
            "meaning. Use them for tests and smoke runs only; give weights for real extraction.",
            settings.backbone,
        )


def weights_tag(settings: ExtractionSettings) -> str:
    """sha256 of the weights after checking they load into the backbone, or ``"random"``."""
    if settings.random_weights:
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
        crops=settings.crops if settings.crops > 1 else None,  # likewise for one crop
        source="extract",
    )
