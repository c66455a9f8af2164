"""Clip batches -> features: the model callable for ``ray.data.Dataset.map_batches``.

The CPU side (decoding, resizing, cropping) hands over uint8 ``(B, T, H, W, 3)``
RGB clips; everything after that happens here, on the model's device: the
uint8 -> float conversion, normalisation and the ``(B, T, H, W, C) -> (B, C,
T, H, W)`` layout change, so only a quarter of the bytes cross the PCIe bus.

Usable without Ray: ``ClipFeatureExtractor("r3d_18", None)({"clip": clips, ...})``.

Rows whose ``kind`` column is not ``"clip"`` (the decode stage's end rows) pass
through with zero features and cost no model time. ``post``: a callable applied
to every output batch on the actor (e.g. a scorer head), so a pipeline can run
more than the backbone on the workers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import numpy as np
import torch

from anomaly.errors import AnomalyError
from anomaly.extractors.registry import BackboneSpec, get_backbone, load_backbone

logger = logging.getLogger(__name__)

CLIP_COLUMN = "clip"
FEATURES_COLUMN = "features"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when this process sees a GPU, else CPU; an explicit CUDA without a GPU is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise AnomalyError("device", f"not a device: {device!r} ({exc})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AnomalyError("device", f"{device!r} requested but this process sees no CUDA GPU")
    return resolved


def preprocess_clips(clips: np.ndarray, spec: BackboneSpec, device: str | torch.device) -> torch.Tensor:
    """uint8 ``(B, T, H, W, 3)`` RGB clips -> normalised float32 ``(B, 3, T, H, W)`` on ``device``.

    ``(T, H, W)`` must be the spec's ``(clip_len, *crop)``: the CPU side resizes
    and crops, this only normalises. Normalisation is computed on the 0..255
    values, ``(x - 255 * mean) / (255 * std)``, which equals
    ``(x / 255 - mean) / std`` and keeps C3D's ``x - mean_pixel`` exact.
    """
    device = torch.device(device)
    array = np.asarray(clips)
    if array.dtype == object:  # a ragged-looking column of equal-shape clips, e.g. a list of arrays
        array = np.stack(list(array))
    expected = (spec.clip_len, *spec.crop, 3)
    if array.dtype != np.uint8 or array.ndim != 5 or tuple(array.shape[1:]) != expected:
        raise AnomalyError(
            CLIP_COLUMN,
            f"backbone {spec.name!r} expects uint8 clips of shape (B, {', '.join(map(str, expected))}); "
            f"got {array.dtype} {tuple(array.shape)}",
        )
    if not array.flags.writeable:  # Ray hands out read-only views; torch.from_numpy wants writable memory
        array = array.copy()
    x = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).mul_(255.0)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).mul_(255.0)
    x = x.float().sub_(mean).div_(std)  # channels last: mean/std broadcast over the last axis
    if spec.channel_order == "BGR":
        x = x.flip(-1)
    elif spec.channel_order != "RGB":
        raise ValueError(f"unknown channel order {spec.channel_order!r} in spec {spec.name!r}")
    return x.permute(0, 4, 1, 2, 3).contiguous()


def _autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp or device.type != "cuda":
        return None  # CPU runs float32: autocast there is slower for 3D convs and changes the numbers
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class ClipFeatureExtractor:
    """Callable class for ``ray.data`` ``map_batches``: loads the model once, runs batches under inference mode.

    Input batch: ``"clip"`` uint8 ``(B, T, H, W, 3)`` RGB, already resized and
    cropped to the spec's size; any other column passes through unchanged.
    Output: the same columns without ``"clip"``, plus ``"features"`` float32 ``(B, D)``.
    With ``crops=10`` the clips are ``(B, 10, T, H, W, 3)`` (:mod:`anomaly.crops`) and
    the features ``(B, 10, D)``.
    """

    def __init__(
        self,
        backbone: str,
        weights: str | None,
        *,
        crop: tuple[int, int] | None = None,
        clip_len: int | None = None,
        device: str = "auto",
        amp: bool = True,
        require_gpu: bool = False,
        post: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
        crops: int = 1,
    ) -> None:
        self.crops = crops
        self.device = resolve_device(device)
        if require_gpu and self.device.type != "cuda":
            # Ray reserved a GPU for this actor but torch cannot use it: refuse a 100x slower CPU run.
            raise AnomalyError(
                "num_gpus_per_actor",
                f"GPUs were asked for, but torch on this node sees no CUDA device (device {self.device}, "
                f"torch {torch.__version__}, CUDA build {torch.version.cuda})",
            )
        self.post = post
        spec = get_backbone(backbone)
        self.spec = spec.with_input_size(crop=crop, clip_len=clip_len)
        self.model, self.weights_sha256 = load_backbone(backbone, weights, device=self.device)
        self.amp_dtype = _autocast_dtype(self.device, amp)
        logger.info(
            "extractor %s on %s: %d frames of %dx%d, autocast %s, weights %s",
            backbone,
            self.device,
            self.spec.clip_len,
            *self.spec.crop,
            self.amp_dtype,
            self.weights_sha256,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if CLIP_COLUMN not in batch:
            raise AnomalyError("batch", f"no {CLIP_COLUMN!r} column; columns are {sorted(batch)}")
        out = {key: value for key, value in batch.items() if key != CLIP_COLUMN}
        clips = batch[CLIP_COLUMN]
        rows = np.arange(len(clips))
        if "kind" in batch:  # end rows of the decode stage: no model work
            rows = np.flatnonzero(np.asarray(batch["kind"]).astype(str) == "clip")
        shape = (self.spec.feature_dim,) if self.crops == 1 else (self.crops, self.spec.feature_dim)
        features = np.zeros((len(clips), *shape), dtype=np.float32)
        if rows.size:
            features[rows] = self._features(clips if rows.size == len(clips) else np.asarray(clips)[rows])
        out[FEATURES_COLUMN] = features
        return self.post(out) if self.post is not None else out

    def _features(self, clips: np.ndarray) -> np.ndarray:
        if self.crops > 1:  # (B, crops, T, H, W, 3): every crop is a clip of its own through the model
            array = np.asarray(clips)
            if array.dtype == object:
                array = np.stack(list(array))
            if array.ndim != 6 or array.shape[1] != self.crops:
                raise AnomalyError(
                    CLIP_COLUMN, f"expected (B, {self.crops}, T, H, W, 3) clips, got {tuple(array.shape)}"
                )
            flat = self._model_features(array.reshape(-1, *array.shape[2:]))
            return flat.reshape(array.shape[0], self.crops, -1)
        return self._model_features(clips)

    def _model_features(self, clips: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = preprocess_clips(clips, self.spec, self.device)
            autocast = (
                torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
                if self.amp_dtype is not None
                else contextlib.nullcontext()
            )
            with autocast:
                features = self.model(x)
            return features.float().cpu().numpy()
