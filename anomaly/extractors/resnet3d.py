"""3D ResNets of Hara et al.'s 3D-ResNets-PyTorch (kenshohara), 2017 and 2020 releases, as feature models.

Module and parameter names follow the reference's ``models/resnet.py`` (``conv1``,
``bn1``, ``layer1`` … ``layer4`` of ``BasicBlock``/``Bottleneck`` with ``conv1``,
``bn1``, ``conv2``, ``bn2`` [, ``conv3``, ``bn3``], a projection shortcut
``downsample.0`` (1x1x1 conv) + ``downsample.1`` (BN), and the classifier
``fc``), so the published checkpoints' state dicts load as they are; ``fc`` is
dropped here (its 400, 700, 1039 … outputs are ignored).

Facts taken from the reference (written anew here, not copied):

* both releases: conv1 7x7x7, stride (1, 2, 2), padding 3, no bias; BN; ReLU;
  max pool 3x3x3, stride 2, padding 1; four stages of widths 64, 128, 256, 512
  (x4 for bottlenecks), the first block of stages 2-4 with stride 2; blocks per
  stage: 10 [1,1,1,1], 18 [2,2,2,2], 34 [3,4,6,3] (basic), 50 [3,4,6,3], 101
  [3,4,23,3], 152 [3,8,36,3], 200 [3,24,36,3] (bottleneck).
* shortcut where a block changes shape: type "A" (2017 release, depths 10/18/34,
  README ``--resnet_shortcut A``): the input subsampled with ``avg_pool3d(kernel
  1, stride)`` and zero channels appended, no parameters; type "B" (2017 from
  depth 50, every 2020 model): 1x1x1 conv with the stride + BN.
* pooling: 2017 ``AvgPool3d((ceil(sample_duration / 16), ceil(sample_size / 32),
  ceil(sample_size / 32)), stride=1)``, sized from the input; 2020
  ``AdaptiveAvgPool3d((1, 1, 1))``. Every stride-2 step of this network maps n
  to ceil(n / 2), so the 2017 kernel always equals the last map (4 halvings in
  time, 5 in space) and both are a global average; the 2017 model still pools
  with the kernel computed as that code does, so the numbers are the same.

Output: the pooled layer4 map, ``(B, 512)`` for depths 10-34, ``(B, 2048)`` from 50.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# depth -> (block kind, blocks per stage)
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)


def feature_dim(depth: int) -> int:
    kind, _ = DEPTHS[depth]
    return STAGE_WIDTHS[-1] * (4 if kind == "bottleneck" else 1)


def shortcut_type(depth: int, release: int) -> str:
    """'A' for the 2017 release's depths 10/18/34, else 'B' (see the module docstring)."""
    return "A" if release == 2017 and DEPTHS[depth][0] == "basic" else "B"


class ZeroPadShortcut(nn.Module):
    """Shortcut A: subsample by ``stride`` (an average pool of kernel 1) and append zero channels."""

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels, self.stride = out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
        pad = out.new_zeros(out.shape[0], self.out_channels - out.shape[1], *out.shape[2:])
        return torch.cat([out, pad], dim=1)


def _projection(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm3d(cout))


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv3(cin, planes, stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, stride)  # the stride sits on the 3x3x3 conv, as in the reference
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class HaraResNet3D(nn.Module):
    """``(B, 3, T, H, W)`` -> ``(B, D)``: the 2017 or 2020 release's ResNet of ``depth`` without ``fc``."""

    def __init__(self, depth: int, release: int) -> None:
        super().__init__()
        if depth not in DEPTHS or release not in (2017, 2020):
            raise ValueError(f"no 3D-ResNets-PyTorch model of depth {depth} in release {release}")
        kind, blocks = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.release, self.shortcut = depth, release, shortcut_type(depth, release)
        self.conv1 = nn.Conv3d(3, 64, kernel_size=7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        cin = 64
        for index, (planes, count) in enumerate(zip(STAGE_WIDTHS, blocks, strict=True)):
            stride = 1 if index == 0 else 2
            cout = planes * block.expansion
            layers = []
            for i in range(count):
                downsample = None
                if i == 0 and (stride != 1 or cin != cout):
                    downsample = (
                        ZeroPadShortcut(cout, stride)
                        if self.shortcut == "A"
                        else _projection(cin, cout, stride)
                    )
                layers.append(block(cin, planes, stride if i == 0 else 1, downsample))
                cin = cout
            self.add_module(f"layer{index + 1}", nn.Sequential(*layers))
        self.feature_dim = cin
        # Initialisation as the reference: kaiming-normal (fan_out) convs, BN weight 1 and bias 0.
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, h, w = x.shape[2:]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.release == 2017:
            # AvgPool3d((last_duration, last_size, last_size), stride=1), sized from the input as the 2017
            # code sizes it from sample_duration and sample_size (here per axis, so H != W works too).
            kernel = (math.ceil(t / 16), math.ceil(h / 32), math.ceil(w / 32))
            x = F.avg_pool3d(x, kernel, stride=1)
        else:
            x = F.adaptive_avg_pool3d(x, 1)
        return x.flatten(1)
