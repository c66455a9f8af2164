"""Ten crops: the geometry, the decode stage, the extractor and a whole ten-crop extraction."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest
from helpers import tiny_settings

from anomaly import store as feature_store
from anomaly.crops import CENTRE, crop_windows, ten_crop
from anomaly.errors import AnomalyError
from anomaly.extraction import decode_video, extract, sampling_of
from anomaly.extractors import ClipFeatureExtractor
from anomaly.ground_truth import GroundTruth
from anomaly.synthetic import make_video_set, write_annotations
from anomaly.video.reader import center_crop

# i3d_r50 at 8 x 32 x 32: its exact 256x340 resize scales to 37x49, so every corner differs.
TINY = dict(backbone="i3d_r50", clip_len=8, batch_size=4, flush_every=2)


def test_ten_crop_geometry_is_the_reference_oversample():
    frames = np.arange(2 * 256 * 340 * 3, dtype=np.int64).reshape(2, 256, 340, 3)
    crops = ten_crop(frames, (224, 224))
    assert crops.shape == (10, 2, 224, 224, 3)
    # oversample_data: [:224, :224], [:224, -224:], [16:240, 58:282], [-224:, :224], [-224:, -224:]
    np.testing.assert_array_equal(crops[0], frames[:, :224, :224])
    np.testing.assert_array_equal(crops[1], frames[:, :224, -224:])
    np.testing.assert_array_equal(crops[CENTRE], frames[:, 16:240, 58:282])
    np.testing.assert_array_equal(crops[3], frames[:, -224:, :224])
    np.testing.assert_array_equal(crops[4], frames[:, -224:, -224:])
    flipped = frames[:, :, ::-1]
    for k, window in enumerate([np.s_[:224, :224], np.s_[:224, -224:], np.s_[16:240, 58:282]]):
        np.testing.assert_array_equal(crops[5 + k], flipped[(slice(None), *window)])
    assert crop_windows(256, 340, (224, 224))[CENTRE] == (16, 58)
    np.testing.assert_array_equal(crops[CENTRE][0], center_crop(frames[0], (224, 224)))
    with pytest.raises(ValueError, match="larger than the frame"):
        ten_crop(frames, (300, 224))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("crops")
    made = make_video_set(
        str(root / "videos"), num_normal=1, num_abnormal=1, num_frames=40, height=48, width=64
    )
    annotations = str(root / "Temporal_Anomaly_Annotation.txt")
    write_annotations(made, annotations)
    return str(root / "videos"), annotations, made


def test_decode_yields_ten_crops_whose_centre_is_the_one_crop_clip(videos):
    _, _, made = videos
    one = tiny_settings(**TINY)
    ten = tiny_settings(**TINY, crops=10)
    row = {"video_id": "v", "uri": made[0].uri}
    clips1 = [
        r["clip"] for r in decode_video(row, sampling=sampling_of(one, one.spec())) if r["kind"] == "clip"
    ]
    clips10 = [
        r["clip"] for r in decode_video(row, sampling=sampling_of(ten, ten.spec())) if r["kind"] == "clip"
    ]
    assert len(clips1) == len(clips10) == 5
    for c1, c10 in zip(clips1, clips10, strict=True):
        assert c10.shape == (10, 8, 32, 32, 3)
        np.testing.assert_array_equal(c10[CENTRE], c1)


def test_settings_refuse_other_crop_counts_and_a_grid_with_ten_crops():
    with pytest.raises(AnomalyError, match="expected 1 .* or 10"):
        tiny_settings(**TINY, crops=5).validate()
    with pytest.raises(AnomalyError, match="cannot be combined"):
        tiny_settings(**TINY, crops=10, grid=2).validate()


def test_extractor_runs_every_crop():
    extractor = ClipFeatureExtractor("i3d_r50", None, crop=(32, 32), clip_len=8, device="cpu", crops=10)
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, size=(2, 10, 8, 32, 32, 3), dtype=np.uint8)
    out = extractor({"clip": clips, "kind": np.array(["clip", "end"])})["features"]
    assert out.shape == (2, 10, 2048) and not out[1].any()
    single = ClipFeatureExtractor("i3d_r50", None, crop=(32, 32), clip_len=8, device="cpu")
    np.testing.assert_allclose(
        out[0, 3], single({"clip": clips[0, 3:4]})["features"][0], rtol=1e-4, atol=1e-5
    )


def test_ten_crop_extraction_of_a_synthetic_video(videos, tmp_path, ray_cluster):
    folder, annotations, _ = videos
    truth = GroundTruth.load(annotations, None)
    one, ten = str(tmp_path / "one"), str(tmp_path / "ten")
    # --keep-clips: the clip table is read back below (and exported at clip level)
    assert not extract(folder, one, tiny_settings(**TINY, keep_clips=True), truth).failed
    report = extract(folder, ten, tiny_settings(**TINY, crops=10, keep_clips=True), truth)
    assert len(report.extracted) == 2 and not report.failed
    assert feature_store.read_metadata(ten).crops == 10 and feature_store.read_metadata(one).crops is None

    # Clip table: ten distinct crop features per clip; the centre crop is the one-crop extraction's clip.
    clips10 = feature_store.read_clips(ten)
    clips1 = feature_store.read_clips(one)
    feats10 = np.stack(clips10.column("features").to_numpy(zero_copy_only=False)).reshape(
        len(clips10), 10, -1
    )
    feats1 = np.stack(clips1.column("features").to_numpy(zero_copy_only=False))
    assert feats10.shape == (10, 10, 2048)
    for clip in feats10:
        assert len({c.tobytes() for c in clip}) == 10
    np.testing.assert_allclose(feats10[:, CENTRE], feats1, rtol=1e-4, atol=1e-5)

    # Bags: each crop pooled on its own; features is their mean; the centre crop's bag is the one-crop bag.
    table = feature_store.read_table(ten, columns=["features", "features_crops"])
    crops = np.stack(feature_store.grid_from_arrow(table.column("features_crops")))
    assert crops.shape == (2, 10, 32, 2048)
    np.testing.assert_allclose(np.linalg.norm(crops, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        feature_store.features_from_arrow(table.column("features")), crops.mean(1), rtol=1e-6
    )
    bags1 = feature_store.load_bags(one)
    bags10 = feature_store.load_bags(ten)
    order = table.column("video_id").to_pylist()
    assert sorted(bags1.video_ids) == sorted(bags10.video_ids) == sorted(order)
    one_crop = bags1.features[[bags1.video_ids.index(video_id) for video_id in order]]
    np.testing.assert_allclose(crops[:, CENTRE], one_crop, rtol=1e-4, atol=1e-5)

    # RTFM's files: one row per clip, (clips, 10, D), the raw clip features.
    from anomaly.export import export_features

    export_features(ten, str(tmp_path / "rtfm"), "rtfm-npy", level="clips")
    for video_id in bags10.video_ids:
        rows = np.load(tmp_path / "rtfm" / f"{video_id}.npy")
        mine = clips10.filter(pc.equal(clips10.column("video_id"), video_id))
        assert rows.shape == (5, 10, 2048)
        np.testing.assert_array_equal(
            rows, np.stack(mine.column("features").to_numpy(zero_copy_only=False)).reshape(5, 10, -1)
        )


@pytest.mark.parametrize("mode", ["bags", "mean"])
def test_ten_crop_store_trains_and_evaluates(tmp_path, ray_cluster, mode):
    from anomaly.config import TrainConfig
    from anomaly.evaluation import evaluate
    from anomaly.synthetic.features import make_feature_store
    from anomaly.training import fit, prepare_inputs

    store = make_feature_store(
        str(tmp_path / "store"), num_train=24, num_test=12, feature_dim=16, seed=1, crops=10
    )
    config = TrainConfig(max_epochs=3, batch_size=6, crops=mode)
    inputs = prepare_inputs(store, config, cache=False)
    one = prepare_inputs(store, TrainConfig(max_epochs=3, batch_size=6, crops="mean"), cache=False)
    assert inputs.num_abnormal == one.num_abnormal * (10 if mode == "bags" else 1)
    fit(store, str(tmp_path / "run"), config, num_workers=1, cpus_per_worker=0.5, inputs=inputs)
    metrics = evaluate(store, str(tmp_path / "run"), str(tmp_path / "eval"), timelines=False)
    assert 0.0 <= metrics["frame_auc"] <= 1.0


@pytest.fixture(scope="module")
def ten_crop_checkpoint(tmp_path_factory):
    """A head as training on an i3d_r50 ten-crop store (8 x 32 x 32, random weights) would save it."""
    import torch

    from anomaly.checkpoints import checkpoint_payload
    from anomaly.config import TrainConfig
    from anomaly.training.loop import build_model

    torch.manual_seed(0)
    config = TrainConfig()
    rng = np.random.default_rng(0)
    model = build_model(2048, config, rng.random(2048).astype(np.float32), np.ones(2048, np.float32))
    meta = feature_store.StoreMetadata(
        backbone="i3d_r50",
        feature_dim=2048,
        weights_sha256="random",
        clip_len=8,
        stride=8,
        crop=(32, 32),
        crops=10,
    )
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(checkpoint_payload(model, config, store_metadata=meta.to_dict()), path)
    return str(path), model


def test_scoring_a_ten_crop_model_averages_crop_scores(videos, ten_crop_checkpoint, tmp_path, ray_cluster):
    from anomaly.crops import score_crops
    from anomaly.scoring.job import scoring_job
    from anomaly.scoring.outputs import read_scores
    from anomaly.scoring.pipeline import score
    from anomaly.scoring.single import score_video
    from anomaly.scoring.windows import DEFAULT_WINDOW_SECONDS, score_clips, window_clips

    _, _, made = videos
    checkpoint, model = ten_crop_checkpoint
    uri = made[0].uri
    single = score_video(uri, checkpoint, device="cpu")
    assert single.clip_scores.shape == (5,)

    # By hand: ten-crop clip features, each crop scored as its own clip sequence, scores averaged.
    settings = tiny_settings(**TINY, crops=10)
    row = {"video_id": "v", "uri": uri}
    clips = np.stack(
        [
            r["clip"]
            for r in decode_video(row, sampling=sampling_of(settings, settings.spec()))
            if r["kind"] == "clip"
        ]
    )
    feats = ClipFeatureExtractor("i3d_r50", None, crop=(32, 32), clip_len=8, device="cpu", crops=10)(
        {"clip": clips}
    )["features"]
    window = window_clips(DEFAULT_WINDOW_SECONDS, single.fps, 8)
    expected = score_crops(lambda f: score_clips(model, f, window), feats)
    np.testing.assert_allclose(single.clip_scores, expected, rtol=1e-4, atol=1e-5)
    per_crop = [score_clips(model, feats[:, k], window) for k in range(10)]
    assert np.ptp(np.stack(per_crop), axis=0).max() > 0  # the crops do score differently

    # The Ray pipeline (clip table -> scoring task) gives the same scores.
    job = scoring_job(checkpoint, device="cpu", batch_size=4)
    assert job.extraction.crops == 10
    out = str(tmp_path / "scores")
    report = score([uri], out, job)
    assert not report.failed
    table = read_scores(out).sort_by("clip_index")
    np.testing.assert_allclose(table.column("score").to_numpy(), single.clip_scores, rtol=1e-4, atol=1e-5)


def test_one_crop_and_ten_crop_runs_do_not_share_a_store(tmp_path):
    ten = feature_store.StoreMetadata(backbone="i3d_r50", feature_dim=2048, crops=10)
    one = feature_store.StoreMetadata(backbone="i3d_r50", feature_dim=2048)
    feature_store.ensure_metadata(str(tmp_path / "ten"), ten)
    with pytest.raises(AnomalyError, match=r"crops=10 \(store\) vs 1 \(this run\)"):
        feature_store.ensure_metadata(str(tmp_path / "ten"), one)
    feature_store.ensure_metadata(str(tmp_path / "one"), one)
    with pytest.raises(AnomalyError, match=r"crops=10 \(this run\)|crops=None \(store\) vs 10"):
        feature_store.ensure_metadata(str(tmp_path / "one"), ten)
    feature_store.ensure_metadata(
        str(tmp_path / "ten"), feature_store.StoreMetadata(backbone="i3d_r50")
    )  # importer
