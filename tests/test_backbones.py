"""The backbones behind the published UCF-Crime features: 3D-ResNets 2017/2020 and I3D ResNet-50.

Checkpoint layouts here are written from the reference code's module structure
(kenshohara/3D-ResNets-PyTorch ``models/resnet.py`` of both releases and its
``main.py`` checkpoints; Tushar-N/pytorch-resnet3d ``models/resnet.py``), not
from this project's models, with tensors on the meta device (shapes only), so a
200-layer checkpoint costs nothing. No published file can be downloaded here:
that the same weights give the same numbers as the reference rests on these
layouts plus the golden features below.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from anomaly.errors import AnomalyError
from anomaly.extractors import ClipFeatureExtractor, check_layout, get_backbone, load_backbone

DEPTHS = {  # depth -> (bottleneck?, blocks per stage), the reference's resnet10 … resnet200
    10: (False, [1, 1, 1, 1]),
    18: (False, [2, 2, 2, 2]),
    34: (False, [3, 4, 6, 3]),
    50: (True, [3, 4, 6, 3]),
    101: (True, [3, 4, 23, 3]),
    152: (True, [3, 8, 36, 3]),
    200: (True, [3, 24, 36, 3]),
}
HARA = [f"r3d{d}_{r}" for r in (2017, 2020) for d in DEPTHS]
NEW = [*HARA, "i3d_r50"]


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def bn(prefix: str, width: int, *, tracked: bool) -> dict[str, torch.Tensor]:
    keys = {f"{prefix}.{n}": meta(width) for n in ("weight", "bias", "running_mean", "running_var")}
    if tracked:  # PyTorch >= 0.4.1 saves it; the 2017 release (PyTorch 0.2/0.3) does not
        keys[f"{prefix}.num_batches_tracked"] = meta()
    return keys


def hara_layout(depth: int, release: int, classes: int) -> dict[str, torch.Tensor]:
    """Key names and shapes of ``generate_model`` / ``resnetN(...)`` of the given release."""
    bottleneck, blocks = DEPTHS[depth]
    tracked = release == 2020
    shortcut = "A" if release == 2017 and not bottleneck else "B"
    expansion = 4 if bottleneck else 1
    out = {"conv1.weight": meta(64, 3, 7, 7, 7), **bn("bn1", 64, tracked=tracked)}
    inplanes = 64
    for stage, (planes, count) in enumerate(zip([64, 128, 256, 512], blocks, strict=True), start=1):
        stride = 1 if stage == 1 else 2
        for i in range(count):
            p = f"layer{stage}.{i}"
            if bottleneck:
                out[f"{p}.conv1.weight"] = meta(planes, inplanes, 1, 1, 1)
                out[f"{p}.conv2.weight"] = meta(planes, planes, 3, 3, 3)
                out[f"{p}.conv3.weight"] = meta(planes * 4, planes, 1, 1, 1)
                for j, width in ((1, planes), (2, planes), (3, planes * 4)):
                    out.update(bn(f"{p}.bn{j}", width, tracked=tracked))
            else:
                out[f"{p}.conv1.weight"] = meta(planes, inplanes, 3, 3, 3)
                out[f"{p}.conv2.weight"] = meta(planes, planes, 3, 3, 3)
                out.update(bn(f"{p}.bn1", planes, tracked=tracked))
                out.update(bn(f"{p}.bn2", planes, tracked=tracked))
            if i == 0 and (stride != 1 or inplanes != planes * expansion) and shortcut == "B":
                out[f"{p}.downsample.0.weight"] = meta(planes * expansion, inplanes, 1, 1, 1)
                out.update(bn(f"{p}.downsample.1", planes * expansion, tracked=tracked))
            inplanes = planes * expansion
    out["fc.weight"] = meta(classes, 512 * expansion)
    out["fc.bias"] = meta(classes)
    return out


def hara_checkpoint(depth: int, release: int, classes: int) -> dict:
    """The published file's wrapper: the 2017 main.py saves the DataParallel model's state dict
    (``module.`` keys); the 2020 main.py saves the unwrapped model's, beside a scheduler."""
    state = hara_layout(depth, release, classes)
    if release == 2017:
        return {
            "epoch": 200,
            "arch": f"resnet-{depth}",
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9}]},
        }
    return {
        "epoch": 200,
        "arch": f"resnet-{depth}",
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
        "scheduler": {"milestones": [50, 100, 150]},
    }


