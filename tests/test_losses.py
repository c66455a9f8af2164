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
# The losses take logits (mil_loss, rtfm_terms, false_alarm_term); these give the scores above.
ABN_L = torch.logit(ABN.double())
NOR_L = torch.logit(NOR.double())


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
    got = mil_loss(ABN_L, NOR_L, loss="sultani", lambda_smooth=0.1, lambda_sparse=0.01)
    assert float(got) == pytest.approx(hinge + 0.1 * smooth + 0.01 * sparse)


def test_topk_uses_mean_of_k_highest():
    # top-2 means: abnormal 0.55, 0.45; normal 0.25, 0.35
    hinge = ((1 - 0.55 + 0.25) + (1 - 0.55 + 0.35) + (1 - 0.45 + 0.25) + (1 - 0.45 + 0.35)) / 4
    got = mil_loss(ABN_L, NOR_L, loss="topk", topk=2, lambda_smooth=0, lambda_sparse=0)
    assert float(got) == pytest.approx(hinge)


def test_false_alarm_acts_on_every_normal_segment():
    base = mil_loss(ABN_L, NOR_L, loss="sultani", lambda_smooth=0, lambda_sparse=0)
    got = mil_loss(ABN_L, NOR_L, loss="false_alarm", lambda_smooth=0, lambda_sparse=0, lambda_false_alarm=0.5)
    by_hand = -sum(math.log(1 - s) for s in [0.2, 0.1, 0.0, 0.3, 0.6, 0.1, 0.1, 0.1]) / 8
    assert float(got - base) == pytest.approx(0.5 * by_hand, rel=1e-5)
    # Unlike the hinge (which sees only each normal bag's maximum), it has a gradient on every normal segment.
    normal = NOR_L.clone().requires_grad_(True)
    false_alarm_term(normal).backward()
    assert bool(((normal.grad > 0) == (NOR > 0)).all())  # every segment scored above 0
    normal.grad = None
    ranking_hinge(ABN, torch.sigmoid(normal)).backward()
    assert int((normal.grad != 0).sum()) == 2


def test_topk_bce_by_hand():
    # top-2 means: abnormal 0.55, 0.45 (target 1); normal 0.25, 0.35 (target 0)
    bce = -(math.log(0.55) + math.log(0.45)) / 2 - (math.log(0.75) + math.log(0.65)) / 2
    got = mil_loss(ABN_L, NOR_L, loss="topk_bce", topk=2, lambda_smooth=0, lambda_sparse=0)
    assert float(got) == pytest.approx(bce, rel=1e-5)


def test_rtfm_selects_by_feature_magnitude_by_hand():
    # Segment magnitudes: abnormal bag 3, 4, 0 ... picks segments 1 and 0 (k=2); normal picks 2 and 1.
    abn_f = torch.tensor([[[3.0, 0.0], [0.0, 4.0], [0.0, 0.0], [0.5, 0.0]]])
    nor_f = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.1, 0.0]]])
    abn_s = torch.logit(torch.tensor([[0.8, 0.6, 0.1, 0.9]]))
    nor_s = torch.logit(torch.tensor([[0.2, 0.4, 0.3, 0.9]]))
    bce, magnitude = rtfm_terms(abn_s, nor_s, abn_f, nor_f, k=2, margin=10.0)
    # scores of the picked segments: abnormal (0.6 + 0.8)/2 = 0.7, normal (0.3 + 0.4)/2 = 0.35;
    # one BCE averaged over all 2 bags (RTFM's BCELoss over the concatenated batch), not a sum of two.
    assert float(bce) == pytest.approx((-math.log(0.7) - math.log(0.65)) / 2, rel=1e-5)
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
    # RTFM's own regularisers: smoothness summed over bags (x batch), sparsity = L2 norm of all scores.
    s_a = torch.sigmoid(abn_s)
    with_reg = mil_loss(
        abn_s,
        nor_s,
        loss="rtfm",
        topk=2,
        lambda_smooth=8e-4,
        lambda_sparse=8e-3,
        lambda_magnitude=1e-4,
        batch_size=1,
        abnormal_features=abn_f,
        normal_features=nor_f,
    )
    smooth = float(((s_a[0, 1:] - s_a[0, :-1]) ** 2).sum())
    sparse = float(s_a.norm())
    assert float(with_reg) == pytest.approx(float(total) + 8e-4 * smooth + 8e-3 * sparse, rel=1e-5)
    with pytest.raises(ValueError, match="features"):
        mil_loss(abn_s, nor_s, loss="rtfm")


def test_loss_has_gradients():
    scores = torch.rand(4, 32, requires_grad=True)
    mil_loss(scores[:2], scores[2:]).backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("loss", ["topk_bce", "rtfm", "false_alarm"])
def test_confident_mistakes_still_have_a_gradient(loss):
    """Logits far on the wrong side (abnormal bags at -30, normal segments at +30): a loss computed
    on clamped probabilities has a gradient of exactly 0 there; on logits it pulls them back."""
    abnormal = torch.full((2, 32), -30.0, requires_grad=True)
    normal = torch.full((2, 32), 30.0, requires_grad=True)
    features = torch.rand(4, 32, 8)
    mil_loss(
        abnormal,
        normal,
        loss=loss,
        topk=3,
        abnormal_features=features[:2],
        normal_features=features[2:],
    ).backward()
    if loss != "false_alarm":  # the hinge on saturated sigmoids is Sultani's, flat by design
        assert float(abnormal.grad.abs().max()) > 1e-3
    assert float(normal.grad.abs().max()) > 1e-3
    assert torch.isfinite(abnormal.grad).all() and torch.isfinite(normal.grad).all()


