"""Scoring heads: a video's 32 segment features (B, T, D) -> one anomaly score per segment in [0, 1].

Selected by the config key ``model`` and recorded in every checkpoint (its
``config``), so :func:`build_head` rebuilds the right head from a checkpoint alone.

How to score (for evaluation, ``ray_jobs.score`` and the tuner):
- ``mlp`` (Sultani et al. 2018, the reference): each segment is scored on its
  own (``context = "segment"``); any (..., D) array works, one clip's features too;
- ``rtfm`` (Tian et al. 2021, multi-scale temporal network), ``transformer`` and
  ``bnwvad`` (Zhou et al. 2023, BatchNorm-based WVAD) see the whole bag
  (``context = "bag"``): their scores depend on the neighbouring segments, so score a *window* of consecutive segments as one
  (1, T, D) bag (a whole video's 32 segments as in training, or a sliding window
  of the latest T >= 8 clip features for streaming; T = 1 degenerates to a per-clip
  score without temporal context). A (T, D) input is taken as one bag.
All heads normalise raw store features themselves (:mod:`anomaly.normalization`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from anomaly.normalization import FeatureNorm

# name -> head class; the config key ``model`` accepts any registered name (:func:`register_head`).
HEADS: dict[str, type[Head]] = {}
# Bumped when a head's architecture changes; checkpoints record it (``head.revision``) and older
# ones are rebuilt as they were trained (see :func:`build_head`'s ``revision``).
HEAD_REVISION = 2


def register_head(name: str):
    """Class decorator: make ``cls`` the head of config ``model: name``.

    ``cls(feature_dim, *, dropout, feature_norm, revision)`` must build it; adding a head is
    this decorator on a new :class:`Head` subclass plus its test.
    """

    def add(cls):
        if name in HEADS:
            raise ValueError(f"head {name!r} is registered twice")
        cls.name = name
        HEADS[name] = cls
        return cls

    return add


class Head(nn.Module):
    """Shared part: feature normalisation buffers and the (scores, features) interface."""

    context = "segment"
    name = ""

    def __init__(self, feature_dim: int, feature_norm: str) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.feature_norm = feature_norm
        self.norm = FeatureNorm(feature_dim, feature_norm)

    def set_normalization(self, mean, std) -> None:
        self.norm.set_statistics(mean, std)

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_features: bool = False, member_outputs: bool = False):
        """(..., T, D) features -> (..., T) scores; with ``return_features`` also the (…, T, F)
        features the magnitude loss acts on (the normalised input for the MLP); with
        ``member_outputs`` :meth:`member_outputs` (the logits the losses train on)."""
        if member_outputs:
            return self.member_outputs(x)
        logits, features = self.logits(self.norm(x))
        scores = torch.sigmoid(logits)
        return (scores, features) if return_features else scores

    def member_outputs(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(logits, features)] of every member (one for a single head): what the losses train on."""
        return [self.logits(self.norm(x))]


def _mlp(sizes: list[int], dropout: float, activations: list[bool] | None = None) -> nn.Sequential:
    """Linear layers through ``sizes`` with (ReLU or identity) and dropout between them.

    ``activations[i]``: a ReLU after hidden layer i (default: after every one). The layer
    indices (0, 3, 6 for three layers) are the state-dict keys of saved models either way.
    """
    activations = activations or [True] * (len(sizes) - 2)
    layers: list[nn.Module] = [nn.Linear(sizes[0], sizes[1])]
    for width_in, width_out, relu in zip(sizes[1:-1], sizes[2:], activations, strict=True):
        layers += [nn.ReLU() if relu else nn.Identity(), nn.Dropout(dropout), nn.Linear(width_in, width_out)]
    return nn.Sequential(*layers)


@register_head("mlp")
class MILScorer(Head):
    """Sultani et al.'s scorer: D -> 512 (ReLU) -> 32 (linear) -> 1, dropout 0.6, Glorot-normal init.

    As Sultani's Keras model and ekosman's port: a ReLU after the 512-unit layer only, none
    after the 32-unit layer (revision 1 of this head had one; its checkpoints load as trained).
    """

    context = "segment"

    def __init__(
        self,
        feature_dim: int,
        *,
        dropout: float = 0.6,
        feature_norm: str = "robust",
        revision: int = HEAD_REVISION,
    ) -> None:
        super().__init__(feature_dim, feature_norm)
        self.net = _mlp([feature_dim, 512, 32, 1], dropout, [True, revision < 2])
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


