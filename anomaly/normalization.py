"""Feature normalisation inside the scoring heads (statistics saved with the weights).

Published features come in very different shapes: Sultani's C3D rows are
L2-normalised and sparse (two thirds of the values are 0, many dimensions are
almost always 0 in train), ResNet3D-34 and I3D rows are raw and dense (row
norms ~40). Plain standardisation with a tiny std floor turns a held-out value
of 0.05 in a dimension that is ~0 in train into a z-score of 10^4, so:

- ``robust`` (default): L2-normalise each row (one scale for every backbone),
  standardise with the train mean and a std floored at the RMS of the
  per-dimension stds (a dimension quieter than average is divided by the average
  spread instead of being amplified), then clip to ``±CLIP``;
- ``standardize``: train mean/std with a 1e-6 floor (the former default, kept for
  old checkpoints and comparisons);
- ``l2``: L2-normalise each row only; ``none``: raw features.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from anomaly.config import NORMS

CLIP = 10.0  # |z| bound of the robust rule
MIN_STD = 1e-6


def _l2_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def normalization_space(rows: np.ndarray, kind: str) -> np.ndarray:
    """The rows whose mean and std ``kind`` standardises with (L2-normalised rows for ``robust``)."""
    return _l2_rows(rows) if kind == "robust" else rows


def floor_std(mean: np.ndarray, std: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The (mean, std) to store: ``robust`` floors each std at the RMS of all of them."""
    std = np.asarray(std, dtype=np.float64)
    if kind == "robust":
        std = np.maximum(std, np.sqrt(np.mean(std**2)))
    return np.asarray(mean, dtype=np.float32), np.maximum(std, MIN_STD).astype(np.float32)


def fit_statistics(features: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) over every segment row of ``features`` (…, D) for normalisation ``kind``."""
    rows = normalization_space(
        np.asarray(features, dtype=np.float64).reshape(-1, np.shape(features)[-1]), kind
    )
    return floor_std(rows.mean(axis=0), rows.std(axis=0), kind)


def _float32_copy(value) -> np.ndarray:
    """A writable float32 numpy copy of an array or a tensor (on any device)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().astype(np.float32, copy=True)
    return np.array(value, dtype=np.float32, copy=True)


class FeatureNorm(nn.Module):
    """Applies one of :data:`NORMS` with buffers ``mean``/``std`` (in the checkpoint's state dict)."""

    def __init__(self, feature_dim: int, kind: str = "robust") -> None:
        super().__init__()
        if kind not in NORMS:
            raise ValueError(f"feature_norm must be one of {', '.join(NORMS)}")
        self.kind = kind
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))

    def set_statistics(self, mean, std) -> None:
        # Copied into fresh float32 arrays: statistics may arrive as read-only arrays (Ray's object
        # store), which torch warns about wrapping, or as tensors, which torch.tensor warns about copying.
        mean, std = (_float32_copy(v) for v in (mean, std))
        self.mean.copy_(torch.from_numpy(mean))
        self.std.copy_(torch.clamp(torch.from_numpy(std), min=MIN_STD))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return x
        if self.kind == "l2":
            return nn.functional.normalize(x, dim=-1)
        if self.kind == "robust":
            z = (nn.functional.normalize(x, dim=-1) - self.mean) / self.std
            return z.clamp(-CLIP, CLIP)
        return (x - self.mean) / self.std
