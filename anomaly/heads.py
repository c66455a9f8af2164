"""Scoring heads: a video's 32 segment features (B, T, D) -> one anomaly score per segment in [0, 1].

Selected by the config key ``model`` and recorded in every checkpoint (its
``config``), so :func:`build_head` rebuilds the right head from a checkpoint alone.

How to score (for evaluation, ``ray_jobs.score`` and the tuner):
- ``mlp`` (Sultani et al. 2018, the reference): each segment is scored on its
  own (``context = "segment"``); any (..., D) array works, one clip's features too;
- ``rtfm`` (Tian et al. 2021, multi-scale temporal network) and ``transformer``
  see the whole bag (``context = "bag"``): their scores depend on the
  neighbouring segments, so score a *window* of consecutive segments as one
  (1, T, D) bag (a whole video's 32 segments as in training, or a sliding window
  of the latest T >= 8 clip features for streaming; T = 1 degenerates to a per-clip
  score without temporal context). A (T, D) input is taken as one bag.
All heads normalise raw store features themselves (:mod:`anomaly.normalization`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from anomaly.config import HEADS
from anomaly.normalization import FeatureNorm


class Head(nn.Module):
    """Shared part: feature normalisation buffers and the (scores, features) interface."""

    context = "segment"

    def __init__(self, feature_dim: int, feature_norm: str) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.feature_norm = feature_norm
        self.norm = FeatureNorm(feature_dim, feature_norm)

    def set_normalization(self, mean, std) -> None:
        self.norm.set_statistics(mean, std)

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """(..., T, D) features -> (..., T) scores; with ``return_features`` also the (…, T, F)
        features the magnitude loss acts on (the normalised input for the MLP)."""
        logits, features = self.logits(self.norm(x))
        scores = torch.sigmoid(logits)
        return (scores, features) if return_features else scores


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    """Linear layers through ``sizes`` with ReLU and dropout between them: both papers' classifier.

    The layer indices (0, 3, 6 for three layers) are the state-dict keys of saved models.
    """
    layers: list[nn.Module] = [nn.Linear(sizes[0], sizes[1])]
    for width_in, width_out in zip(sizes[1:-1], sizes[2:], strict=True):
        layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(width_in, width_out)]
    return nn.Sequential(*layers)


class MILScorer(Head):
    """Sultani et al.'s scorer: D -> 512 -> 32 -> 1, ReLU, dropout 0.6, Glorot-normal init."""

    context = "segment"

    def __init__(self, feature_dim: int, *, dropout: float = 0.6, feature_norm: str = "robust") -> None:
        super().__init__(feature_dim, feature_norm)
        self.net = _mlp([feature_dim, 512, 32, 1], dropout)
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight)  # Sultani's Keras model used Glorot normal
                nn.init.zeros_(layer.bias)

    def logits(self, x):
        return self.net(x).squeeze(-1), x


def _as_bags(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (x.unsqueeze(0), True) if x.dim() == 2 else (x, False)


class NonLocal1d(nn.Module):
    """Embedded-Gaussian-free non-local block (dot product / T) over the segments, residual, zero-init BN."""

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.theta = nn.Conv1d(channels, inner, 1)
        self.phi = nn.Conv1d(channels, inner, 1)
        self.g = nn.Conv1d(channels, inner, 1)
        self.out = nn.Sequential(nn.Conv1d(inner, channels, 1), nn.BatchNorm1d(channels))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        affinity = self.theta(x).transpose(1, 2) @ self.phi(x) / x.shape[-1]  # (B, T, T)
        y = self.g(x) @ affinity.transpose(1, 2)
        return x + self.out(y)


class RTFMHead(Head):
    """RTFM's multi-scale temporal network (Tian et al., ICCV 2021) and its snippet classifier.

    Three dilated 1-D convolutions (dilation 1, 2, 4; D/4 channels each) plus a
    non-local block on a D/4 projection, concatenated, fused by a kernel-3
    convolution back to D with a residual connection; the result's per-segment
    vectors (whose magnitudes the RTFM loss separates) go through D -> 512 -> 128 -> 1.
    """

    context = "bag"

    def __init__(self, feature_dim: int, *, dropout: float = 0.7, feature_norm: str = "robust") -> None:
        super().__init__(feature_dim, feature_norm)
        quarter = max(1, feature_dim // 4)

        def branch(dilation: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv1d(feature_dim, quarter, 3, padding=dilation, dilation=dilation),
                nn.BatchNorm1d(quarter),
                nn.ReLU(),
            )

        self.pyramid = nn.ModuleList([branch(1), branch(2), branch(4)])
        self.project = nn.Sequential(nn.Conv1d(feature_dim, quarter, 1, bias=False), nn.ReLU())
        self.non_local = NonLocal1d(quarter, max(1, quarter // 2))
        self.fuse = nn.Sequential(
            nn.Conv1d(4 * quarter, feature_dim, 3, padding=1, bias=False),
            nn.BatchNorm1d(feature_dim),
            nn.ReLU(),
        )
        self.classifier = _mlp([feature_dim, 512, 128, 1], dropout)

    def logits(self, x):
        bags, single = _as_bags(x)
        h = bags.transpose(1, 2)  # (B, D, T)
        parts = [b(h) for b in self.pyramid] + [self.non_local(self.project(h))]
        features = (self.fuse(torch.cat(parts, dim=1)) + h).transpose(1, 2)  # (B, T, D)
        logits = self.classifier(features).squeeze(-1)
        return (logits[0], features[0]) if single else (logits, features)


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: width // 2])
    return table


class TransformerHead(Head):
    """A small pre-norm transformer encoder over the segments (width 128, 2 layers, 4 heads)."""

    context = "bag"

    def __init__(
        self,
        feature_dim: int,
        *,
        dropout: float = 0.3,
        feature_norm: str = "robust",
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__(feature_dim, feature_norm)
        self.width = width
        self.embed = nn.Linear(feature_dim, width)
        layer = nn.TransformerEncoderLayer(
            width, heads, 2 * width, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Dropout(dropout), nn.Linear(width, 1))

    def logits(self, x):
        bags, single = _as_bags(x)
        h = self.embed(bags) + sinusoidal_positions(bags.shape[1], self.width).to(bags.device)
        features = self.encoder(h)
        logits = self.out(features).squeeze(-1)
        return (logits[0], features[0]) if single else (logits, features)


def build_head(kind: str, feature_dim: int, *, dropout: float, feature_norm: str) -> Head:
    """The head a config names (``model: mlp | rtfm | transformer``)."""
    if kind == "mlp":
        return MILScorer(feature_dim, dropout=dropout, feature_norm=feature_norm)
    if kind == "rtfm":
        return RTFMHead(feature_dim, dropout=dropout, feature_norm=feature_norm)
    if kind == "transformer":
        return TransformerHead(feature_dim, dropout=dropout, feature_norm=feature_norm)
    raise ValueError(f"model must be one of {', '.join(HEADS)}")
