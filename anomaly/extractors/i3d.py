"""Inception-v1 I3D (Carreira & Zisserman, CVPR 2017), RGB stream, up to the pooled Mixed_5c features.

Module and parameter names follow piergiaj/pytorch-i3d (``Conv3d_1a_7x7`` …
``Mixed_5c``, each unit holding ``conv3d`` and ``bn``; inception branches
``b0``, ``b1a``, ``b1b``, ``b2a``, ``b2b``, ``b3b``; the classifier ``logits``),
so its ``rgb_imagenet.pt`` state dict loads; ``logits`` is dropped here.

Convolutions and max pools use TensorFlow "SAME" padding computed from the
input size (the original model is a TF/Sonnet port), with zeros as in the port.

Output: the 1024-d average of Mixed_5c over time and space, the features RTFM
and most later UCF-Crime work use. The port averages with a fixed
``AvgPool3d((2, 7, 7))``; at its native 16x224x224 input Mixed_5c is exactly
2x7x7, so the global average here is the same number there and also works for
other clip lengths and crops. Input: ``(B, 3, T, H, W)`` scaled to [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 1024

Triple = tuple[int, int, int]


def _same_pad(x: torch.Tensor, kernel: Triple, stride: Triple) -> torch.Tensor:
    """Zero-pad (T, H, W) as TF 'SAME' does: output = ceil(input / stride), extra pixel at the end."""
    pads: list[int] = []  # F.pad wants the last axis (W) first
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm + ReLU, or a biased conv alone for the classifier."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        *,
        batch_norm: bool = True,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, padding=0, bias=not batch_norm)
        # eps/momentum of the TF original, as in the port.
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | 3x3x3 max pool -> 1x1, concatenated."""

    def __init__(self, cin: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        cube = (3, 3, 3)
        self.b0 = Unit3D(cin, w0)
        self.b1a = Unit3D(cin, w1a)
        self.b1b = Unit3D(w1a, w1b, cube)
        self.b2a = Unit3D(cin, w2a)
        self.b2b = Unit3D(w2a, w2b, cube)
        self.b3a = MaxPool3dSame(cube, (1, 1, 1))
        self.b3b = Unit3D(cin, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


# (name, inception widths: 1x1, 3x3 reduce, 3x3, 3x3 reduce, 3x3, pool proj) — Table 1 of GoogLeNet.
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class InceptionI3D(nn.Module):
    """RGB I3D feature extractor: (B, 3, T, H, W) in [-1, 1] -> (B, 1024)."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        channels = 192
        for name, widths in _MIXED.items():
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
            elif name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
            block = InceptionModule(channels, widths)
            self.add_module(name, block)
            channels = block.out_channels
        assert channels == FEATURE_DIM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.children():  # registration order is the network order
            x = block(x)
        return x.mean(dim=(2, 3, 4))
