"""MIL losses on bag *logits* of shape (bags, 32), for a batch of abnormal and normal bags.

Every loss is computed from the heads' logits (``Head.member_outputs``), never from
probabilities clamped before a log: a clamp makes the gradient exactly 0 once a logit
passes about ±13.8 on the wrong side, so a collapsed abnormal bag or a saturated normal
segment would stop being learned from. Terms on probabilities (the hinges, smoothness,
sparsity) use ``sigmoid(logits)``; terms with a log use ``logsigmoid``/``softplus``.

Losses are registered by name (:func:`register_loss`); the config key ``loss`` accepts
any registered name, and adding one is one decorated function here (plus its test).

- ``sultani`` (Sultani et al. 2018, eq. 7): mean over (abnormal, normal) pairs of
  ``max(0, 1 - max s_a + max s_n)``, plus Sultani's smoothness and sparsity (each
  summed over a bag's segments and averaged over bags);
- ``topk``: the same hinge on the mean of the k highest scores of each bag;
- ``topk_bce``: bag classification, ``BCE(mean top-k s_a, 1) + BCE(mean top-k s_n, 0)``
  (the snippet classifier loss of RTFM-era methods, with the top-k picked by score),
  plus Sultani's smoothness and sparsity;
- ``rtfm`` (Tian et al. 2021, eq. 5-7, as in their ``train.py``): the top-k segments of each
  bag are picked by *feature magnitude*; BCE on their mean score averaged over all 2B bags
  (one ``BCELoss`` over the concatenated batch, as RTFM), plus
  ``λ_mag · mean((max(0, m - ‖f̄_a‖₂) + ‖f̄_n‖₂)²)`` with f̄ the mean of the k
  largest-magnitude feature vectors of a bag and margin m = 100, plus RTFM's own
  regularisers: ``λ_smooth · Σ_bags Σ_t (s_t+1 - s_t)²`` (a *sum* over the batch's abnormal
  bags) and ``λ_sparse · ‖s_a‖₂`` (the L2 norm of all abnormal scores). RTFM's values are
  ``lambda_smooth: 8e-4``, ``lambda_sparse: 8e-3`` (``tune_configs/rtfm.yaml``);
- ``false_alarm``: ``sultani`` plus a term on *every* segment of the normal bags,
  ``λ_fa · mean_n mean_t -log(1 - s_{n,t})``: all segments of a normal video are
  known negatives (Zhong et al., CVPR 2019, treat normal videos' snippets as noise-free
  negatives);
- ``bnwvad`` (Zhou et al. 2023, BN-WVAD, as in its ``losses/``): the L2 norm of the classifier's
  probabilities on each normal bag, plus 5 and 20 x the mean-based pull-push triplet loss on the
  two BatchNorm'd hidden layers of ``model: bnwvad``, over the segments picked by Divergence of
  Feature from Mean with sample-batch selection (``topk`` per bag OR the top 20 % of the batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

RTFM_MARGIN = 100.0


@dataclass(frozen=True)
class LossTerms:
    """What a loss may read besides the logits: the config's weights and the heads' features."""

    topk: int = 3
    lambda_smooth: float = 8e-5
    lambda_sparse: float = 8e-5
    lambda_false_alarm: float = 0.1
    lambda_magnitude: float = 1e-4
    batch_size: int | None = None  # the global bags of each label per step (sums over the batch)
    abnormal_features: torch.Tensor | None = None
    normal_features: torch.Tensor | None = None


LossFn = Callable[[torch.Tensor, torch.Tensor, LossTerms], torch.Tensor]
LOSSES: dict[str, LossFn] = {}
NEEDS_FEATURES: set[str] = set()
# loss -> the head whose feature layout it reads (config validation requires that head with it).
NEEDS_HEAD: dict[str, str] = {}


def register_loss(
    name: str, *, needs_features: bool = False, head: str | None = None
) -> Callable[[LossFn], LossFn]:
    """Register ``fn(abnormal_logits, normal_logits, terms) -> scalar`` as config ``loss: name``;
    ``head``: the one head (config ``model``) whose features the loss can read."""

    def add(fn: LossFn) -> LossFn:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        LOSSES[name] = fn
        if needs_features or head:
            NEEDS_FEATURES.add(name)
        if head:
            NEEDS_HEAD[name] = head
        return fn

    return add


# --- building blocks (on probabilities where the reference is, on logits where a log is) -------


def bag_score(scores: torch.Tensor, k: int = 1) -> torch.Tensor:
    """A bag's score: the max (k=1) or the mean of its k highest instance scores."""
    if k <= 1:
        return scores.max(dim=-1).values
    return scores.topk(min(k, scores.shape[-1]), dim=-1).values.mean(dim=-1)