@register_head("rtfm")
class RTFMHead(Head):
    """RTFM's multi-scale temporal network (Tian et al., ICCV 2021) and its snippet classifier.

    As RTFM's ``model.py`` (``Aggregate`` + ``Model``): three dilated 1-D convolutions
    (dilation 1, 2, 4; D/4 channels each; conv -> ReLU -> BN) plus a non-local block on a
    D/4 projection, concatenated, fused by a kernel-3 convolution back to D (conv -> ReLU ->
    BN) with a residual connection; dropout on the result, whose per-segment vectors (the
    magnitudes the RTFM loss separates) go through D -> 512 -> 128 -> 1 with ReLU and
    dropout. Revision 1 of this head had BN before ReLU and no dropout on the features.
    """

    context = "bag"

    def __init__(
        self,
        feature_dim: int,
        *,
        dropout: float = 0.7,
        feature_norm: str = "robust",
        revision: int = HEAD_REVISION,
    ) -> None:
        super().__init__(feature_dim, feature_norm)
        quarter = max(1, feature_dim // 4)
        legacy = revision < 2

        def conv_block(conv: nn.Module, channels: int) -> nn.Sequential:
            if legacy:
                return nn.Sequential(conv, nn.BatchNorm1d(channels), nn.ReLU())
            return nn.Sequential(conv, nn.ReLU(), nn.BatchNorm1d(channels))

        def branch(dilation: int) -> nn.Sequential:
            return conv_block(
                nn.Conv1d(feature_dim, quarter, 3, padding=dilation, dilation=dilation), quarter
            )

        self.pyramid = nn.ModuleList([branch(1), branch(2), branch(4)])
        self.project = nn.Sequential(nn.Conv1d(feature_dim, quarter, 1, bias=False), nn.ReLU())
        self.non_local = NonLocal1d(quarter, max(1, quarter // 2))
        self.fuse = conv_block(nn.Conv1d(4 * quarter, feature_dim, 3, padding=1, bias=False), feature_dim)
        self.feature_dropout = nn.Identity() if legacy else nn.Dropout(dropout)
        self.classifier = _mlp([feature_dim, 512, 128, 1], dropout)

    def logits(self, x):
        bags, single = _as_bags(x)
        h = bags.transpose(1, 2)  # (B, D, T)
        parts = [b(h) for b in self.pyramid] + [self.non_local(self.project(h))]
        features = self.feature_dropout((self.fuse(torch.cat(parts, dim=1)) + h).transpose(1, 2))  # (B, T, D)
        logits = self.classifier(features).squeeze(-1)
        return (logits[0], features[0]) if single else (logits, features)


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: width // 2])
    return table


@register_head("transformer")
class TransformerHead(Head):
    """A small pre-norm transformer encoder over the segments (width 128, 2 layers, 4 heads)."""

    context = "bag"

    def __init__(
        self,
        feature_dim: int,
        *,
        dropout: float = 0.3,
        feature_norm: str = "robust",
        revision: int = HEAD_REVISION,
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


# BN-WVAD's normal head: hidden widths of its two BatchNorm'd layers (512 // 16, 512 // 32), the
# layout of the features :class:`BNWVADHead` returns and ``loss: bnwvad`` reads.
BNWVAD_WIDTH = 512
BNWVAD_HIDDEN = (BNWVAD_WIDTH // 16, BNWVAD_WIDTH // 32)
# The DFM of a typical segment: ‖z‖ of C standardised channels is about √C, summed over both
# layers. Dividing by it puts the project's 0.5 threshold at "DFM · p above that of an ordinary
# segment scored with full confidence" (a constant: ranks, AUC and AP are the reference's).
BNWVAD_TYPICAL_DFM = sum(math.sqrt(width) for width in BNWVAD_HIDDEN)


class DualAttention(nn.Module):
    """UR-DMU's attention (``translayer.py``, ``Attention``), which BN-WVAD reuses: each head
    mixes content attention ``softmax(q kᵀ / √d) v`` with a fixed temporal-distance kernel
    ``exp(-|i - j| / e)`` applied to a fourth projection, and projects both back to ``dim``.

    The kernel is divided by its row sums along the last axis, as the reference's
    ``attn2 / attn2.sum(-1)`` broadcasts (for this symmetric kernel: each column by its sum).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.qkvt = nn.Linear(dim, 4 * heads * dim_head, bias=False)
        self.out = nn.Sequential(nn.Linear(2 * heads * dim_head, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, dim)
        b, t, _ = x.shape
        q, k, v, g = self.qkvt(x).view(b, t, 4, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        content = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.dim_head), dim=-1) @ v
        position = torch.arange(t, dtype=x.dtype, device=x.device)
        kernel = torch.exp(-(position[None, :] - position[:, None]).abs() / math.e)
        local = (kernel / kernel.sum(-1)) @ g
        mixed = torch.cat([content, local], dim=-1).transpose(1, 2).reshape(b, t, -1)
        return self.out(mixed)


class DualAttentionBlock(nn.Module):
    """Pre-norm residual block of UR-DMU's ``Transformer``: attention, then GELU feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.LayerNorm(dim), DualAttention(dim, heads, dim_head, dropout))
        self.feed_forward = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(x)
        return x + self.feed_forward(x)


def divergence_from_mean(hidden: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    """(..., C) pre-BatchNorm features -> (..., C) deviations ``(h - μ) / σ`` from the BatchNorm's
    running mean and variance; their L2 norm is BN-WVAD's Divergence of Feature from Mean (DFM,
    a Mahalanobis distance with a diagonal covariance). The statistics are constants (no gradient)."""
    mean = bn.running_mean.detach().clone()
    std = (bn.running_var.detach() + bn.eps).sqrt()
    return (hidden - mean) / std


@register_head("bnwvad")
class BNWVADHead(Head):
    """BN-WVAD (Zhou et al., "BatchNorm-based Weakly Supervised Video Anomaly Detection", 2023),
    as in its public code (github.com/cool-xuan/BN-WVAD: ``models/model.py``, ``WSAD``;
    ``models/normal_head.py``, ``NormalHead``; the enhancer is UR-DMU's ``translayer.py``).

    - Enhancer (``WSAD.embedding`` + ``WSAD.selfatt``): Conv1d(D -> 512, kernel 3) + ReLU, then two
      pre-norm :class:`DualAttentionBlock` (4 heads of 128, feed-forward 512, the config's dropout;
      the reference's is 0).
    - Normal head (``NormalHead``, kernel sizes 1, channel ratios 16 and 32): h1 = W1 x (512 -> 32),
      BN, ReLU, h2 = W2 · (32 -> 16), BN, ReLU, classifier (16 -> 1) giving the logit ``c``.
    - DFM (``WSAD.get_mahalanobis_distance``): ``‖(h_l - μ_l) / σ_l‖₂`` of each pre-BN hidden
      feature from its BatchNorm's running mean and variance (updated by this batch first in
      training, as the reference reads them after the forward pass); summed over both layers.
    - Score (``WSAD.forward`` at test): ``y = DFM · sigmoid(c)``. This head returns the logit
      ``log(y / DFM₀)`` with DFM₀ = √32 + √16 (:data:`BNWVAD_TYPICAL_DFM`, this project's
      calibration, not the reference's: it has no threshold), so the project's score
      ``y' / (1 + y')``, ``y' = y / DFM₀``, is a monotone map of the reference's score (frame AUC
      and AP are those of ``y``) and the 0.5 alarm threshold means DFM · p > DFM₀.
    - Features for the loss (``loss: bnwvad``): ``[(h1 - μ1)/σ1 | (h2 - μ2)/σ2 | c]``, (…, T, 49).

    Left out: ten-crop averaging of distances and scores inside the head (the store's crops are
    bags here), the reference's gradient-norm clipping (1.0) in its training step; BatchNorm
    statistics are per worker under DDP (the reference trains on one GPU). The input is the
    project's normalised features, not raw I3D features.
    """

    context = "bag"

    def __init__(
        self,
        feature_dim: int,
        *,
        dropout: float = 0.0,
        feature_norm: str = "robust",
        revision: int = HEAD_REVISION,
        depth: int = 2,
        heads: int = 4,
        dim_head: int = 128,
    ) -> None:
        super().__init__(feature_dim, feature_norm)
        width = BNWVAD_WIDTH
        first, second = BNWVAD_HIDDEN
        self.embed = nn.Sequential(nn.Conv1d(feature_dim, width, 3, padding=1), nn.ReLU())
        self.enhancer = nn.Sequential(
            *[DualAttentionBlock(width, heads, dim_head, width, dropout) for _ in range(depth)]
        )
        self.hidden1 = nn.Linear(width, first)  # NormalHead.conv1 (kernel 1)
        self.bn1 = nn.BatchNorm1d(first)
        self.hidden2 = nn.Linear(first, second)  # NormalHead.conv2
        self.bn2 = nn.BatchNorm1d(second)
        self.classifier = nn.Linear(second, 1)  # NormalHead.conv3

    @staticmethod
    def _bn_relu(bn: nn.BatchNorm1d, h: torch.Tensor) -> torch.Tensor:  # (B, T, C), BN over B and T
        return torch.relu(bn(h.transpose(1, 2)).transpose(1, 2))

    def logits(self, x):
        bags, single = _as_bags(x)
        enhanced = self.enhancer(self.embed(bags.transpose(1, 2)).transpose(1, 2))  # (B, T, 512)
        h1 = self.hidden1(enhanced)
        h2 = self.hidden2(self._bn_relu(self.bn1, h1))
        c = self.classifier(self._bn_relu(self.bn2, h2)).squeeze(-1)  # (B, T)
        z1, z2 = divergence_from_mean(h1, self.bn1), divergence_from_mean(h2, self.bn2)
        dfm = z1.norm(dim=-1) + z2.norm(dim=-1)
        logits = torch.log(dfm.clamp_min(1e-12) / BNWVAD_TYPICAL_DFM) + nn.functional.logsigmoid(c)
        features = torch.cat([z1, z2, c.unsqueeze(-1)], dim=-1)
        return (logits[0], features[0]) if single else (logits, features)


class Ensemble(Head):
    """K independently initialised heads of one kind on one normalisation; scores are averaged.

    Config ``ensemble: K``: one checkpoint holds the K members, trained side by side on the
    same batches (each on its own loss, summed), and scoring averages their probabilities.
    Diversity comes from the members' initialisations and dropout masks.
    """

    def __init__(self, members: list[Head], feature_dim: int, feature_norm: str) -> None:
        super().__init__(feature_dim, feature_norm)
        self.members = nn.ModuleList(members)
        self.context = members[0].context
        self.name = members[0].name

    def member_outputs(self, x):
        z = self.norm(x)
        return [member.logits(z) for member in self.members]

    def forward(self, x: torch.Tensor, return_features: bool = False, member_outputs: bool = False):
        outputs = self.member_outputs(x)
        if member_outputs:
            return outputs
        scores = torch.stack([torch.sigmoid(logits) for logits, _ in outputs]).mean(0)
        return (scores, outputs[0][1]) if return_features else scores


def build_head(
    kind: str,
    feature_dim: int,
    *,
    dropout: float,
    feature_norm: str,
    ensemble: int = 1,
    revision: int = HEAD_REVISION,
) -> Head:
    """The registered head a config names (``model:``), or an :class:`Ensemble` of ``ensemble`` of them."""
    if kind not in HEADS:
        raise ValueError(f"model must be one of {', '.join(HEADS)}")
    cls = HEADS[kind]
    if ensemble <= 1:
        return cls(feature_dim, dropout=dropout, feature_norm=feature_norm, revision=revision)
    members = [
        cls(feature_dim, dropout=dropout, feature_norm="none", revision=revision) for _ in range(ensemble)
    ]
    return Ensemble(members, feature_dim, feature_norm)
