"""Backbone registry, weights loading and the Ray Data callable, on the real architectures with random weights."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shlex

import numpy as np
import pytest
import torch
import torchvision.models.video as tv_video

from anomaly.errors import AnomalyError
from anomaly.extractors import (
    ClipFeatureExtractor,
    available_backbones,
    get_backbone,
    load_backbone,
    preprocess_clips,
)
from anomaly.extractors.c3d import C3D
from anomaly.extractors.i3d import InceptionI3D
from anomaly.uris import filesystem

ALL = ["c3d", "i3d", "mc3_18", "mvit_v2_s", "r2plus1d_18", "r3d_18", "s3d", "swin3d_t"]
HARA = [
    f"r3d{d}_{r}" for r in (2017, 2020) for d in (10, 18, 34, 50, 101, 152, 200)
]  # tests/test_backbones.py
SMALL_CROP = (32, 32)


def small_spec(name: str):
    """The spec at the test size: 32x32 and the fewest frames each architecture takes (>= 8)."""
    spec = get_backbone(name)
    if spec.fixed_input:
        return spec
    return spec.with_input_size(crop=SMALL_CROP, clip_len=max(8, spec.min_input[0]))


def random_clips(spec, batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(batch, spec.clip_len, *spec.crop, 3), dtype=np.uint8)


def features(model: torch.nn.Module, spec, clips: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(preprocess_clips(clips, spec, "cpu")).numpy()


def save_bytes(obj, *, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def seeded(build, seed: int) -> torch.nn.Module:
    """A model whose weights differ from the registry's seed-0 random init."""
    torch.manual_seed(seed)
    return build().eval()


# --- registry ---------------------------------------------------------------------------------------


def test_registry_lists_every_backbone():
    assert available_backbones() == sorted([*ALL, *HARA, "i3d_r50"])


def test_unknown_backbone_names_it_and_lists_choices():
    with pytest.raises(AnomalyError) as info:
        get_backbone("c4d")
    assert info.value.where == "backbone"
    message = str(info.value)
    assert "'c4d'" in message and "\n" not in message
    assert all(name in message for name in ALL)


@pytest.mark.parametrize("name", ALL)
def test_every_backbone_returns_its_feature_width(name):
    spec = small_spec(name)
    batch = 1 if spec.fixed_input else 2  # fixed-input ones run at their native size
    extractor = ClipFeatureExtractor(name, None, crop=spec.crop, clip_len=spec.clip_len, device="cpu")
    out = extractor({"clip": random_clips(spec, batch)})
    assert out["features"].shape == (batch, spec.feature_dim)
    assert out["features"].dtype == np.float32
    assert np.isfinite(out["features"]).all()
    assert extractor.weights_sha256 == "random"


def test_swin3d_t_at_native_size():
    spec = get_backbone("swin3d_t")
    assert (spec.clip_len, spec.crop) == (32, (224, 224))
    model, _ = load_backbone("swin3d_t", None)
    assert features(model, spec, random_clips(spec, 1)).shape == (1, 768)


def test_torchvision_specs_come_from_the_weight_presets():
    for name, enum in [
        ("r3d_18", tv_video.R3D_18_Weights),
        ("mc3_18", tv_video.MC3_18_Weights),
        ("r2plus1d_18", tv_video.R2Plus1D_18_Weights),
        ("s3d", tv_video.S3D_Weights),
        ("swin3d_t", tv_video.Swin3D_T_Weights),
        ("mvit_v2_s", tv_video.MViT_V2_S_Weights),
    ]:
        spec, weights = get_backbone(name), enum.KINETICS400_V1
        preset = weights.transforms()
        assert spec.mean == tuple(preset.mean) and spec.std == tuple(preset.std)
        assert list(spec.crop) == list(preset.crop_size) and list(spec.resize) == list(preset.resize_size)
        assert f"clip_len={spec.clip_len}" in weights.meta["_docs"]
    assert get_backbone("r3d_18").resize == (128, 171) and get_backbone("swin3d_t").resize == (256,)
    assert [get_backbone(n).fixed_input for n in ALL].count(True) == 1  # mvit_v2_s


