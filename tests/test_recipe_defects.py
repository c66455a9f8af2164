"""Training defects of issue 19 (heads against their references, config, presets, metrics, tuning),
each checked on the real parts; the repeatability check on the real fixture files is in
test_real_features.py."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from anomaly.checkpoints import checkpoint_payload, load_scorer
from anomaly.config import TrainConfig, load_train_config
from anomaly.errors import AnomalyError
from anomaly.heads import HEADS, Ensemble, Head, MILScorer, RTFMHead, build_head, register_head
from anomaly.metrics import evaluate_frames
from anomaly.training.data import stratified_split
from anomaly.tuning.spec import load_search_spec

REPO = Path(__file__).resolve().parents[1]


def test_mlp_has_no_relu_after_its_32_unit_layer():
    """Sultani's Keras model and ekosman's port: 512 (ReLU) -> 32 (linear) -> 1."""
    net = MILScorer(16).net
    linear = [i for i, m in enumerate(net) if isinstance(m, nn.Linear)]
    assert linear == [0, 3, 6]  # the state-dict keys of earlier checkpoints
    assert isinstance(net[1], nn.ReLU) and not any(isinstance(m, nn.ReLU) for m in net[4:])
    # A negative pre-activation of the 32-unit layer reaches the output (a ReLU would zero it).
    head = MILScorer(4, feature_norm="none").eval()
    with torch.no_grad():
        for layer in (net_layer for net_layer in head.net if isinstance(net_layer, nn.Linear)):
            layer.weight.fill_(0)
            layer.bias.fill_(0)
        head.net[0].bias.fill_(1.0)  # hidden 512 = 1
        head.net[3].weight.fill_(-1.0 / 512)  # hidden 32 = -1
        head.net[6].weight.fill_(1.0)
        logits, _ = head.logits(torch.zeros(1, 4))
    assert float(logits) == pytest.approx(-32.0)


def test_old_mlp_checkpoints_load_as_they_were_trained(tmp_path):
    old = MILScorer(8, feature_norm="none", revision=1)
    assert isinstance(old.net[4], nn.ReLU)
    payload = checkpoint_payload(old, TrainConfig(feature_norm="none"))
    del payload["head"]["revision"]  # as written before revisions were recorded
    torch.save(payload, tmp_path / "model.pt")
    model, _ = load_scorer(str(tmp_path / "model.pt"))
    assert isinstance(model.net[4], nn.ReLU)
    x = torch.randn(3, 32, 8)
    assert torch.equal(model(x), old.eval()(x))


def test_rtfm_head_follows_rtfm_code_order_and_dropout():
    """RTFM's Aggregate: conv -> ReLU -> BN in each branch and in the fusion; dropout on the
    aggregated features before the classifier (model.py)."""
    head = RTFMHead(32, dropout=0.7)
    for block in [*head.pyramid, head.fuse]:
        assert [type(m) for m in block] == [nn.Conv1d, nn.ReLU, nn.BatchNorm1d]
    assert isinstance(head.feature_dropout, nn.Dropout) and head.feature_dropout.p == 0.7
    head.train()
    _, features = head.logits(torch.randn(2, 32, 32))
    assert float((features == 0).float().mean()) > 0.5  # dropout 0.7 on the features in training


def test_ensemble_averages_member_scores_and_round_trips(tmp_path):
    torch.manual_seed(0)
    config = TrainConfig(ensemble=3, feature_norm="standardize")
    model = build_head("mlp", 8, dropout=0.0, feature_norm="standardize", ensemble=3)
    assert isinstance(model, Ensemble) and len(model.members) == 3
    model.set_normalization(np.ones(8), 2 * np.ones(8))
    model.eval()
    x = torch.randn(2, 32, 8)
    z = (x - 1) / 2
    by_hand = torch.stack([torch.sigmoid(m.logits(z)[0]) for m in model.members]).mean(0)
    assert torch.allclose(model(x), by_hand)
    assert len(model.member_outputs(x)) == 3
    torch.save(checkpoint_payload(model, config), tmp_path / "model.pt")
    loaded, payload = load_scorer(str(tmp_path / "model.pt"))
    assert payload["head"]["ensemble"] == 3 and torch.allclose(loaded(x), model(x))


def test_a_registered_head_is_accepted_by_config_building_and_loading(tmp_path):
    with pytest.raises(AnomalyError, match="model"):
        TrainConfig(model="linear_test")

    @register_head("linear_test")
    class LinearHead(Head):
        def __init__(self, feature_dim, *, dropout, feature_norm, revision=2):
            super().__init__(feature_dim, feature_norm)
            self.fc = nn.Linear(feature_dim, 1)

        def logits(self, x):
            return self.fc(x).squeeze(-1), x

    try:
        config = TrainConfig(model="linear_test", feature_norm="none")
        model = build_head("linear_test", 8, dropout=0.0, feature_norm="none")
        torch.save(checkpoint_payload(model, config), tmp_path / "model.pt")
        loaded, _ = load_scorer(str(tmp_path / "model.pt"))
        x = torch.randn(2, 32, 8)
        assert isinstance(loaded, LinearHead) and torch.equal(loaded(x), model.eval()(x))
    finally:
        HEADS.pop("linear_test")


def test_val_fraction_zero_trains_on_every_video():
    config = TrainConfig(val_fraction=0.0)
    labels = np.array([0, 1] * 20)
    train, val = stratified_split(labels, config.val_fraction, config.seed)
    assert len(val) == 0 and len(train) == len(labels)
    with pytest.raises(AnomalyError, match="val_fraction"):
        TrainConfig(val_fraction=0.0, selection="best_val")  # it would select on nothing


def test_paper_preset_l2_normalises_segments_like_sultanis_features():
    preset = load_train_config(str(REPO / "tune_configs" / "sultani2018.yaml"))
    assert preset.feature_norm == "l2" and preset.loss == "sultani" and preset.optimizer == "adagrad"


def test_detection_rate_is_reported_beside_false_alarms():
    # Two videos of 32 frames (clip_len 1 -> one frame per segment); an anomaly in video 0.
    scores = np.zeros((2, 32))
    scores[0, :] = 0.9  # every anomalous frame above 0.5
    scores[1, 0:4] = 0.7  # 4 of the 32 normal frames of video 1 above 0.5
    got = evaluate_frames(scores, np.array([1, 0]), [32, 32], [[(8, 15)], []], ["A", ""], clip_len=1)
    assert got["detection_rate"] == 1.0
    assert got["false_alarm_rate"] == pytest.approx(4 / 32)
    silent = evaluate_frames(
        np.zeros((2, 32)), np.array([1, 0]), [32, 32], [[(8, 15)], []], ["A", ""], clip_len=1
    )
    assert silent["false_alarm_rate"] == 0 and silent["detection_rate"] == 0


def test_tune_refuses_to_search_feature_norm(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"search": {"feature_norm": {"choice": ["robust", "none"]}}}))
    with pytest.raises(AnomalyError, match="feature_norm"):
        load_search_spec(str(path))


def test_search_mil_covers_every_loss_and_the_default_normalisation():
    raw = yaml.safe_load((REPO / "tune_configs" / "search_mil.yaml").read_text())
    assert set(raw["search"]["loss"]["choice"]) == {"sultani", "topk", "topk_bce", "false_alarm", "rtfm"}
    assert raw["base"]["feature_norm"] == TrainConfig().feature_norm
    assert "patience" not in raw["base"]  # unused under the default EMA selection
    load_search_spec(str(REPO / "tune_configs" / "search_mil.yaml"))


def test_bnwvad_head_scores_by_divergence_from_the_batchnorm_mean(tmp_path):
    """BN-WVAD (models/model.py): score = DFM x sigmoid(classifier), DFM = ‖(h - μ) / σ‖ of each
    pre-BN hidden layer against its BatchNorm running statistics, summed over the two layers."""
    from anomaly.heads import BNWVADHead

    torch.manual_seed(0)
    head = build_head("bnwvad", 16, dropout=0.0, feature_norm="none")
    assert isinstance(head, BNWVADHead) and head.context == "bag"
    head.train()
    for _ in range(20):  # running statistics of "normal" segments
        head.member_outputs(torch.randn(8, 32, 16))
    head.eval()
    x = torch.randn(3, 32, 16)
    scores = head(x)
    assert scores.shape == (3, 32) and bool(((scores >= 0) & (scores < 1)).all())
    assert head(x[0]).shape == (32,)
    # By hand from the BatchNorm buffers: sigmoid(log y) = y / (1 + y), y = DFM · p / (√32 + √16).
    with torch.no_grad():
        enhanced = head.enhancer(head.embed(x.transpose(1, 2)).transpose(1, 2))
        h1 = head.hidden1(enhanced)
        h2 = head.hidden2(torch.relu(head.bn1(h1.transpose(1, 2)).transpose(1, 2)))
        p = torch.sigmoid(head.classifier(torch.relu(head.bn2(h2.transpose(1, 2)).transpose(1, 2)))[..., 0])

        def dfm(h, bn):
            return ((h - bn.running_mean) ** 2 / (bn.running_var + bn.eps)).sum(-1).sqrt()

        y = (dfm(h1, head.bn1) + dfm(h2, head.bn2)) * p / (32**0.5 + 16**0.5)
    assert torch.allclose(scores, y / (1 + y), atol=1e-6)
    # The paper's premise: a segment far from the batch mean diverges more than the ordinary ones.
    outlier = x.clone()
    outlier[0, 10] = 25.0
    with torch.no_grad():
        _, features = head.logits(outlier)
    divergence = features[..., :32].norm(dim=-1) + features[..., 32:48].norm(dim=-1)
    assert int(divergence[0].argmax()) in (9, 10, 11)  # the embedding convolution has kernel 3
    assert float(divergence[0, 9:12].min()) > 2 * float(divergence[1:].max())
    # Scores depend on the BatchNorm buffers: a checkpoint round-trips them.
    config = TrainConfig(model="bnwvad", loss="bnwvad", feature_norm="none", dropout=0.0)
    torch.save(checkpoint_payload(head, config), tmp_path / "model.pt")
    loaded, _ = load_scorer(str(tmp_path / "model.pt"))
    assert torch.allclose(loaded(x), scores, atol=1e-6)


def test_bnwvad_preset_is_valid_and_carries_the_references_settings():
    preset = load_train_config(str(REPO / "tune_configs" / "bnwvad.yaml"))
    assert (preset.model, preset.loss) == ("bnwvad", "bnwvad")
    assert (preset.lr, preset.weight_decay, preset.batch_size, preset.dropout) == (1e-4, 5e-5, 64, 0.0)
    assert preset.topk == 3  # the UCF sample-level ratio 0.1 of 32 segments
    assert preset.selection == "last"  # the BatchNorm statistics belong to the live weights


def test_statistics_from_read_only_arrays_and_tensors_load_without_a_warning():
    import warnings

    from anomaly.normalization import FeatureNorm

    frozen = np.full(4, 2.0, dtype=np.float64)
    frozen.flags.writeable = False  # as they come out of Ray's object store
    norm = FeatureNorm(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        norm.set_statistics(frozen, frozen)
        norm.set_statistics(torch.full((4,), 3.0), torch.full((4,), 3.0))
        norm.set_statistics(frozen, frozen)
    assert norm.mean.tolist() == [2.0] * 4 and norm.std.dtype == torch.float32
