"""I3D ResNet-50 (the non-local repository's inflated ResNet-50 baseline, non-local blocks off) as a feature model.

Module and parameter names follow Tushar-N/pytorch-resnet3d ``models/resnet.py``
(``I3Res50``: ``conv1``, ``bn1``, ``layer1`` … ``layer4`` of bottlenecks with
``conv1``/``bn1``, ``conv2``/``bn2``, ``conv3``/``bn3`` and ``downsample.0``
(conv) / ``downsample.1`` (BN), the classifier ``fc``), so its converted
``i3d_r50_kinetics.pth`` (a plain state dict) loads as it is; ``fc`` (400
outputs) is dropped here. GowthamGottimukkala/I3D_Feature_Extraction_resnet
builds the same network (``use_nl=False``) and returns the pooled map, which is
what this model returns: the RTFM-era 2048-d UCF-Crime features.

Facts taken from that reference (written anew here, not copied):

* conv1 5x7x7, stride 2 in time and space, padding (2, 3, 3); BN; ReLU; max pool
  1 of kernel (2, 3, 3), stride 2, no padding; layer1; max pool 2 of kernel (2, 1,
  1), stride (2, 1, 1) (time only); layer2-4; adaptive average pool to 1x1x1.
* stages of 3, 4, 6, 3 bottlenecks of widths 64, 128, 256, 512 (x4 out), stride 2
  in space on the first block of stages 2-4, on the 1x3x3 conv.
* inflation: a block's first 1x1x1 conv is 3x1x1 (padding 1 in time) where its
  stage's ``temp_conv`` flag is 1: [1, 1, 1], [1, 0, 1, 0], [1, 0, 1, 0, 1, 0],
  [0, 1, 0]; no temporal stride inside the stages.
* projection shortcut (1x1x1 conv + BN) on each stage's first block (layer1's
  too, 64 -> 256 channels); PyTorch's BatchNorm3d defaults (eps 1e-5).
"""

from __future__ import annotations

import torch
from torch import nn

from anomaly.extractors.resnet3d import Bottleneck

FEATURE_DIM = 2048
STAGES = (
    (64, (1, 1, 1), 1),
    (128, (1, 0, 1, 0), 2),
    (256, (1, 0, 1, 0, 1, 0), 2),
    (512, (0, 1, 0), 2),
)


class InflatedBottleneck(Bottleneck):
    """The 3D-ResNets bottleneck's forward with I3D's inflated convolutions (temporal kernel on conv1)."""

    def __init__(self, cin: int, planes: int, stride: int, temporal: int, downsample: bool) -> None:
        nn.Module.__init__(self)
        self.conv1 = nn.Conv3d(
            cin, planes, kernel_size=(1 + 2 * temporal, 1, 1), padding=(temporal, 0, 0), bias=False
        )
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(
            planes, planes, kernel_size=(1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
        )
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(
                nn.Conv3d(cin, planes * 4, kernel_size=1, stride=(1, stride, stride), bias=False),
                nn.BatchNorm3d(planes * 4),
            )
            if downsample
            else None
        )


class I3DResNet50(nn.Module):
    """``(B, 3, T, H, W)`` in [-1, 1] -> ``(B, 2048)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, kernel_size=(5, 7, 7), stride=2, padding=(2, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool1 = nn.MaxPool3d(kernel_size=(2, 3, 3), stride=2)
        self.maxpool2 = nn.MaxPool3d(kernel_size=(2, 1, 1), stride=(2, 1, 1))
        cin = 64
        for index, (planes, temporal, stride) in enumerate(STAGES):
            blocks = []
            for i, flag in enumerate(temporal):
                blocks.append(
                    InflatedBottleneck(cin, planes, stride if i == 0 else 1, flag, downsample=i == 0)
                )
                cin = planes * 4
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        assert cin == FEATURE_DIM
        for module in self.modules():  # the reference's initialisation
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool1(self.relu(self.bn1(self.conv1(x))))
        x = self.maxpool2(self.layer1(x))
        x = self.layer4(self.layer3(self.layer2(x)))
        return nn.functional.adaptive_avg_pool3d(x, 1).flatten(1)  # the reference's AdaptiveAvgPool3d