def test_input_size_overrides():
    c3d = get_backbone("c3d").with_input_size(crop=(32, 32))
    assert (c3d.crop, c3d.clip_len, c3d.resize) == ((32, 32), 16, (37, 49))  # 128x171 scaled by 32/112
    i3d = get_backbone("i3d").with_input_size(crop=(64, 64), clip_len=8)
    assert (i3d.crop, i3d.clip_len, i3d.resize) == ((64, 64), 8, (73,))
    assert i3d.resized_shape(240, 320) == (73, 97)
    assert get_backbone("i3d").resized_shape(480, 360) == (341, 256)  # short side to 256, as torchvision
    assert get_backbone("c3d").resized_shape(480, 640) == (128, 171)

    mvit = get_backbone("mvit_v2_s")
    assert mvit.with_input_size(crop=(224, 224), clip_len=16) == mvit  # native values are fine
    with pytest.raises(AnomalyError, match="only accepts its native 224x224"):
        mvit.with_input_size(crop=(64, 64))
    with pytest.raises(AnomalyError, match="only accepts its native 16 frames"):
        mvit.with_input_size(clip_len=8)
    with pytest.raises(AnomalyError, match="at least 16 frames"):
        get_backbone("c3d").with_input_size(clip_len=8)
    with pytest.raises(AnomalyError, match="at least 17x17"):
        get_backbone("s3d").with_input_size(crop=(16, 16))
    with pytest.raises(AnomalyError, match="positive integer"):
        get_backbone("r3d_18").with_input_size(crop=(0, 32))


def test_c3d_adaptive_pool_is_the_identity_at_native_size():
    """fc6's weights were trained on pool5 = 512x1x4x4; at 16x112x112 nothing is resampled."""
    model = seeded(C3D, 1)
    x = torch.randn(1, 3, 16, 112, 112)
    seen = {}
    model.to_pool5_shape.register_forward_hook(lambda m, i, o: seen.update(before=i[0], after=o))
    with torch.inference_mode():
        model(x)
    assert seen["before"].shape == (1, 512, 1, 4, 4)
    assert torch.equal(seen["before"], seen["after"])


def test_i3d_global_average_matches_the_ports_avgpool_at_native_size():
    """The port pools Mixed_5c with AvgPool3d((2, 7, 7)); at 16x224x224 that map is exactly 2x7x7."""
    model = seeded(InceptionI3D, 1)
    seen = {}
    model.Mixed_5c.register_forward_hook(lambda m, i, o: seen.update(mixed_5c=o))
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 16, 224, 224))
    assert seen["mixed_5c"].shape == (1, 1024, 2, 7, 7)
    pooled = torch.nn.functional.avg_pool3d(seen["mixed_5c"], (2, 7, 7), stride=1).flatten(1)
    torch.testing.assert_close(out, pooled)


def test_random_init_is_deterministic_and_leaves_the_global_rng_alone():
    spec = small_spec("r3d_18")
    clips = random_clips(spec, 2)
    state = torch.get_rng_state()
    first, tag = load_backbone("r3d_18", None)
    second, _ = load_backbone("r3d_18", "none")
    assert tag == "random"
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(features(first, spec, clips), features(second, spec, clips))


# --- weights ----------------------------------------------------------------------------------------


def full_torchvision_model(seed: int) -> torch.nn.Module:
    """mc3_18 with its Kinetics classifier, as ``torchvision...mc3_18(weights=...)`` would be."""
    return seeded(lambda: tv_video.mc3_18(weights=None), seed)


@pytest.fixture(scope="module")
def mc3_checkpoint():
    """The state dict of a full torchvision mc3_18 (fc included, as the official .pth) and its features."""
    full = full_torchvision_model(seed=7)
    data = save_bytes(full.state_dict())
    spec = small_spec("mc3_18")
    clips = random_clips(spec, 2)
    full.fc = torch.nn.Identity()
    return data, spec, clips, features(full, spec, clips)


def test_weights_round_trip_local(tmp_path, mc3_checkpoint):
    data, spec, clips, expected = mc3_checkpoint
    path = tmp_path / "mc3_18.pth"
    path.write_bytes(data)
    model, sha = load_backbone("mc3_18", str(path))
    assert sha == hashlib.sha256(data).hexdigest()
    assert not model.training
    np.testing.assert_array_equal(features(model, spec, clips), expected)
    random_model, _ = load_backbone("mc3_18", None)
    assert not np.allclose(features(random_model, spec, clips), expected)


def test_weights_round_trip_s3(s3_bucket, mc3_checkpoint):
    data, spec, clips, expected = mc3_checkpoint
    uri = f"{s3_bucket}/weights/mc3_18.pth"
    fs, path = filesystem(uri)
    with fs.open(path, "wb") as handle:
        handle.write(data)
    extractor = ClipFeatureExtractor("mc3_18", uri, crop=spec.crop, clip_len=spec.clip_len, device="cpu")
    assert extractor.weights_sha256 == hashlib.sha256(data).hexdigest()
    np.testing.assert_array_equal(extractor({"clip": clips})["features"], expected)


def test_wrapped_state_dict_with_module_prefixes_loads(tmp_path):
    source = seeded(get_backbone("i3d").build, 3)
    wrapped = {
        "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()},
        "epoch": 12,
        "optimizer": {"lr": 0.1},
    }
    path = tmp_path / "ddp.pt"
    path.write_bytes(save_bytes(wrapped))
    model, _ = load_backbone("i3d", str(path))
    spec = small_spec("i3d")
    clips = random_clips(spec, 2)
    np.testing.assert_array_equal(features(model, spec, clips), features(source, spec, clips))


