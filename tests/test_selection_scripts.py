"""The recipe-selection scripts of benchmarks/ on a small real store: CV rows and per-class figures."""

from __future__ import annotations

import sys

import numpy as np
from helpers import REPO

from anomaly.store import load_bags
from anomaly.synthetic.features import make_feature_store

sys.path.append(str(REPO / "benchmarks"))  # after the repo: its scripts shadow nothing
import cv_select  # noqa: E402
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
