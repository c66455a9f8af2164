import math

import pytest
import torch

from anomaly.losses import (
    bag_score,
    false_alarm_term,
    mil_loss,
    ranking_hinge,
    rtfm_terms,
    smoothness,
    sparsity,
)

ABN = torch.tensor([[0.1, 0.9, 0.2, 0.0], [0.3, 0.3, 0.5, 0.4]])
NOR = torch.tensor([[0.2, 0.1, 0.0, 0.3], [0.6, 0.1, 0.1, 0.1]])


def test_bag_score_max_and_topk():
    assert bag_score(ABN, 1).tolist() == pytest.approx([0.9, 0.5])
    assert bag_score(ABN, 2).tolist() == pytest.approx([0.55, 0.45])


def test_hinge_over_all_pairs_by_hand():
    # maxima: abnormal 0.9, 0.5; normal 0.3, 0.6
    pairs = [1 - 0.9 + 0.3, 1 - 0.9 + 0.6, 1 - 0.5 + 0.3, 1 - 0.5 + 0.6]
    assert float(ranking_hinge(ABN, NOR)) == pytest.approx(sum(pairs) / 4)


def test_hinge_is_zero_when_well_separated():
    assert float(ranking_hinge(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.0]]))) == 0.0


def test_smoothness_and_sparsity_by_hand():
    smooth_0 = 0.8**2 + 0.7**2 + 0.2**2
    smooth_1 = 0.0 + 0.2**2 + 0.1**2
    assert float(smoothness(ABN)) == pytest.approx((smooth_0 + smooth_1) / 2)
    assert float(sparsity(ABN)) == pytest.approx((1.2 + 1.5) / 2)


def test_sultani_total_by_hand():
    hinge = (0.4 + 0.7 + 0.8 + 1.1) / 4
    smooth = (0.8**2 + 0.7**2 + 0.2**2 + 0.2**2 + 0.1**2) / 2
    sparse = (1.2 + 1.5) / 2
    got = mil_loss(ABN, NOR, loss="sultani", lambda_smooth=0.1, lambda_sparse=0.01)
    assert float(got) == pytest.approx(hinge + 0.1 * smooth + 0.01 * sparse)


def test_topk_uses_mean_of_k_highest():
    # top-2 means: abnormal 0.55, 0.45; normal 0.25, 0.35
    hinge = ((1 - 0.55 + 0.25) + (1 - 0.55 + 0.35) + (1 - 0.45 + 0.25) + (1 - 0.45 + 0.35)) / 4
    got = mil_loss(ABN, NOR, loss="topk", topk=2, lambda_smooth=0, lambda_sparse=0)
    assert float(got) == pytest.approx(hinge)


def test_false_alarm_acts_on_every_normal_segment():
    base = mil_loss(ABN, NOR, loss="sultani", lambda_smooth=0, lambda_sparse=0)
    got = mil_loss(ABN, NOR, loss="false_alarm", lambda_smooth=0, lambda_sparse=0, lambda_false_alarm=0.5)
    by_hand = -sum(math.log(1 - s) for s in [0.2, 0.1, 0.0, 0.3, 0.6, 0.1, 0.1, 0.1]) / 8
    assert float(got - base) == pytest.approx(0.5 * by_hand, rel=1e-5)
    # Unlike the hinge (which sees only each normal bag's maximum), it has a gradient on every normal segment.
    normal = NOR.clone().requires_grad_(True)
    false_alarm_term(normal).backward()
    assert bool((normal.grad > 0).all())
    normal.grad = None
    ranking_hinge(ABN, normal).backward()
    assert int((normal.grad != 0).sum()) == 2


def test_topk_bce_by_hand():
    # top-2 means: abnormal 0.55, 0.45 (target 1); normal 0.25, 0.35 (target 0)
    bce = -(math.log(0.55) + math.log(0.45)) / 2 - (math.log(0.75) + math.log(0.65)) / 2
    got = mil_loss(ABN, NOR, loss="topk_bce", topk=2, lambda_smooth=0, lambda_sparse=0)
    assert float(got) == pytest.approx(bce, rel=1e-5)


def test_rtfm_selects_by_feature_magnitude_by_hand():
    # Segment magnitudes: abnormal bag 3, 4, 0 ... picks segments 1 and 0 (k=2); normal picks 2 and 1.
    abn_f = torch.tensor([[[3.0, 0.0], [0.0, 4.0], [0.0, 0.0], [0.5, 0.0]]])
    nor_f = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.1, 0.0]]])
    abn_s = torch.tensor([[0.8, 0.6, 0.1, 0.9]])
    nor_s = torch.tensor([[0.2, 0.4, 0.3, 0.9]])
    bce, magnitude = rtfm_terms(abn_s, nor_s, abn_f, nor_f, k=2, margin=10.0)
    # scores of the picked segments: abnormal (0.6 + 0.8)/2 = 0.7, normal (0.3 + 0.4)/2 = 0.35
    assert float(bce) == pytest.approx(-math.log(0.7) - math.log(0.65), rel=1e-5)
    # mean picked features: abnormal (1.5, 2) -> norm 2.5; normal (0.5, 1) -> norm sqrt(1.25)
    assert float(magnitude) == pytest.approx((10 - 2.5 + math.sqrt(1.25)) ** 2, rel=1e-5)
    total = mil_loss(
        abn_s,
        nor_s,
        loss="rtfm",
        topk=2,
        lambda_smooth=0,
        lambda_sparse=0,
        lambda_magnitude=1e-4,
        abnormal_features=abn_f,
        normal_features=nor_f,
    )
    bce100, mag100 = rtfm_terms(abn_s, nor_s, abn_f, nor_f, k=2)
    assert float(total) == pytest.approx(float(bce100 + 1e-4 * mag100), rel=1e-5)
    with pytest.raises(ValueError, match="features"):
        mil_loss(abn_s, nor_s, loss="rtfm")


def test_loss_has_gradients():
    scores = torch.rand(4, 32, requires_grad=True)
    mil_loss(scores[:2], scores[2:]).backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