def ranking_hinge(abnormal: torch.Tensor, normal: torch.Tensor, k: int = 1) -> torch.Tensor:
    """mean over pairs of max(0, 1 - s(abnormal bag) + s(normal bag)), on scores in [0, 1]."""
    s_a = bag_score(abnormal, k)
    s_n = bag_score(normal, k)
    return torch.relu(1.0 - s_a[:, None] + s_n[None, :]).mean()


def smoothness(abnormal: torch.Tensor) -> torch.Tensor:
    return (abnormal[:, 1:] - abnormal[:, :-1]).pow(2).sum(dim=-1).mean()


def sparsity(abnormal: torch.Tensor) -> torch.Tensor:
    return abnormal.sum(dim=-1).mean()


def log_mean_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """log(mean_i sigmoid(l_i)) over the last axis, exact for any logit (no clamp)."""
    return torch.logsumexp(F.logsigmoid(logits), dim=-1) - math.log(logits.shape[-1])


def topk_logits(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest logits of each bag (the k highest scores: sigmoid is monotone)."""
    return logits.topk(min(max(k, 1), logits.shape[-1]), dim=-1).values


def bce_of_mean(
    abnormal_picked: torch.Tensor, normal_picked: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bag BCE of the mean *probability* of each bag's picked logits: (abnormal vs 1, normal vs 0).

    ``-log mean σ(l)`` and ``-log(1 - mean σ(l)) = -log mean σ(-l)``, both through logsumexp.
    """
    return -log_mean_sigmoid(abnormal_picked), -log_mean_sigmoid(-normal_picked)


def bag_bce(abnormal_picked: torch.Tensor, normal_picked: torch.Tensor) -> torch.Tensor:
    """BCE(abnormal bags, 1) averaged + BCE(normal bags, 0) averaged; (bags, k) logits each."""
    a, n = bce_of_mean(abnormal_picked, normal_picked)
    return a.mean() + n.mean()


def false_alarm_term(normal_logits: torch.Tensor) -> torch.Tensor:
    """mean over every normal segment of -log(1 - s) = softplus(logit)."""
    return F.softplus(normal_logits).mean()


def magnitude_topk(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (bags, k) of each bag's k segments with the largest feature L2 norm."""
    return features.norm(dim=-1).topk(min(k, features.shape[1]), dim=-1).indices


def rtfm_terms(
    abnormal: torch.Tensor,
    normal: torch.Tensor,
    abnormal_features: torch.Tensor,
    normal_features: torch.Tensor,
    k: int,
    margin: float = RTFM_MARGIN,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE over all 2B bags of the mean score of the k largest-magnitude segments, the magnitude loss).

    ``abnormal``/``normal`` are logits.
    """
    idx_a = magnitude_topk(abnormal_features, k)
    idx_n = magnitude_topk(normal_features, k)
    bce_a, bce_n = bce_of_mean(abnormal.gather(1, idx_a), normal.gather(1, idx_n))
    bce = torch.cat([bce_a, bce_n]).mean()
    mean_a = abnormal_features.gather(1, idx_a[..., None].expand(-1, -1, abnormal_features.shape[-1])).mean(1)
    mean_n = normal_features.gather(1, idx_n[..., None].expand(-1, -1, normal_features.shape[-1])).mean(1)
    magnitude = (torch.relu(margin - mean_a.norm(dim=-1)) + mean_n.norm(dim=-1)).pow(2).mean()
    return bce, magnitude


# BN-WVAD's weights (``losses/mpp_loss.py``: ``w_triplet = [5, 20]``, margin 1) and its UCF-Crime
# batch-level selection ratio (0.2 of the abnormal bags' snippets; the sample-level one, 0.1 of 32,
# is the config's ``topk`` = 3).
BNWVAD_MPP_WEIGHTS = (5.0, 20.0)
BNWVAD_MARGIN = 1.0
BNWVAD_BATCH_RATIO = 0.2


def sample_batch_selection(abnormal_dfm: torch.Tensor, per_bag: int, batch_ratio: float) -> torch.Tensor:
    """BN-WVAD's Sample-Batch Selection (``WSAD.pos_neg_select``): a (bags, T) mask of the abnormal
    segments that are among the ``per_bag`` highest DFM of their bag OR among the
    ``int(bags · T · batch_ratio)`` highest of the whole batch (so a bag with many outlying
    segments gives more than ``per_bag``, one with none gives its ``per_bag``)."""
    bags, length = abnormal_dfm.shape
    sample = torch.zeros_like(abnormal_dfm, dtype=torch.bool)
    sample.scatter_(1, abnormal_dfm.topk(min(per_bag, length), dim=-1).indices, True)
    batch = torch.zeros(bags * length, dtype=torch.bool, device=abnormal_dfm.device)
    count = int(bags * length * batch_ratio)
    if count > 0:
        batch[abnormal_dfm.reshape(-1).topk(count).indices] = True
    return sample | batch.view(bags, length)


def mean_pull_push(
    abnormal_z: torch.Tensor,
    normal_z: torch.Tensor,
    per_bag: int,
    batch_ratio: float = BNWVAD_BATCH_RATIO,
    margin: float = BNWVAD_MARGIN,
) -> torch.Tensor:
    """BN-WVAD's mean-based pull-push loss for one hidden layer (``losses/mpp_loss.py``).

    ``*_z``: (bags, T, C) deviations from the BatchNorm mean (``heads.divergence_from_mean``), so a
    segment's DFM is ``‖z‖``. The N abnormal segments chosen by :func:`sample_batch_selection`
    (in bag, time order) are paired with the N highest-DFM normal segments, taken as the
    ``N // bags + 1`` highest of each normal bag, rank by rank (as ``pos_neg_select``); the loss is
    the triplet hinge with the BatchNorm mean as anchor: ``mean max(0, DFM(n) - DFM(a) + margin)``.
    """
    abnormal_dfm, normal_dfm = abnormal_z.norm(dim=-1), normal_z.norm(dim=-1)
    picked_a = abnormal_dfm[sample_batch_selection(abnormal_dfm.detach(), per_bag, batch_ratio)]
    per_normal = min(len(picked_a) // len(normal_dfm) + 1, normal_dfm.shape[1])
    picked_n = normal_dfm.topk(per_normal, dim=-1).values.t().reshape(-1)
    pairs = min(len(picked_a), len(picked_n))
    return torch.relu(picked_n[:pairs] - picked_a[:pairs] + margin).mean()


def _sultani_regularisers(abnormal_logits: torch.Tensor, terms: LossTerms) -> torch.Tensor:
    s_a = torch.sigmoid(abnormal_logits)
    return terms.lambda_smooth * smoothness(s_a) + terms.lambda_sparse * sparsity(s_a)


# --- the registered losses --------------------------------------------------------------------


@register_loss("sultani")
def sultani_loss(abnormal, normal, terms: LossTerms):
    hinge = ranking_hinge(torch.sigmoid(abnormal), torch.sigmoid(normal), 1)
    return hinge + _sultani_regularisers(abnormal, terms)


@register_loss("topk")
def topk_loss(abnormal, normal, terms: LossTerms):
    hinge = ranking_hinge(torch.sigmoid(abnormal), torch.sigmoid(normal), terms.topk)
    return hinge + _sultani_regularisers(abnormal, terms)


@register_loss("topk_bce")
def topk_bce_loss(abnormal, normal, terms: LossTerms):
    bce = bag_bce(topk_logits(abnormal, terms.topk), topk_logits(normal, terms.topk))
    return bce + _sultani_regularisers(abnormal, terms)


@register_loss("false_alarm")
def false_alarm_loss(abnormal, normal, terms: LossTerms):
    return sultani_loss(abnormal, normal, terms) + terms.lambda_false_alarm * false_alarm_term(normal)


@register_loss("rtfm", needs_features=True)
def rtfm_loss(abnormal, normal, terms: LossTerms):
    bce, magnitude = rtfm_terms(abnormal, normal, terms.abnormal_features, terms.normal_features, terms.topk)
    s_a = torch.sigmoid(abnormal)
    # RTFM sums the smoothness over the batch's bags: as a mean over bags times the global batch,
    # so that DDP workers' shares add up to the same sum.
    bags = terms.batch_size or len(abnormal)
    smooth = (s_a[:, 1:] - s_a[:, :-1]).pow(2).sum(dim=-1).mean() * bags
    sparse = s_a.reshape(-1).norm()
    return (
        bce + terms.lambda_magnitude * magnitude + terms.lambda_smooth * smooth + terms.lambda_sparse * sparse
    )


@register_loss("bnwvad", head="bnwvad")
def bnwvad_loss(abnormal, normal, terms: LossTerms):
    """BN-WVAD (Zhou et al. 2023; ``losses/loss_computer.py``): the normal loss, the L2 norm over
    T of the classifier's probabilities on each *normal* bag averaged over bags
    (``losses/normal_loss.py``; abnormal bags get no classification target), plus
    ``5 · MPP(layer 1) + 20 · MPP(layer 2)`` (:func:`mean_pull_push`). Reads the features of
    ``model: bnwvad`` (``[z1 | z2 | c]``); the logits (the DFM-weighted score) are not used."""
    from anomaly.heads import BNWVAD_HIDDEN

    first, second = BNWVAD_HIDDEN
    split = (first, second, 1)
    za1, za2, _ = terms.abnormal_features.split(split, dim=-1)
    zn1, zn2, c_normal = terms.normal_features.split(split, dim=-1)
    normal_term = torch.sigmoid(c_normal.squeeze(-1)).norm(dim=-1).mean()
    w1, w2 = BNWVAD_MPP_WEIGHTS
    return normal_term + w1 * mean_pull_push(za1, zn1, terms.topk) + w2 * mean_pull_push(za2, zn2, terms.topk)


def mil_loss(
    abnormal: torch.Tensor,
    normal: torch.Tensor,
    *,
    loss: str = "sultani",
    topk: int = 3,
    lambda_smooth: float = 8e-5,
    lambda_sparse: float = 8e-5,
    lambda_false_alarm: float = 0.1,
    lambda_magnitude: float = 1e-4,
    batch_size: int | None = None,
    abnormal_features: torch.Tensor | None = None,
    normal_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """The registered loss ``loss`` on (bags, T) *logits*; ``rtfm`` needs the heads' features."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}")
    if loss in NEEDS_FEATURES and (abnormal_features is None or normal_features is None):
        raise ValueError(f"loss {loss} needs the head's segment features")
    terms = LossTerms(
        topk=int(topk),
        lambda_smooth=lambda_smooth,
        lambda_sparse=lambda_sparse,
        lambda_false_alarm=lambda_false_alarm,
        lambda_magnitude=lambda_magnitude,
        batch_size=batch_size,
        abnormal_features=abnormal_features,
        normal_features=normal_features,
    )
    return LOSSES[loss](abnormal, normal, terms)


def config_loss(config, abnormal, normal, abnormal_features=None, normal_features=None) -> torch.Tensor:
    """``mil_loss`` with a :class:`~anomaly.config.TrainConfig`'s settings."""
    return mil_loss(
        abnormal,
        normal,
        loss=config.loss,
        topk=config.topk,
        lambda_smooth=config.lambda_smooth,
        lambda_sparse=config.lambda_sparse,
        lambda_false_alarm=config.lambda_false_alarm,
        lambda_magnitude=config.lambda_magnitude,
        batch_size=config.batch_size,
        abnormal_features=abnormal_features,
        normal_features=normal_features,
    )
