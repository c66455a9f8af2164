"""Backbone registry: name -> architecture, input size, normalisation, feature width, weights loading.

Every backbone is a feature model: its classifier is removed and
``forward(x: (B, C, T, H, W) float) -> (B, feature_dim)``.

Where the numbers come from
---------------------------
* torchvision models (``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``s3d``,
  ``swin3d_t``, ``mvit_v2_s``): ``resize``, ``crop``, ``mean`` and ``std`` are
  read from the Kinetics-400 weight enum's own ``transforms()`` preset, and
  ``clip_len`` from the ``clip_len=N`` its ``meta["_docs"]`` states the
  accuracy was measured with. Both are available offline; nothing is
  downloaded (models are built with ``weights=None``).
* ``c3d``: Caffe convention of the Sports-1M model (Tran et al. 2015) that
  Sultani et al. used: frames resized to 128x171, 16x112x112 centre crop,
  pixel values 0..255 minus the Sports-1M mean, channels in BGR order (Caffe
  read frames with OpenCV; the DavideA/c3d-pytorch port keeps the Caffe
  weights as they are). The mean is the per-channel average of the Sports-1M
  mean cube, (B, G, R) = (90, 98, 102), the value PyTorch C3D pipelines use in
  place of the full cube. Expressed on [0, 1] RGB as ``mean = (102, 98, 90) /
  255`` and ``std = 1 / 255`` (so ``(x / 255 - mean) / std == x_255 -
  mean_255``), plus ``channel_order = "BGR"``, which the preprocessing applies
  after normalising.
* ``i3d``: as the Kinetics-I3D release and the feature extractors built on
  piergiaj/pytorch-i3d (RTFM, video_features): short side resized to 256,
  224x224 centre crop, values scaled to [-1, 1] (``mean = std = 0.5``), 16
  frames per clip as in the RTFM UCF-Crime features.

* ``r3d{10,18,34,50,101,152,200}_2017``: Hara et al.'s 3D-ResNets-PyTorch,
  2017 release (``resnet-34-kinetics.pth`` …, Kinetics-400): its test
  transform ``Scale(sample_size)``, ``CenterCrop(sample_size)`` with
  ``sample_size`` 112 and ``sample_duration`` 16 (``main.py``/``opts.py``),
  pixel values 0..255 (``ToTensor(norm_value=1)``) minus the ActivityNet mean
  (114.7748, 107.7354, 99.4750) (``mean.py`` ``get_mean(255, 'activitynet')``,
  the default ``--mean_dataset``), no division by a std (``--std_norm`` off).
  Expressed on [0, 1] RGB as ``mean = m / 255`` and ``std = 1 / 255``. The
  ResNet-34 is the network of Dubey et al.'s ranking-loss reproduction (the
  512-d features in ``ucf_crime_r3d34``).
* ``r3d{…}_2020``: the 2020 release (``r3d152_KM_200ep.pth`` …, Kinetics-700,
  Moments in Time and their unions): inference transform ``Resize(112)``,
  ``CenterCrop(112)``, ``ToTensor()`` (values in [0, 1]), ``Normalize`` with the
  Kinetics mean (0.4345, 0.4051, 0.3775) and std (0.2768, 0.2713, 0.2737)
  (``mean.py`` ``get_mean_std(1, 'kinetics')``), 16 frames.
* ``i3d_r50``: I3D ResNet-50 of the non-local repository (Tushar-N/pytorch-resnet3d
  port, ``i3d_r50_kinetics.pth``) with the preprocessing of
  GowthamGottimukkala/I3D_Feature_Extraction_resnet, the extractor behind the
  RTFM-era UCF-Crime features: every frame resized to exactly 340x256 (w x h,
  ``load_frame``), values ``x * 2 / 255 - 1`` (``mean = std = 0.5``), chunks of
  16 frames every 16 (``chunk_size``, ``--frequency 16``), 224x224 crops: the
  centre ``[16:240, 58:282]`` or ten crops (``oversample_data``; see
  :mod:`anomaly.crops`). That extractor resizes with PIL's antialiasing filter;
  here frames are resized by the decoder (FFmpeg), so pixels differ slightly.

``resize`` follows torchvision's ``Resize`` semantics: ``(h, w)`` is an exact
size, ``(s,)`` resizes the short side to ``s`` keeping the aspect ratio
(``BackboneSpec.resized_shape`` computes the result for a frame).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import io
import logging
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.models import video as tv_video

from anomaly.errors import AnomalyError
from anomaly.uris import read_bytes

logger = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0
_NO_WEIGHTS = ("none",)
_WRAPPER_KEYS = ("state_dict", "model")
_KEY_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
# Plain data a training checkpoint may carry beside its state dict (torchvision's
# reference scripts store their argparse args); it holds values only, no code.
_SAFE_GLOBALS = [argparse.Namespace]


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone needs and returns; see the module docstring for where each number comes from."""

    name: str
    feature_dim: int  # output width
    clip_len: int  # frames per clip by default
    resize: tuple[int, ...]  # (h, w) exact, or (short_side,): torchvision Resize semantics
    crop: tuple[int, int]  # (h, w) centre crop fed to the model
    mean: tuple[float, float, float]  # per channel, on [0, 1] RGB
    std: tuple[float, float, float]  # per channel, on [0, 1] RGB
    fixed_input: bool  # True when the architecture only accepts its native (clip_len, crop)
    build: Callable[[], nn.Module] = field(repr=False)  # random-initialised feature model
    channel_order: str = "RGB"  # order the model wants its channels in, applied after normalising
    min_input: tuple[int, int, int] = (1, 1, 1)  # smallest (T, H, W) the forward accepts
    head_prefixes: tuple[str, ...] = ()  # state-dict keys of the dropped classifier, ignored on load
    source: str = ""  # where the preprocessing numbers come from
    # (classifier outputs, backbone): a classifier this wide marks a checkpoint of that other backbone
    foreign_heads: tuple[tuple[int, str], ...] = ()
    sibling: str = ""  # a backbone whose checkpoints are easily taken for this one's (named in errors)
    reproduces: str = ""  # the published feature sets this backbone (with its published weights) reproduces

    def with_input_size(
        self, crop: tuple[int, int] | None = None, clip_len: int | None = None
    ) -> BackboneSpec:
        """The same backbone at another crop and/or clip length (tests, CPU demos).

        ``resize`` is scaled by the same factor as the crop so the crop keeps
        the same share of the frame. Fixed-input architectures refuse any
        change; sizes below ``min_input`` are refused.
        """
        new_crop = self.crop if crop is None else _int_pair(crop, "crop")
        new_len = self.clip_len if clip_len is None else _positive_int(clip_len, "clip_len")
        if self.fixed_input:
            if new_crop != self.crop:
                raise AnomalyError(
                    "crop",
                    f"backbone {self.name!r} only accepts its native {self.crop[0]}x{self.crop[1]} crop, "
                    f"not {new_crop[0]}x{new_crop[1]}",
                )
            if new_len != self.clip_len:
                raise AnomalyError(
                    "clip_len",
                    f"backbone {self.name!r} only accepts its native {self.clip_len} frames, not {new_len}",
                )
            return self
        min_t, min_h, min_w = self.min_input
        if new_len < min_t:
            raise AnomalyError(
                "clip_len", f"backbone {self.name!r} needs at least {min_t} frames per clip, got {new_len}"
            )
        if new_crop[0] < min_h or new_crop[1] < min_w:
            raise AnomalyError(
                "crop",
                f"backbone {self.name!r} needs a crop of at least {min_h}x{min_w}, "
                f"got {new_crop[0]}x{new_crop[1]}",
            )
        return dataclasses.replace(
            self, crop=new_crop, clip_len=new_len, resize=self._scaled_resize(new_crop)
        )

    def _scaled_resize(self, crop: tuple[int, int]) -> tuple[int, ...]:
        if crop == self.crop:
            return self.resize
        if len(self.resize) == 1:  # short side: scale with the larger crop side so the crop always fits
            side = max(crop)
            return (max(side, round(self.resize[0] * side / max(self.crop))),)
        return tuple(max(c, round(r * c / nc)) for r, c, nc in zip(self.resize, crop, self.crop, strict=True))

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) a ``height x width`` frame has after ``resize``, computed as torchvision does."""
        from anomaly.video.reader import resized_shape

        return resized_shape(self.resize, height, width)


def _positive_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AnomalyError(where, f"expected a positive integer, got {value!r}")
    return value


def _int_pair(value: object, where: str) -> tuple[int, int]:
    try:
        h, w = value  # type: ignore[misc]
    except (TypeError, ValueError):
        raise AnomalyError(where, f"expected (height, width), got {value!r}") from None
    return _positive_int(h, where), _positive_int(w, where)


# ---------------------------------------------------------------------------------------------------
# Builders (module-level functions, so specs and their ``build`` pickle into Ray workers)


def _build_torchvision(arch: str, head: str) -> nn.Module:
    model = getattr(tv_video, arch)(weights=None)  # weights=None: architecture only, never a download
    setattr(model, head, nn.Identity())
    if arch == "s3d":
        # S3D averages with a fixed AvgPool3d((2, 7, 7)) and then means the classifier output. With
        # the classifier gone, a global average gives the same number at the 2x7x7 map of a 16x224x224
        # clip (and the mean of the sliding windows, up to edge weights, for longer clips), and works
        # at any size.
        model.avgpool = nn.AdaptiveAvgPool3d(1)
    return model


def _build_c3d() -> nn.Module:
    from anomaly.extractors.c3d import C3D

    return C3D()


def _build_i3d() -> nn.Module:
    from anomaly.extractors.i3d import InceptionI3D

    return InceptionI3D()


def _build_hara(depth: int, release: int) -> nn.Module:
    from anomaly.extractors.resnet3d import HaraResNet3D

    return HaraResNet3D(depth, release)


def _build_i3d_r50() -> nn.Module:
    from anomaly.extractors.i3d_r50 import I3DResNet50

    return I3DResNet50()


# name: (weights enum, classifier attribute, feature width, fixed input, min (T, H, W))
_TORCHVISION: dict[str, tuple[str, str, int, bool, tuple[int, int, int] | None]] = {
    "r3d_18": ("R3D_18_Weights", "fc", 512, False, (1, 1, 1)),
    "mc3_18": ("MC3_18_Weights", "fc", 512, False, (1, 1, 1)),
    "r2plus1d_18": ("R2Plus1D_18_Weights", "fc", 512, False, (1, 1, 1)),
    # torchvision's meta says min 14x224x224 because of the fixed AvgPool3d replaced above; measured
    # minimum of the pooled feature model (the 2x2x2 max pool before Mixed_5b needs 2 cells):
    "s3d": ("S3D_Weights", "classifier", 1024, False, (5, 17, 17)),
    "swin3d_t": ("Swin3D_T_Weights", "head", 768, False, (1, 1, 1)),
    # MViT's relative positions and pooling strides are sized for 16x224x224 when it is built.
    "mvit_v2_s": ("MViT_V2_S_Weights", "head", 768, True, None),
}


def _documented_clip_len(weights: WeightsEnum) -> int:
    match = re.search(r"clip_len=(\d+)", weights.meta.get("_docs", ""))
    if match is None:  # a torchvision release that words its docs differently: fail loudly, do not guess
        raise RuntimeError(f"{weights} meta does not state the clip_len its accuracy was measured with")
    return int(match.group(1))


def _torchvision_spec(name: str) -> BackboneSpec:
    enum_name, head, dim, fixed, min_input = _TORCHVISION[name]
    weights = getattr(tv_video, enum_name).KINETICS400_V1
    preset = weights.transforms()  # torchvision's VideoClassification preset: the numbers it evaluates with
    clip_len = _documented_clip_len(weights)
    crop = (int(preset.crop_size[0]), int(preset.crop_size[-1]))
    return BackboneSpec(
        name=name,
        feature_dim=dim,
        clip_len=clip_len,
        resize=tuple(int(s) for s in preset.resize_size),
        crop=crop,
        mean=tuple(float(m) for m in preset.mean),
        std=tuple(float(s) for s in preset.std),
        fixed_input=fixed,
        build=functools.partial(_build_torchvision, name, head),
        min_input=min_input if min_input is not None else (clip_len, *crop),
        head_prefixes=(f"{head}.",),
        source=f"torchvision {enum_name}.KINETICS400_V1 transforms() and meta",
    )


# 3D-ResNets-PyTorch mean.py: the 2017 release's ActivityNet mean on 0..255 (get_mean(255, 'activitynet'))
_HARA_2017_MEAN_255 = (114.7748, 107.7354, 99.4750)
# the 2020 release's Kinetics mean and std on [0, 1] (get_mean_std(1, 'kinetics'))
_HARA_2020_MEAN = (0.4345, 0.4051, 0.3775)
_HARA_2020_STD = (0.2768, 0.2713, 0.2737)
# Classifier widths of the published checkpoints: 2017 release Kinetics-400; 2020 release (README's
# --n_pretrain_classes) K 700, M 339, KM 1039, KS 800, MS 439, KMS 1139, S 100.
_HARA_2017_CLASSES = (400,)
_HARA_2020_CLASSES = (700, 339, 1039, 800, 439, 1139, 100)
HARA_DEPTHS = (10, 18, 34, 50, 101, 152, 200)
_HARA_REPRODUCES = {
    (34, 2017): "Dubey et al. 2020 ranking-loss reproduction, 32x512 per video as ucf_crime_r3d34",
    (152, 2020): "the UCF-Crime reproductions that replaced C3D by r3d152_KM_200ep",
}


def _hara_spec(depth: int, release: int) -> BackboneSpec:
    from anomaly.extractors.resnet3d import feature_dim, shortcut_type

    other = 2020 if release == 2017 else 2017
    if release == 2017:
        mean = tuple(m / 255.0 for m in _HARA_2017_MEAN_255)
        std = (1 / 255.0, 1 / 255.0, 1 / 255.0)  # keep the 0..255 range: only the mean is removed
        source = "3D-ResNets-PyTorch 2017 release (Hara et al.): main.py test transform, mean.py activitynet"
    else:
        mean, std = _HARA_2020_MEAN, _HARA_2020_STD
        source = "3D-ResNets-PyTorch 2020 release (Hara et al.): inference transform, mean.py kinetics"
    other_classes = _HARA_2020_CLASSES if release == 2017 else _HARA_2017_CLASSES
    return BackboneSpec(
        name=f"r3d{depth}_{release}",
        feature_dim=feature_dim(depth),
        clip_len=16,
        resize=(112,),
        crop=(112, 112),
        mean=mean,
        std=std,
        fixed_input=False,
        build=functools.partial(_build_hara, depth, release),
        head_prefixes=("fc.",),
        source=f"{source}; shortcut {shortcut_type(depth, release)}",
        foreign_heads=tuple((n, f"r3d{depth}_{other}") for n in other_classes),
        sibling=f"r3d{depth}_{other}",
        reproduces=_HARA_REPRODUCES.get((depth, release), ""),
    )


# C3D Sports-1M mean pixel in Caffe's BGR order (per-channel average of the mean cube).
_C3D_MEAN_BGR_255 = (90.0, 98.0, 102.0)


@functools.cache
def _registry() -> dict[str, BackboneSpec]:
    specs = [_torchvision_spec(name) for name in _TORCHVISION]
    specs.append(
        BackboneSpec(
            name="c3d",
            feature_dim=4096,
            clip_len=16,
            resize=(128, 171),
            crop=(112, 112),
            mean=tuple(m / 255.0 for m in reversed(_C3D_MEAN_BGR_255)),  # RGB order
            std=(1 / 255.0, 1 / 255.0, 1 / 255.0),  # keep the 0..255 range
            fixed_input=False,
            build=_build_c3d,
            channel_order="BGR",
            min_input=(16, 16, 16),
            head_prefixes=("fc7.", "fc8."),
            source="C3D Caffe Sports-1M convention (Tran et al. 2015), DavideA/c3d-pytorch layout",
            reproduces="Sultani et al. 2018 C3D fc6 features, 32x4096 text files",
        )
    )
    specs.append(
        BackboneSpec(
            name="i3d",
            feature_dim=1024,
            clip_len=16,
            resize=(256,),
            crop=(224, 224),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),  # [0, 1] -> [-1, 1]
            fixed_input=False,
            build=_build_i3d,
            head_prefixes=("logits.",),
            source="Kinetics-I3D convention (Carreira & Zisserman 2017), piergiaj/pytorch-i3d layout",
        )
    )
    specs.extend(_hara_spec(depth, release) for release in (2017, 2020) for depth in HARA_DEPTHS)
    specs.append(
        BackboneSpec(
            name="i3d_r50",
            feature_dim=2048,
            clip_len=16,
            resize=(256, 340),  # exact (h, w), as load_frame's resize((340, 256))
            crop=(224, 224),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),  # x * 2 / 255 - 1
            fixed_input=False,
            build=_build_i3d_r50,
            min_input=(7, 5, 5),  # conv1 + two temporal max pools of 2 need 7 frames; max pool 1 needs 3x3
            head_prefixes=("fc.",),
            source="GowthamGottimukkala/I3D_Feature_Extraction_resnet preprocessing, "
            "Tushar-N/pytorch-resnet3d I3Res50 layout",
            reproduces="RTFM, MGFN, UR-DMU and later UCF-Crime I3D features, with `crops` 10",
        )
    )
    return {spec.name: spec for spec in sorted(specs, key=lambda s: s.name)}


def available_backbones() -> list[str]:
    return list(_registry())


def backbone_help() -> str:
    """One line per backbone for ``--backbone``'s help: width, clip, crop and what it reproduces."""
    parts = []
    for name, spec in _registry().items():
        text = f"{name} ({spec.feature_dim}-d, {spec.clip_len}x{spec.crop[0]}x{spec.crop[1]}"
        parts.append(text + (f"; {spec.reproduces})" if spec.reproduces else ")"))
    return ", ".join(parts)


