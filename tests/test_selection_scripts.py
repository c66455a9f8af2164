"""The recipe-selection scripts of benchmarks/ on a small real store: CV rows and per-class figures."""

from __future__ import annotations

import json
import sys

import numpy as np
from helpers import REPO

from anomaly.store import Bags, load_bags
from anomaly.synthetic.features import make_feature_store

sys.path.append(str(REPO / "benchmarks"))  # after the repo: its scripts shadow nothing
import cv_select  # noqa: E402
import frame_auc_anatomy  # noqa: E402
import video_context  # noqa: E402


def test_cross_validation_rows_carry_fold_and_per_class_bag_auc(tmp_path):
    store = make_feature_store(
        str(tmp_path / "store"), num_train=24, num_test=4, feature_dim=16, signal=2.0, seed=5
    )
    name = "mlp topk_bce robust EMA, all train videos"
    rows = cv_select.cross_validate(store, [name], folds=2, seeds=[0], epochs=2)
    bags = load_bags(store, split="train")
    anomalous = sorted(set(np.asarray(bags.classes)[np.asarray(bags.labels) == 1]))
    assert [row["fold"] for row in rows] == [0, 1]
    for row in rows:
        assert 0.0 <= row["cv_bag_auc"] <= 1.0 and row["recipe"] == name
        assert set(row["per_class_bag_auc"]) <= set(anomalous) and row["per_class_bag_auc"]
    mean, std, n = cv_select.summary(rows)[name]
    assert n == 2 and mean == np.mean([row["cv_bag_auc"] for row in rows])


def test_per_class_bag_auc_pits_each_class_against_every_normal_video():
    scores = np.array([[0.1, 0.2, 0.1], [0.2, 0.1, 0.1], [0.9, 0.8, 0.7], [0.1, 0.1, 0.2]])
    labels = np.array([0, 0, 1, 1])
    classes = np.array(["Normal", "Normal", "Arson", "Stealing"])
    got = cv_select.per_class_bag_auc(scores, labels, classes)
    assert got == {"Arson": 1.0, "Stealing": 0.5}  # ties both normal bags


def test_video_context_variants_keep_shapes_and_multiply_by_the_bag_score():
    scores = np.array([[0.2, 0.4, 0.6, 0.8]])
    chosen = video_context.variants(topk=2)
    assert set(chosen) == {"none", "gauss0.5", "gauss1", "video_topk"}
    for post in chosen.values():
        assert post(scores).shape == scores.shape
    np.testing.assert_allclose(chosen["video_topk"](scores), scores * 0.7)
    np.testing.assert_allclose(chosen["none"](scores), scores)


def _split(features: np.ndarray, labels, frames, intervals) -> Bags:
    n = len(labels)
    return Bags(
        video_ids=[f"v{i}" for i in range(n)],
        features=features.astype(np.float32),
        labels=np.asarray(labels),
        num_frames=np.asarray(frames),
        intervals=intervals,
        classes=["Arson" if y else "Normal" for y in labels],
        splits=["test"] * n,
    )


def test_video_oracles_are_computed_from_the_annotations_alone():
    # a normal video, one half anomalous, one a tenth anomalous (100 frames each):
    # 60 anomalous frames against 240 normal ones, 140 of those inside anomalous videos.
    test = _split(np.zeros((3, 32, 4)), [0, 1, 1], [100, 100, 100], [[], [(0, 50)], [(0, 10)]])
    got = frame_auc_anatomy.label_ceilings(test, clip_len=1)
    assert got["anomalous_videos"] == 2 and got["anomalous_frame_share"] == 60 / 300
    assert np.isclose(got["mean_anomalous_fraction"], 0.3)
    # equal scores: each anomalous frame beats the 100 normal-video frames, ties the 140 others
    assert np.isclose(got["video_oracle_equal"], (100 + 0.5 * 140) / 240)
    # ordered by fraction: the half-anomalous video's 50 frames beat 190 and tie 50; the other's 10 beat 100, tie 90
    assert np.isclose(got["video_oracle_by_fraction"], (50 * (190 + 25) + 10 * (100 + 45)) / (60 * 240))


def test_segment_labels_follow_the_clip_mapping_of_the_evaluation():
    # 64 frames in clips of 2: 32 clips, one per segment; frames [8, 13) make clips 4 and 5
    # anomalous and clip 6 one frame in two (not over half)
    test = _split(np.zeros((1, 32, 4)), [1], [64], [[(8, 13)]])
    got = frame_auc_anatomy.segment_labels(test, clip_len=2)
    assert np.flatnonzero(got[0]).tolist() == [4, 5]


def test_recipe_anatomy_separates_video_ranking_from_moments():
    rng = np.random.default_rng(0)
    frames, intervals = [320] * 4, [[], [], [(0, 160)], [(160, 320)]]
    # scores that find the anomalous half of each anomalous video and rank videos perfectly
    scores = np.zeros((4, 32))
    scores[2, :16] = scores[3, 16:] = 0.9
    scores[2:, :] += 0.05
    test = _split(np.zeros((4, 32, 4)), [0, 0, 1, 1], frames, intervals)
    got = frame_auc_anatomy.recipe_anatomy(scores, test, clip_len=10, topk=3, rng=rng)
    assert got["frame_auc"] == 1.0 and got["within_video_auc"] == 1.0 and got["bag_auc"] == 1.0
    # held constant per video, the moments are gone: anomalous frames tie their own normal half
    assert np.isclose(got["bag_score_constant"], (2 * 320 + 0.5 * 320) / (4 * 320 - 320))
    assert got["shuffled_within_video"] < got["frame_auc"]


