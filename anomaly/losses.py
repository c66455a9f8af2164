"""MIL losses on bag scores of shape (bags, 32), for a batch of abnormal and normal bags.

Every loss adds Sultani's smoothness and sparsity terms on the abnormal bags
(each summed over a bag's segments and averaged over bags, so the λs do not
depend on the batch size).

- ``sultani`` (Sultani et al. 2018, eq. 7): mean over (abnormal, normal) pairs of
  ``max(0, 1 - max s_a + max s_n)``;
- ``topk``: the same hinge on the mean of the k highest scores of each bag;
- ``topk_bce``: bag classification, ``BCE(mean top-k s_a, 1) + BCE(mean top-k s_n, 0)``
  (the snippet classifier loss of RTFM-era methods, with the top-k picked by score);
- ``rtfm`` (Tian et al. 2021, eq. 5-7): the top-k segments of each bag are picked by
  *feature magnitude*; BCE on their mean score as above, plus
  ``λ_mag · mean((max(0, m - ‖f̄_a‖₂) + ‖f̄_n‖₂)²)`` with f̄ the mean of the k
  largest-magnitude feature vectors of a bag and margin m = 100;
- ``false_alarm``: ``sultani`` plus a term on *every* segment of the normal bags,
  ``λ_fa · mean_n mean_t -log(1 - s_{n,t})``: all segments of a normal video are
  known negatives, the only instance labels weak supervision gives (Zhong et al.,
  CVPR 2019, treat normal videos' snippets as noise-free negatives). Sultani's hinge
  only ever touches the single highest normal segment, and a term on
  ``max s_n`` only re-weights that hinge; this one lowers the scores of all normal
  segments, i.e. the false alarms on normal videos.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from anomaly.config import LOSSES  # noqa: F401 - re-exported

RTFM_MARGIN = 100.0
EPS = 1e-6


def bag_score(scores: torch.Tensor, k: int = 1) -> torch.Tensor:
    """A bag's score: the max (k=1) or the mean of its k highest instance scores."""
    if k <= 1:
        return scores.max(dim=-1).values
    return scores.topk(min(k, scores.shape[-1]), dim=-1).values.mean(dim=-1)


def ranking_hinge(abnormal: torch.Tensor, normal: torch.Tensor, k: int = 1) -> torch.Tensor:
    """mean over pairs of max(0, 1 - s(abnormal bag) + s(normal bag))."""
    s_a = bag_score(abnormal, k)
    s_n = bag_score(normal, k)
    return torch.relu(1.0 - s_a[:, None] + s_n[None, :]).mean()


def smoothness(abnormal: torch.Tensor) -> torch.Tensor:
    return (abnormal[:, 1:] - abnormal[:, :-1]).pow(2).sum(dim=-1).mean()


def sparsity(abnormal: torch.Tensor) -> torch.Tensor:
    return abnormal.sum(dim=-1).mean()


def bag_bce(abnormal_bag: torch.Tensor, normal_bag: torch.Tensor) -> torch.Tensor:
    """BCE of abnormal bag scores against 1 plus normal bag scores against 0 (each averaged)."""
    a = abnormal_bag.clamp(EPS, 1 - EPS)
    n = normal_bag.clamp(EPS, 1 - EPS)
    return F.binary_cross_entropy(a, torch.ones_like(a)) + F.binary_cross_entropy(n, torch.zeros_like(n))


def false_alarm_term(normal: torch.Tensor) -> torch.Tensor:
    """mean over every normal segment of -log(1 - s): BCE of each normal segment against 0."""
    return -torch.log1p(-normal.clamp(max=1 - EPS)).mean()


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
    """(BCE on the mean score of the k largest-magnitude segments, the feature-magnitude loss)."""
    idx_a = magnitude_topk(abnormal_features, k)
    idx_n = magnitude_topk(normal_features, k)
    bce = bag_bce(abnormal.gather(1, idx_a).mean(-1), normal.gather(1, idx_n).mean(-1))
    mean_a = abnormal_features.gather(1, idx_a[..., None].expand(-1, -1, abnormal_features.shape[-1])).mean(1)
    mean_n = normal_features.gather(1, idx_n[..., None].expand(-1, -1, normal_features.shape[-1])).mean(1)
    magnitude = (torch.relu(margin - mean_a.norm(dim=-1)) + mean_n.norm(dim=-1)).pow(2).mean()
    return bce, magnitude


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
    abnormal_features: torch.Tensor | None = None,
    normal_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """The configured loss (see the module docstring); ``rtfm`` needs the heads' features."""
    if loss == "topk_bce":
        total = bag_bce(bag_score(abnormal, topk), bag_score(normal, topk))
    elif loss == "rtfm":
        if abnormal_features is None or normal_features is None:
            raise ValueError("loss rtfm needs the head's segment features")
        bce, magnitude = rtfm_terms(abnormal, normal, abnormal_features, normal_features, topk)
        total = bce + lambda_magnitude * magnitude
    else:
        total = ranking_hinge(abnormal, normal, topk if loss == "topk" else 1)
    total = total + lambda_smooth * smoothness(abnormal) + lambda_sparse * sparsity(abnormal)
    if loss == "false_alarm":
        total = total + lambda_false_alarm * false_alarm_term(normal)
    return total
