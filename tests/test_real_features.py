"""Defects real UCF-Crime features exposed (issue 11), each checked on the real fixture files."""

import json
import logging

import numpy as np
import pytest
import torch
import yaml
from helpers import frame_auc_again

from anomaly import store
from anomaly.checkpoints import load_scorer
from anomaly.evaluation import coverage
from anomaly.ground_truth import GroundTruth
from anomaly.heads import RTFMHead, TransformerHead
from anomaly.importers import crop_axis, import_features, parse_feature_file
from anomaly.normalization import CLIP, FeatureNorm, fit_statistics
from anomaly.protocols import frame_scores_and_labels
from anomaly.segments import clip_frame_segments, frame_segments
from ray_jobs import evaluate as evaluate_job
from ray_jobs import train as train_job


@pytest.fixture(scope="module")
def r3d34_store(tmp_path_factory, r3d34_data, shared_data, ray_cluster):
    out = tmp_path_factory.mktemp("r3d34") / "store"
    truth = GroundTruth.load(
        str(shared_data / "Temporal_Anomaly_Annotation.txt"),
        [
            str(shared_data / "Train_Annotation_with_frame_counts.txt"),
            str(shared_data / "Test_Annotation_with_frame_counts.txt"),
        ],
    )
    report = import_features(str(r3d34_data), str(out), truth=truth, backbone="r3d34")
    return out, report, truth


def test_import_one_rule_for_every_row_count(r3d34_store, r3d34_data):
    out, report, _ = r3d34_store
    # The 4 blank files are missing videos, not normal ones.
    assert len(report.skipped) == 4 and all("blank" in reason for _, reason in report.skipped)
    table = store.read_table(str(out), columns=["features", "source_rows"])
    rows = table.column("source_rows").to_numpy()
    assert set(rows.tolist()) == {31, 32, 33}
    features = store.features_from_arrow(table.column("features"))
    norms = np.linalg.norm(features, axis=-1)
    # Raw ResNet3D-34 rows have norms ~38-41 whatever the file's row count (31/33 used to become 1).
    for count in (31, 32, 33):
        assert norms[rows == count].min() > 30, count
    assert norms.max() < 50


def test_npy_crop_axis_is_checked(tmp_path, r3d34_data):
    real = parse_feature_file(
        "x.txt", next(r3d34_data.glob("train/Normal/Normal_Videos101_x264.txt")).read_bytes()
    )
    crops = np.stack([real + i for i in range(10)])  # (10 crops, 32 rows, 512)
    for array in (crops, crops.transpose(1, 0, 2)):
        path = tmp_path / "v.npy"
        np.save(path, array)
        np.testing.assert_allclose(parse_feature_file(str(path), path.read_bytes()), real + 4.5, rtol=1e-5)
    assert crop_axis((32, 10, 512)) == 1 and crop_axis((10, 32, 512)) == 0
    with pytest.raises(ValueError, match="crop axis"):
        crop_axis((10, 8, 512))


def test_robust_normalisation_bounds_held_out_c3d_zscores(shared_data):
    files = sorted((shared_data / "sample_c3d_features").glob("*.txt"))
    rows = [np.loadtxt(f, dtype=np.float32) for f in files]
    train, held_out = np.stack(rows[:5]), torch.from_numpy(np.concatenate(rows[5:]))
    old = FeatureNorm(4096, "standardize")
    old.set_statistics(*fit_statistics(train, "standardize"))
    assert float(old(held_out).abs().max()) > 1e3  # the defect: sparse C3D dims explode
    robust = FeatureNorm(4096, "robust")
    robust.set_statistics(*fit_statistics(train, "robust"))
    z = robust(held_out)
    assert float(z.abs().max()) <= CLIP
    assert float((z.abs() >= CLIP).float().mean()) < 1e-3  # the clip is a guard, rarely reached
    # Dense raw ResNet3D-34 rows and L2 C3D rows land on the same scale.
    dense = torch.randn(64, 4096).abs() * 40
    robust.set_statistics(*fit_statistics(dense.numpy(), "robust"))
    assert float(robust(dense).std()) == pytest.approx(1.0, abs=0.1)