def i3d_r50_layout() -> dict[str, torch.Tensor]:
    """Tushar-N's ``I3Res50(num_classes=400)`` state dict (``i3d_r50_kinetics.pth``, plain)."""
    out = {"conv1.weight": meta(64, 3, 5, 7, 7), **bn("bn1", 64, tracked=True)}
    inplanes = 64
    temporal = [[1, 1, 1], [1, 0, 1, 0], [1, 0, 1, 0, 1, 0], [0, 1, 0]]
    for stage, (planes, flags) in enumerate(zip([64, 128, 256, 512], temporal, strict=True), start=1):
        for i, flag in enumerate(flags):
            p = f"layer{stage}.{i}"
            out[f"{p}.conv1.weight"] = meta(planes, inplanes, 1 + 2 * flag, 1, 1)
            out[f"{p}.conv2.weight"] = meta(planes, planes, 1, 3, 3)
            out[f"{p}.conv3.weight"] = meta(planes * 4, planes, 1, 1, 1)
            for j, width in ((1, planes), (2, planes), (3, planes * 4)):
                out.update(bn(f"{p}.bn{j}", width, tracked=True))
            if i == 0:
                out[f"{p}.downsample.0.weight"] = meta(planes * 4, inplanes, 1, 1, 1)
                out.update(bn(f"{p}.downsample.1", planes * 4, tracked=True))
            inplanes = planes * 4
    out["fc.weight"] = meta(400, 2048)
    out["fc.bias"] = meta(400)
    return out


PUBLISHED = {  # backbone -> (classifier widths of its published files)
    **{f"r3d{d}_2017": (400,) for d in DEPTHS},
    **{f"r3d{d}_2020": (700, 1039) for d in DEPTHS},
}


def published(name: str, classes: int) -> dict:
    if name == "i3d_r50":
        return i3d_r50_layout()
    depth, release = name[3:].split("_")
    return hara_checkpoint(int(depth), int(release), classes)


@pytest.mark.parametrize("name", NEW)
def test_published_layout_loads_without_missing_or_unexpected_keys(name):
    for classes in PUBLISHED.get(name, (400,)):
        state = check_layout(name, published(name, classes), where=f"{name}.pth")
        assert not any(k.startswith("module.") for k in state)


@pytest.mark.parametrize("depth", list(DEPTHS))
def test_the_other_releases_layout_is_refused_in_one_line(depth):
    cases = [
        (f"r3d{depth}_2017", hara_checkpoint(depth, 2020, 700), f"r3d{depth}_2020"),
        (f"r3d{depth}_2020", hara_checkpoint(depth, 2017, 400), f"r3d{depth}_2017"),
    ]
    for name, checkpoint, other in cases:
        with pytest.raises(AnomalyError) as info:
            check_layout(name, checkpoint, where="x.pth")
        message = str(info.value)
        assert "\n" not in message and len(message) < 600
        assert f"do not fit backbone {name!r}" in message and f"`backbone` {other}" in message
    # Without the classifier (a stripped file) the shortcut layout alone tells the 2017 basic nets apart.
    if depth <= 34:
        state = hara_layout(depth, 2020, 700)
        del state["fc.weight"], state["fc.bias"]
        with pytest.raises(AnomalyError, match=r"unexpected \d+ keys: layer2\.0\.downsample.*r3d\d+_2020"):
            check_layout(f"r3d{depth}_2017", state, where="x.pth")


def test_i3d_r50_refuses_the_non_local_and_inception_layouts():
    nl = i3d_r50_layout()
    nl["layer2.1.nl.theta.weight"] = meta(256, 512, 1, 1, 1)  # I3Res50(use_nl=True)
    with pytest.raises(AnomalyError, match=r"unexpected 1 keys: layer2\.1\.nl\.theta\.weight"):
        check_layout("i3d_r50", nl)
    with pytest.raises(AnomalyError, match=r"26 shape mismatches .*conv1.weight \[64, 3, 7, 7, 7\]"):
        check_layout("i3d_r50", hara_layout(50, 2020, 700))  # same names as a 3D ResNet-50, other kernels
    with pytest.raises(AnomalyError, match=r"shape mismatches .*conv1.weight \[64, 3, 7, 7, 7\]"):
        check_layout("i3d_r50", {**i3d_r50_layout(), "conv1.weight": meta(64, 3, 7, 7, 7)})