def test_supervised_probe_finds_moments_when_the_features_carry_them():
    rng = np.random.default_rng(1)
    labels = [1] * 10
    intervals = [[(int(s) * 10, int(s) * 10 + 80)] for s in rng.integers(0, 24, 10)]
    test = _split(rng.normal(size=(10, 32, 8)), labels, [320] * 10, intervals)
    truth = frame_auc_anatomy.segment_labels(test, clip_len=10)
    test.features[..., 0] += 3.0 * truth  # one feature marks anomalous segments
    assert frame_auc_anatomy.supervised_probe(test, clip_len=10)["probe_within_video_auc"] > 0.95
    test.features[..., 0] = rng.normal(size=(10, 32))  # and without it, nothing to find
    assert frame_auc_anatomy.supervised_probe(test, clip_len=10)["probe_within_video_auc"] < 0.8


def test_labels_only_run_reads_no_feature_and_writes_the_oracles(tmp_path, monkeypatch):
    store = make_feature_store(
        str(tmp_path / "store"), num_train=4, num_test=6, feature_dim=8, signal=2.0, seed=3
    )
    out = tmp_path / "anatomy.json"
    monkeypatch.setattr(
        sys, "argv", ["frame_auc_anatomy.py", "--store", store, "--labels-only", "--out", str(out)]
    )
    assert frame_auc_anatomy.main() == 0
    got = json.loads(out.read_text())
    assert set(got) == {"labels"} and got["labels"]["videos"] == 6
    assert 0.5 <= got["labels"]["video_oracle_equal"] <= got["labels"]["video_oracle_by_fraction"] <= 1.0


def test_half_splits_halve_each_label_and_a_scorer_equal_to_the_oracle_has_no_margin():
    labels = np.array([0] * 6 + [1] * 4)
    halves = frame_auc_anatomy.half_splits(labels, 5, np.random.default_rng(0))
    assert len(halves) == 5 and all(labels[h].tolist().count(1) == 2 and len(h) == 5 for h in halves)
    intervals = [[]] * 6 + [[(0, 10)], [(0, 40)], [(20, 60)], [(50, 64)]]
    test = _split(np.zeros((10, 32, 4)), labels, [64] * 10, intervals)
    got = frame_auc_anatomy.split_to_split(np.repeat(labels[:, None], 32, 1), test, 2, halves)
    assert (
        got["halves"] == 5 and got["margin_over_oracle_mean"] == 0.0 and got["margin_over_oracle_std"] == 0.0
    )
    # a scorer that also finds the moments beats the oracle on every half
    truth = frame_auc_anatomy.segment_labels(test, clip_len=2)
    better = frame_auc_anatomy.split_to_split(labels[:, None] + truth, test, 2, halves)
    assert better["margin_over_oracle_mean"] > 0.0 and better["half_frame_auc_range"][0] == 1.0


def test_full_run_trains_the_recipe_with_overrides_and_writes_every_part(tmp_path, monkeypatch):
    store = make_feature_store(
        str(tmp_path / "store"), num_train=16, num_test=8, feature_dim=16, signal=2.0, seed=4
    )
    out = tmp_path / "anatomy.json"
    argv = ["--store", store, "--seeds", "0", "--halves", "4", "--overrides", '{"max_epochs": 1}']
    monkeypatch.setattr(sys, "argv", ["frame_auc_anatomy.py", *argv, "--out", str(out)])
    assert frame_auc_anatomy.main() == 0
    got = json.loads(out.read_text())
    assert set(got) == {"labels", "probe", "recipe"} and got["recipe"]["overrides"] == {"max_epochs": 1}
    (row,) = got["recipe"]["seeds"]
    assert {"frame_auc", "shuffled_within_video", "bag_score_constant", "within_video_auc"} <= set(row)
    assert 0.0 <= row["saturated_share"] <= 1.0 and 0.0 <= row["frame_auc_by_logits"] <= 1.0
    assert row["split_to_split"]["halves"] == 4


def test_logits_of_a_single_head_give_its_scores_and_an_ensemble_has_none():
    from anomaly.heads import build_head

    features = np.random.default_rng(0).normal(size=(3, 32, 8)).astype(np.float32)
    head = build_head("mlp", 8, dropout=0.0, feature_norm="none").eval()
    logits = frame_auc_anatomy.logits_of(head, features)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), cv_select.score(head, features), rtol=1e-5)
    pair = build_head("mlp", 8, dropout=0.0, feature_norm="none", ensemble=2).eval()
    assert frame_auc_anatomy.logits_of(pair, features) is None


def test_results_real_table_shows_what_the_frame_auc_is_made_of():
    import results_real

    name = next(iter(results_real.RECIPES))
    row = {
        "recipe": name,
        "frame_auc": 0.8,
        "frame_ap": 0.2,
        "false_alarm_rate": 0.0,
        "detection_rate": 0.5,
        "within_video_auc": 0.55,
        "video_oracle_auc": 0.83,
        "normal_score_mean": 0.1,
        "normal_score_p99": 0.5,
        "seconds": 10,
        "evaluation_protocol": {"name": "clips"},
        "coverage": {"summary": "130 of 290"},
    }
    text = results_real.table([{**row, "seed": 0}, {**row, "seed": 1, "within_video_auc": 0.65}], None)
    header, _, line = text.splitlines()[:3]
    assert "within-video AUC" in header and "video oracle" in header
    assert "| 0.600 | 0.8300 |" in line
