"""MIL ranking losses on bag scores of shape (bags, 32).

All three share Sultani's hinge between the abnormal and the normal bags of a
batch, taken over every (abnormal, normal) pair, plus the smoothness and
sparsity terms on the abnormal bags (each summed over a bag's segments and
averaged over bags, so the λs do not depend on the batch size).
"""

from __future__ import annotations

import torch


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


def mil_loss(
    abnormal: torch.Tensor,
    normal: torch.Tensor,
    *,
    loss: str = "sultani",
    topk: int = 3,
    lambda_smooth: float = 8e-5,
    lambda_sparse: float = 8e-5,
    lambda_false_alarm: float = 0.1,
) -> torch.Tensor:
    """The configured MIL loss.

    - ``sultani``: hinge on bag maxima + λ_smooth·smoothness + λ_sparse·sparsity;
    - ``topk``: the same with the mean of the k highest scores as the bag score;
    - ``false_alarm`` (Dubey et al. 2020): ``sultani`` + λ_fa·mean(max normal score),
      pushing the most anomalous-looking normal segment towards 0.
    """
    k = topk if loss == "topk" else 1
    total = ranking_hinge(abnormal, normal, k)
    total = total + lambda_smooth * smoothness(abnormal) + lambda_sparse * sparsity(abnormal)
    if loss == "false_alarm":
        total = total + lambda_false_alarm * bag_score(normal, 1).mean()
    return total