def test_a_real_2017_checkpoint_file_loads_and_gives_the_models_numbers(tmp_path):
    """Through torch.save/torch.load (weights_only), ``module.`` keys, no num_batches_tracked."""
    torch.manual_seed(3)
    source = get_backbone("r3d18_2017").build().eval()
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    state = {f"module.{k}": v for k, v in source.state_dict().items() if "num_batches" not in k}
    state.update({"module.fc.weight": torch.zeros(400, 512), "module.fc.bias": torch.zeros(400)})
    buffer = io.BytesIO()
    torch.save({"epoch": 1, "arch": "resnet-18", "state_dict": state, "optimizer": {"state": {}}}, buffer)
    path = tmp_path / "resnet-18-kinetics.pth"
    path.write_bytes(buffer.getvalue())
    model, _ = load_backbone("r3d18_2017", str(path))
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_2017_pool_is_the_references_fixed_avgpool():
    """AvgPool3d((ceil(T/16), ceil(S/32), ceil(S/32)), stride=1) covers the whole last map at 16x112x112."""
    torch.manual_seed(1)
    model = get_backbone("r3d34_2017").build().eval()
    seen = {}
    model.layer4.register_forward_hook(lambda m, i, o: seen.update(last=o))
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 16, 112, 112))
    assert seen["last"].shape == (1, 512, 1, 4, 4)
    reference = torch.nn.AvgPool3d((1, 4, 4), stride=1)(seen["last"]).flatten(1)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)


def test_specs_carry_the_reference_preprocessing():
    old, new, rtfm = get_backbone("r3d34_2017"), get_backbone("r3d152_2020"), get_backbone("i3d_r50")
    assert (old.feature_dim, new.feature_dim, rtfm.feature_dim) == (512, 2048, 2048)
    for spec in (old, new):
        assert (spec.clip_len, spec.resize, spec.crop) == (16, (112,), (112, 112))
    np.testing.assert_allclose(np.array(old.mean) * 255, [114.7748, 107.7354, 99.4750])
    np.testing.assert_allclose(np.array(old.std) * 255, [1, 1, 1])
    assert new.mean == (0.4345, 0.4051, 0.3775) and new.std == (0.2768, 0.2713, 0.2737)
    assert (rtfm.clip_len, rtfm.resize, rtfm.crop) == (16, (256, 340), (224, 224))
    assert rtfm.mean == rtfm.std == (0.5, 0.5, 0.5)


# Golden features: the registry's seeded random weights, one fixed 8x32x32 clip through the extractor.
# (sum, L2 norm, features[0], features[7]) of the one clip's feature vector (deep nets without
# zero-initialised residuals grow large: the scale is the random init's, not a bug).
GOLDEN = {
    "r3d10_2017": [3358.5717414468527, 328.7863151010144, 5.720256805419922, 22.02852439880371],
    "r3d18_2017": [5380.394788529724, 502.7064908329079, 12.06131362915039, 32.41981887817383],
    "r3d34_2017": [23176.491690032184, 1993.504042129764, 43.04143524169922, 13.27591323852539],
    "r3d50_2017": [134032.09117021412, 4688.174537297483, 17.27464485168457, 38.430824279785156],
    "r3d101_2017": [914858.8880894184, 31813.234935019078, 46.165557861328125, 0.0],
    "r3d152_2017": [15934189.875829697, 551208.3968033008, 4979.42919921875, 3837.50341796875],
    "r3d200_2017": [1003330918.888916, 34976696.583641864, 719766.6875, 138345.0625],
    "r3d10_2020": [36.96383504103869, 2.725068740136142, 0.0, 0.1927914023399353],
    "r3d18_2020": [86.55256013782855, 6.971751208000713, 0.0, 0.14256955683231354],
    "r3d34_2020": [337.87870369886514, 25.863848970726895, 0.30878472328186035, 0.0],
    "r3d50_2020": [1910.023818691261, 66.80649116037631, 0.2439560443162918, 0.5533344745635986],
    "r3d101_2020": [13157.96476533264, 457.6363810594711, 0.6509530544281006, 0.0],
    "r3d152_2020": [229542.70960053802, 7940.392760683792, 71.6759033203125, 55.374298095703125],
    "r3d200_2020": [14380875.84854126, 501318.7231030582, 10333.802734375, 1983.1817626953125],
    "i3d_r50": [1930.576964094711, 66.27752336536874, 1.582422137260437, 1.968709111213684],
}


def golden_clip(spec) -> np.ndarray:
    rng = np.random.default_rng(2024)
    return rng.integers(0, 256, size=(1, spec.clip_len, *spec.crop, 3), dtype=np.uint8)


def golden_summary(name: str) -> list[float]:
    extractor = ClipFeatureExtractor(name, None, crop=(32, 32), clip_len=8, device="cpu")
    f = extractor({"clip": golden_clip(extractor.spec)})["features"][0].astype(np.float64)
    return [float(f.sum()), float(np.linalg.norm(f)), float(f[0]), float(f[7])]


@pytest.mark.parametrize("name", NEW)
def test_golden_features(name):
    got = golden_summary(name)
    if name not in GOLDEN:
        pytest.fail(f"record GOLDEN[{name!r}] = {got!r}")
    # Relative to the vector's norm: a ReLU zero may come out as a few ulps elsewhere.
    np.testing.assert_allclose(got, GOLDEN[name], rtol=2e-4, atol=1e-6 * GOLDEN[name][1])