def test_training_checkpoint_with_model_key_and_args_loads(tmp_path):
    """torchvision's reference scripts save {"model", "optimizer", "epoch", "args": Namespace}."""
    import argparse

    source = full_torchvision_model(seed=5)
    checkpoint = {"model": source.state_dict(), "epoch": 3, "args": argparse.Namespace(lr=0.1)}
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(save_bytes(checkpoint))
    model, _ = load_backbone("mc3_18", str(path))
    source.fc = torch.nn.Identity()
    spec = small_spec("mc3_18")
    clips = random_clips(spec, 1)
    np.testing.assert_array_equal(features(model, spec, clips), features(source, spec, clips))


def test_published_c3d_and_i3d_layouts_load(tmp_path):
    """DavideA's c3d.pickle (fc7/fc8 inside) and piergiaj's rgb_imagenet.pt (logits, no
    num_batches_tracked), both in the pre-1.6 serialisation format."""
    c3d = seeded(C3D, 4)
    state = dict(c3d.state_dict())
    state.update({"fc7.weight": torch.zeros(4096, 4096), "fc7.bias": torch.zeros(4096)})
    state.update({"fc8.weight": torch.zeros(487, 4096), "fc8.bias": torch.zeros(487)})
    (tmp_path / "c3d.pickle").write_bytes(save_bytes(state, legacy=True))

    i3d = seeded(InceptionI3D, 4)
    with torch.no_grad():  # non-trivial running statistics, so a silently skipped BN load would show
        for module in i3d.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    state = {k: v for k, v in i3d.state_dict().items() if not k.endswith("num_batches_tracked")}
    state.update(
        {"logits.conv3d.weight": torch.zeros(400, 1024, 1, 1, 1), "logits.conv3d.bias": torch.zeros(400)}
    )
    (tmp_path / "rgb_imagenet.pt").write_bytes(save_bytes(state, legacy=True))

    for name, source, filename in [("c3d", c3d, "c3d.pickle"), ("i3d", i3d, "rgb_imagenet.pt")]:
        model, _ = load_backbone(name, str(tmp_path / filename))
        spec = small_spec(name)
        clips = random_clips(spec, 1)
        np.testing.assert_array_equal(features(model, spec, clips), features(source, spec, clips))