def test_topk_bce_matches_bce_of_probabilities_where_no_clamp_acts():
    abnormal, normal = torch.randn(3, 32, dtype=torch.float64), torch.randn(3, 32, dtype=torch.float64)
    got = mil_loss(abnormal, normal, loss="topk_bce", topk=3, lambda_smooth=0, lambda_sparse=0)
    p_a = torch.sigmoid(abnormal).topk(3, dim=-1).values.mean(-1)
    p_n = torch.sigmoid(normal).topk(3, dim=-1).values.mean(-1)
    want = -torch.log(p_a).mean() - torch.log(1 - p_n).mean()
    assert float(got) == pytest.approx(float(want), rel=1e-9)


def test_a_registered_loss_is_accepted_by_config_and_training_code():
    from anomaly.config import TrainConfig
    from anomaly.errors import AnomalyError
    from anomaly.losses import LOSSES, config_loss, register_loss

    with pytest.raises(AnomalyError, match="loss"):
        TrainConfig(loss="mean_bce_test")

    @register_loss("mean_bce_test")
    def mean_bce(abnormal, normal, terms):
        return (
            torch.nn.functional.softplus(-abnormal.mean(-1)).mean()
            + torch.nn.functional.softplus(normal.mean(-1)).mean()
        )

    try:
        config = TrainConfig(loss="mean_bce_test")
        abnormal, normal = torch.zeros(2, 32), torch.zeros(2, 32)
        assert float(config_loss(config, abnormal, normal)) == pytest.approx(2 * math.log(2))
        with pytest.raises(ValueError, match="twice"):
            register_loss("mean_bce_test")(mean_bce)
    finally:
        LOSSES.pop("mean_bce_test")


def test_sample_batch_selection_takes_more_from_a_bag_with_more_outlying_segments():
    """BN-WVAD's SBS (Fig. 4 of the paper): top-k per bag OR the top ratio of the whole batch."""
    from anomaly.losses import sample_batch_selection

    dfm = torch.full((3, 10), 0.1)
    dfm[0, :6] = torch.tensor([9.0, 8.0, 7.0, 6.0, 5.0, 4.0])  # a bag full of outliers
    dfm[1, 3] = 0.5  # a bag with one mild outlier
    mask = sample_batch_selection(dfm, per_bag=1, batch_ratio=0.2)  # 6 of the batch's 30
    assert mask.sum(dim=1).tolist() == [6, 1, 1]  # the batch part goes to bag 0, each bag gives 1
    assert bool(mask[1, 3])
    assert sample_batch_selection(dfm, per_bag=2, batch_ratio=0.0).sum(dim=1).tolist() == [2, 2, 2]


def test_mean_pull_push_is_the_triplet_hinge_around_the_batchnorm_mean():
    from anomaly.losses import mean_pull_push

    # DFM = norm of z: abnormal bags (2 bags of 4 segments, z in 1-D), normal bags likewise.
    abnormal = torch.tensor([[3.0, 0.5, 0.2, 0.1], [0.3, 0.2, 2.5, 0.1]])[..., None]
    normal = torch.tensor([[0.4, 0.1, 0.0, 0.2], [1.0, 0.3, 0.1, 0.0]])[..., None]
    abnormal.requires_grad_(True)
    normal.requires_grad_(True)
    loss = mean_pull_push(abnormal, normal, per_bag=1, batch_ratio=0.0)
    # Picked: abnormal 3.0 (bag 0), 2.5 (bag 1); normal: 2 // 2 + 1 = 2 per bag, rank-major
    # [0.4, 1.0, 0.2, 0.3] truncated to 2 -> pairs (0.4, 3.0), (1.0, 2.5): both past the margin 1.
    assert float(loss.detach()) == 0.0
    close = mean_pull_push(abnormal * 0.3, normal, per_bag=1, batch_ratio=0.0)  # 0.9 and 0.75
    assert float(close.detach()) == pytest.approx(((0.4 - 0.9 + 1) + (1.0 - 0.75 + 1)) / 2)
    close.backward()
    # Pull the picked normal segments to the mean, push the picked abnormal ones away; no others.
    assert abnormal.grad[0, 0, 0] < 0 and abnormal.grad[1, 2, 0] < 0
    assert normal.grad[0, 0, 0] > 0 and normal.grad[1, 0, 0] > 0
    assert int((abnormal.grad != 0).sum()) == 2 and int((normal.grad != 0).sum()) == 2


def test_bnwvad_loss_trains_the_bnwvad_head_and_only_with_it():
    from anomaly.config import TrainConfig
    from anomaly.errors import AnomalyError
    from anomaly.heads import build_head
    from anomaly.losses import config_loss

    config = TrainConfig(model="bnwvad", loss="bnwvad", dropout=0.0, batch_size=4)
    with pytest.raises(AnomalyError, match="model"):
        TrainConfig(loss="bnwvad")  # the mlp head has no BatchNorm deviations to read
    torch.manual_seed(0)
    head = build_head("bnwvad", 16, dropout=0.0, feature_norm="none").train()
    bags = torch.randn(8, 32, 16)
    ((logits, features),) = head.member_outputs(bags)
    assert logits.shape == (8, 32) and features.shape == (8, 32, 32 + 16 + 1)
    loss = config_loss(config, logits[:4], logits[4:], features[:4], features[4:])
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert float(head.embed[0].weight.grad.abs().max()) > 0
    # The normal loss alone: the L2 norm over T of the normal bags' classifier probabilities.
    c_normal = features[4:, :, -1].detach()
    normal_term = torch.sigmoid(c_normal).norm(dim=-1).mean()
    assert float(loss.detach()) >= float(normal_term) - 1e-6