def get_backbone(name: str) -> BackboneSpec:
    try:
        return _registry()[name]
    except (KeyError, TypeError):
        choices = ", ".join(available_backbones())
        raise AnomalyError("backbone", f"unknown backbone {name!r}; choose one of: {choices}") from None


# ---------------------------------------------------------------------------------------------------
# Weights


def load_backbone(
    name: str, weights: str | None, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, str]:
    """Build backbone ``name`` and load ``weights`` into it; returns ``(model.eval(), tag)``.

    ``weights`` None or ``"none"``: random initialisation from a fixed seed
    (the same numbers every call, the caller's RNG untouched), tag ``"random"``.
    Otherwise a local path or any fsspec URI, read as plain tensors only
    (``torch.load(weights_only=True)``); the tag is the sha256 of its bytes.
    """
    spec = get_backbone(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = spec.build()
    if weights is None or str(weights).strip().lower() in _NO_WEIGHTS:
        tag = "random"
        logger.debug("backbone %s: random initialisation (seed %d)", name, RANDOM_INIT_SEED)
    else:
        uri = str(weights)
        try:
            data = read_bytes(uri)
        except OSError as exc:  # a directory, a broken mount, a network error after retries
            raise AnomalyError(uri, f"cannot read weights: {type(exc).__name__}: {exc}") from exc
        tag = hashlib.sha256(data).hexdigest()
        state = _state_dict_from_bytes(uri, data)
        _load_strict(model, state, spec, uri)
        logger.info("backbone %s: loaded %s (sha256 %s)", name, uri, tag)
    return model.to(device).eval(), tag


def _state_dict_from_bytes(uri: str, data: bytes) -> dict[str, torch.Tensor]:
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only=True stops at the first global or opcode a tensor checkpoint does not need,
        # before anything runs: a pickled object that would execute code ends here.
        raise AnomalyError(
            uri,
            f"refused: not a plain tensor checkpoint ({_unpickling_reason(exc)}); "
            "only state dicts of tensors are loaded",
        ) from None
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint at all
        raise AnomalyError(uri, f"cannot read checkpoint: {type(exc).__name__}: {exc}") from exc
    return _unwrap_state_dict(uri, obj)


def _unpickling_reason(exc: BaseException) -> str:
    text = str(exc)
    match = re.search(r"(Trying to load unsupported GLOBAL [^\n]*|Unsupported [^\n]*)", text)
    if match:
        return match.group(1).strip().rstrip(".")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:200]