def test_frames_go_through_their_clip(shared_data):
    truth = GroundTruth.load(
        str(shared_data / "Temporal_Anomaly_Annotation.txt"),
        [str(shared_data / "Test_Annotation_with_frame_counts.txt")],
    )
    frames = truth.frame_counts["Explosion008_x264"]
    by_clip, by_frame = clip_frame_segments(frames, 16), frame_segments(frames)
    assert by_clip.shape == by_frame.shape == (frames,)
    assert 0 < float((by_clip != by_frame).mean()) < 0.2  # the old rule gave these frames a neighbour's score
    clips = frames // 16
    from anomaly.segments import segment_bounds

    # Every frame's segment is one its clip was pooled into.
    bounds = segment_bounds(clips)
    clip = np.minimum(np.arange(frames) // 16, clips - 1)
    assert np.all(
        (bounds[by_clip] <= clip) & ((clip < bounds[by_clip + 1]) | (bounds[by_clip] == bounds[by_clip + 1]))
    )
    scores = np.linspace(0.1, 1.0, 32)
    matlab, labels = frame_scores_and_labels(scores, frames, [(100, 200)], protocol="sultani_matlab")
    assert matlab.shape == labels.shape == (frames,)
    assert np.all(matlab[(clips - 1) * 16 :] == 0)  # Evaluate_Anomaly_Detector.m leaves the last clip at 0
    snippet, labels = frame_scores_and_labels(scores, frames, [(100, 200)], protocol="snippet16")
    assert snippet.shape == labels.shape == (clips * 16,)
    assert np.all(snippet.reshape(clips, 16) == snippet.reshape(clips, 16)[:, :1])


def test_coverage_says_what_is_evaluated_and_warns_on_partial_split(r3d34_store, caplog):
    out, _, truth = r3d34_store
    bags = store.load_bags(str(out), split="test")
    listed = sum(truth.describe(v)["split"] == "test" for v in truth.temporal)
    got = coverage(bags, truth, "test")
    assert (
        got["summary"] == f"test videos {len(bags)} of {listed} listed; {listed - len(bags)} without features"
    )
    abnormal_only = bags.subset([i for i, label in enumerate(bags.labels) if label == 1])
    with caplog.at_level(logging.WARNING):
        partial = coverage(abnormal_only, truth, "test")
    assert any(g.startswith("normal") for g in partial["groups_without_any_video"])
    assert "PARTIAL TEST SPLIT" in caplog.text


# Sultani's MLP goes through the same commands in test_training.py and test_demo.py.
@pytest.mark.parametrize(
    ("head", "loss", "kind"), [("rtfm", "rtfm", RTFMHead), ("transformer", "topk_bce", TransformerHead)]
)
def test_each_head_trains_on_real_features_and_evaluates(r3d34_store, tmp_path, head, loss, kind):
    out, _, _ = r3d34_store
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {head}\nloss: {loss}\nmax_epochs: 2\nbatch_size: 4\nval_fraction: 0.3\n")
    run = tmp_path / "run"
    args = train_job.get_args_parser().parse_args(
        ["--features", str(out), "--out", str(run), "--config", str(config), "--max-failures", "0"]
    )
    assert train_job.main(args) == 0
    model, payload = load_scorer(str(run))
    assert isinstance(model, kind) and payload["head"]["model"] == head
    assert payload["epoch"] == 1  # selection ema: the fixed budget's end, not the best validation epoch
    assert "train_model" not in payload and "optimizer" not in payload
    features = torch.from_numpy(np.array(store.load_bags(str(out), split="test").features[:2]))
    with torch.no_grad():
        scores = model(features)
    assert scores.shape == (2, 32) and bool(((scores >= 0) & (scores <= 1)).all())
    evaluated = tmp_path / "eval"
    eargs = evaluate_job.get_args_parser().parse_args(
        [
            "--features",
            str(out),
            "--checkpoint",
            str(run),
            "--out",
            str(evaluated),
            "--no-timelines",
            "--protocol",
            "sultani_matlab",
        ]
    )
    assert evaluate_job.main(eargs) == 0
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["evaluation_protocol"]["name"] == "sultani_matlab" and metrics["model"] == head
    assert "of 290 listed" in metrics["coverage"]["summary"]
    assert metrics["frame_auc"] == pytest.approx(frame_auc_again(evaluated, str(out)), abs=1e-6)


def test_one_seed_gives_one_model_on_real_features(r3d34_store, tmp_path):
    """Same seed, store and worker count: bit-identical scores (the validation split, block order and
    batch order all follow the seed); the seed is recorded in the run; another seed differs."""
    out, _, _ = r3d34_store
    features = torch.from_numpy(np.array(store.load_bags(str(out), split="test").features))
    scores = []
    # Run c also trains on every video (val_fraction 0, the default): no validation split at all.
    for name, seed, val in (("a", 7, 0.3), ("b", 7, 0.3), ("c", 8, 0.0)):
        config = tmp_path / f"{name}.yaml"
        config.write_text(f"max_epochs: 2\nbatch_size: 4\nval_fraction: {val}\nseed: {seed}\n")
        run = tmp_path / name
        args = train_job.get_args_parser().parse_args(
            ["--features", str(out), "--out", str(run), "--config", str(config), "--max-failures", "0"]
        )
        assert train_job.main(args) == 0
        model, payload = load_scorer(str(run))
        assert payload["config"]["seed"] == seed
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == seed
        if val == 0:
            assert np.isnan(payload["metrics"]["val_auc"]) and payload["epoch"] == 1
        with torch.no_grad():
            scores.append(model(features))
    assert torch.equal(scores[0], scores[1])
    assert not torch.equal(scores[0], scores[2])