def test_weights_of_another_architecture_are_one_line_errors(tmp_path, mc3_checkpoint):
    path = tmp_path / "mc3_18.pth"
    path.write_bytes(mc3_checkpoint[0])
    with pytest.raises(AnomalyError) as info:
        load_backbone("c3d", str(path))
    assert info.value.where == str(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600
    assert "do not fit backbone 'c3d'" in message
    assert "missing" in message and "conv1.weight" in message
    assert "unexpected" in message and "stem.0.weight" in message

    state = dict(seeded(C3D, 2).state_dict())
    state["fc6.weight"] = torch.zeros(4096, 4608)  # a C3D whose pool5 was 512x1x3x3
    wrong_shape = tmp_path / "c3d_wrong_shape.pt"
    wrong_shape.write_bytes(save_bytes(state))
    with pytest.raises(
        AnomalyError, match=r"1 shape mismatches .*fc6.weight \[4096, 4608\] vs \[4096, 8192\]"
    ):
        load_backbone("c3d", str(wrong_shape))


class WritesMarker:
    """A pickle that runs a shell command when loaded: what a hostile checkpoint looks like."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("packaging", ["torch.save", "plain pickle"])
def test_code_executing_pickle_is_refused(tmp_path, packaging):
    marker = tmp_path / "pwned"
    payload = {"conv1.weight": torch.zeros(1), "evil": WritesMarker(str(marker))}
    data = save_bytes(payload) if packaging == "torch.save" else pickle.dumps(payload)
    path = tmp_path / "evil.pt"
    path.write_bytes(data)

    with pytest.raises(AnomalyError, match=r"refused: not a plain tensor checkpoint") as info:
        load_backbone("c3d", str(path))
    assert "\n" not in str(info.value)
    assert not marker.exists()

    # The payload is live: an unrestricted unpickler does run it (so the test above means something).
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(WritesMarker(str(control))))
    assert control.exists()


def test_unreadable_weights(tmp_path):
    with pytest.raises(AnomalyError, match="no such file"):
        load_backbone("r3d_18", str(tmp_path / "absent.pth"))
    with pytest.raises(AnomalyError, match="cannot read weights"):
        load_backbone("r3d_18", str(tmp_path))  # a directory
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(AnomalyError) as info:
        load_backbone("r3d_18", str(junk))
    assert info.value.where == str(junk) and "\n" not in str(info.value)
    not_state_dict = tmp_path / "list.pt"
    not_state_dict.write_bytes(save_bytes([torch.zeros(2)]))
    with pytest.raises(AnomalyError, match="not a state dict"):
        load_backbone("r3d_18", str(not_state_dict))


# --- preprocessing and the callable -------------------------------------------------------------------


def test_preprocess_normalises_a_hand_built_pixel():
    spec = small_spec("r3d_18")
    clips = np.zeros((2, spec.clip_len, *spec.crop, 3), dtype=np.uint8)
    clips[1, 3, 5, 7] = (255, 128, 0)
    x = preprocess_clips(clips, spec, "cpu")
    assert x.shape == (2, 3, spec.clip_len, *spec.crop) and x.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), spec.mean, spec.std, strict=True)]
    torch.testing.assert_close(x[1, :, 3, 5, 7], torch.tensor(expected))
    background = [(0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True)]
    torch.testing.assert_close(x[0, :, 0, 0, 0], torch.tensor(background))


def test_preprocess_c3d_is_bgr_minus_the_mean_pixel_on_0_255():
    spec = small_spec("c3d")
    clips = np.zeros((1, spec.clip_len, *spec.crop, 3), dtype=np.uint8)
    clips[0, 0, 0, 0] = (200, 100, 50)  # R, G, B
    x = preprocess_clips(clips, spec, "cpu")
    # Channels come out B, G, R, each minus the Sports-1M mean pixel (B, G, R) = (90, 98, 102).
    torch.testing.assert_close(x[0, :, 0, 0, 0], torch.tensor([50 - 90.0, 100 - 98.0, 200 - 102.0]))


def test_preprocess_refuses_clips_of_another_size():
    spec = small_spec("r3d_18")
    with pytest.raises(AnomalyError, match=r"expects uint8 clips of shape \(B, 8, 32, 32, 3\)"):
        preprocess_clips(np.zeros((1, 8, 64, 64, 3), dtype=np.uint8), spec, "cpu")
    with pytest.raises(AnomalyError, match="got float32"):
        preprocess_clips(np.zeros((1, 8, 32, 32, 3), dtype=np.float32), spec, "cpu")


def test_extractor_passes_other_columns_through_and_drops_clip():
    spec = small_spec("r3d_18")
    extractor = ClipFeatureExtractor("r3d_18", None, crop=spec.crop, clip_len=spec.clip_len, device="auto")
    video_id = np.array(["Abuse001_x264", "Normal_Videos_003_x264", "Abuse001_x264"], dtype=object)
    clip_index = np.array([0, 0, 1], dtype=np.int64)
    clips = random_clips(spec, 3)
    clips.setflags(write=False)  # as Ray hands batches over
    out = extractor({"video_id": video_id, "clip": clips, "clip_index": clip_index})
    assert sorted(out) == ["clip_index", "features", "video_id"]
    assert out["video_id"] is video_id and out["clip_index"] is clip_index
    assert out["features"].shape == (3, 512) and out["features"].dtype == np.float32
    # Each row is its own clip's feature: batching does not mix rows.
    single = extractor({"clip": clips[1:2]})["features"]
    np.testing.assert_allclose(out["features"][1:2], single, rtol=1e-4, atol=1e-5)

    empty = extractor({"video_id": video_id[:0], "clip": clips[:0]})
    assert empty["features"].shape == (0, 512)
    with pytest.raises(AnomalyError, match="no 'clip' column"):
        extractor({"video_id": video_id})


def test_extractor_refuses_cuda_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(AnomalyError, match="sees no CUDA GPU"):
        ClipFeatureExtractor("r3d_18", None, device="cuda")


def test_extractor_in_ray_data_map_batches(ray_cluster):
    import ray

    spec = small_spec("r3d_18")
    clips = random_clips(spec, 6)
    rows = [{"video_id": f"v{i // 3}", "clip_index": i % 3, "clip": clips[i]} for i in range(6)]
    ds = ray.data.from_items(rows).map_batches(
        ClipFeatureExtractor,
        fn_constructor_args=("r3d_18", None),
        fn_constructor_kwargs={"crop": spec.crop, "clip_len": spec.clip_len, "device": "cpu"},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=4,
        batch_format="numpy",
    )
    out = sorted(ds.take_all(), key=lambda r: (r["video_id"], r["clip_index"]))
    assert [(r["video_id"], r["clip_index"]) for r in out] == [(f"v{i // 3}", i % 3) for i in range(6)]
    assert all("clip" not in r and r["features"].shape == (512,) for r in out)
    model, _ = load_backbone("r3d_18", None)
    np.testing.assert_allclose(
        np.stack([r["features"] for r in out]), features(model, spec, clips), rtol=1e-4, atol=1e-5
    )