def _unwrap_state_dict(uri: str, obj: object) -> dict[str, torch.Tensor]:
    for _ in range(3):  # {"state_dict": ...}, {"model": ...}, or one inside the other
        if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise AnomalyError(
            uri,
            "not a state dict: expected a mapping of parameter names to tensors, "
            "or one under 'state_dict' or 'model'",
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _KEY_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        state[key] = value
    return state


def _few(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _foreign_head(state: Mapping[str, torch.Tensor], spec: BackboneSpec) -> str | None:
    """The one-line reason when the file's classifier marks a checkpoint of another backbone."""
    for key, value in state.items():
        if key.startswith(spec.head_prefixes) and key.endswith("weight") and value.ndim >= 1:
            outputs = int(value.shape[0])
            for width, other in spec.foreign_heads:
                if outputs == width:
                    return (
                        f"its classifier {key} has {outputs} outputs, as the published {other!r} "
                        f"checkpoints; use `backbone` {other}"
                    )
    return None


def _layout_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], spec: BackboneSpec) -> list[str]:
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(spec.head_prefixes)}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {list(v.shape)} vs {list(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys: {_few(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys: {_few(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches (file vs model): {_few(mismatched)}")
    return parts


def check_layout(name: str, checkpoint: object, *, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Check a loaded checkpoint's layout against backbone ``name`` without loading any weights.

    ``checkpoint`` as ``torch.load`` returns it (a state dict, or a training
    checkpoint holding one; tensors may live on the meta device, so a test can
    describe a 200-layer checkpoint by shapes alone). Returns the unwrapped
    state dict; raises the one-line :class:`AnomalyError` loading would raise.
    """
    spec = get_backbone(name)
    state = _unwrap_state_dict(where, checkpoint)
    with torch.device("meta"):
        model = spec.build()
    foreign = _foreign_head(state, spec)
    if foreign:
        raise AnomalyError(where, f"weights do not fit backbone {spec.name!r}: {foreign}")
    parts = _layout_mismatch(model, state, spec)
    if parts:
        if spec.sibling and _fits(spec.sibling, state):
            parts.append(f"the file has the layout of {spec.sibling!r}; use `backbone` {spec.sibling}")
        raise AnomalyError(where, f"weights do not fit backbone {spec.name!r}: " + "; ".join(parts))
    return state


def _fits(name: str, state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` has exactly the layout of backbone ``name`` (built on the meta device: no memory)."""
    spec = get_backbone(name)
    with torch.device("meta"):
        model = spec.build()
    return not _layout_mismatch(model, state, spec) and _foreign_head(state, spec) is None


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], spec: BackboneSpec, uri: str) -> None:
    check_layout(spec.name, state, where=uri)
    expected = model.state_dict()
    # The feature model has no classifier; a full checkpoint's head weights are expected and ignored.
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(spec.head_prefixes)}
    # BatchNorm fills num_batches_tracked itself for checkpoints saved before it existed (pytorch-i3d,
    # the 2017 3D-ResNets): strict loading would miss them, so the model's own values are kept.
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = expected[key]
    model.load_state_dict(state, strict=True)
