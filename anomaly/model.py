"""The MIL anomaly scorer of Sultani et al.: D -> 512 -> 32 -> 1, dropout 0.6, sigmoid."""

from __future__ import annotations

import torch
from torch import nn


class MILScorer(nn.Module):
    """Scores each segment of a bag in [0, 1].

    Feature normalisation lives inside the model (buffers saved with the
    weights) so a checkpoint scores raw store features the same way everywhere.
    """

    def __init__(self, feature_dim: int, *, dropout: float = 0.6, feature_norm: str = "standardize") -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.feature_norm = feature_norm
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))
        self.net = nn.Sequential(
            nn.Linear(feature_dim, 512),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(512, 32),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(32, 1),
        )
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight)  # Sultani's Keras model used Glorot normal
                nn.init.zeros_(layer.bias)

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(torch.clamp(std, min=1e-6))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.feature_norm == "l2":
            return nn.functional.normalize(x, dim=-1)
        if self.feature_norm == "standardize":
            return (x - self.mean) / self.std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) features -> (...) scores in [0, 1]."""
        return torch.sigmoid(self.net(self.normalize(x))).squeeze(-1)
