"""C3D (Tran et al., ICCV 2015) up to fc6: the feature Sultani et al. 2018 pooled into segments.

Module names follow the widely used PyTorch port of the Sports-1M Caffe model
(DavideA/c3d-pytorch, ``c3d.pickle``): ``conv1``, ``conv2``, ``conv3a`` …
``conv5b``, ``fc6`` (and ``fc7``/``fc8``, which this feature model drops), so
that file loads as it is.

Input: ``(B, 3, T, H, W)`` float, natively ``3 x 16 x 112 x 112`` after a
128x171 resize, in Caffe's convention: pixel values 0..255 minus the Sports-1M
mean pixel, channels in BGR order (see ``registry.py`` for how the spec
expresses this). Output: fc6 after ReLU, ``(B, 4096)``.

Smaller inputs: fc6's weights expect pool5 to be ``512 x 1 x 4 x 4`` (8192
values). An adaptive average pool to exactly that size sits between pool5 and
fc6; at the native input it is the identity, at smaller inputs it resamples
pool5 so the same fc6 weights still apply. The clip needs at least 16 frames
and 16x16 pixels (four halvings in time after pool1, four in space).
"""

from __future__ import annotations

import torch
from torch import nn

FEATURE_DIM = 4096
POOL5_SHAPE = (1, 4, 4)  # pool5 output at the native 16x112x112 input; fc6 takes 512 * 1 * 4 * 4 = 8192


def _conv(cin: int, cout: int) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel_size=3, padding=1)


class C3D(nn.Module):
    """conv1 … conv5b, pool5, fc6 (+ReLU); attribute names match DavideA/c3d-pytorch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _conv(3, 64)
        self.conv2 = _conv(64, 128)
        self.conv3a = _conv(128, 256)
        self.conv3b = _conv(256, 256)
        self.conv4a = _conv(256, 512)
        self.conv4b = _conv(512, 512)
        self.conv5a = _conv(512, 512)
        self.conv5b = _conv(512, 512)
        # pool1 keeps time (C3D's "do not collapse the temporal signal too early"); later pools halve all.
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        # pool5 pads space by one so 7x7 -> 4x4, as in the Caffe prototxt.
        self.pool5 = nn.MaxPool3d(kernel_size=2, stride=2, padding=(0, 1, 1))
        self.to_pool5_shape = nn.AdaptiveAvgPool3d(POOL5_SHAPE)
        self.fc6 = nn.Linear(512 * POOL5_SHAPE[0] * POOL5_SHAPE[1] * POOL5_SHAPE[2], FEATURE_DIM)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu = self.relu
        h = self.pool1(relu(self.conv1(x)))
        h = self.pool(relu(self.conv2(h)))
        h = self.pool(relu(self.conv3b(relu(self.conv3a(h)))))
        h = self.pool(relu(self.conv4b(relu(self.conv4a(h)))))
        h = self.pool5(relu(self.conv5b(relu(self.conv5a(h)))))
        h = self.to_pool5_shape(h).flatten(1)  # (C, T, H, W) order, as the port's view(-1, 8192)
        return relu(self.fc6(h))
