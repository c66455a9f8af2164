import pytest
import torch

from anomaly.losses import bag_score, mil_loss, ranking_hinge, smoothness, sparsity

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


def test_false_alarm_adds_normal_max_term():
    base = mil_loss(ABN, NOR, loss="sultani", lambda_smooth=0, lambda_sparse=0)
    got = mil_loss(ABN, NOR, loss="false_alarm", lambda_smooth=0, lambda_sparse=0, lambda_false_alarm=0.5)
    assert float(got - base) == pytest.approx(0.5 * (0.3 + 0.6) / 2)


def test_loss_has_gradients():
    scores = torch.rand(4, 32, requires_grad=True)
    mil_loss(scores[:2], scores[2:]).backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
