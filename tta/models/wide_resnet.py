"""WideResNet-28-10 (Zagoruyko & Komodakis, BMVC 2016) in RobustBench's ``Standard`` layout.

Pre-activation blocks; module names (``conv1``, ``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,
convShortcut}``, ``bn1``, ``fc``) match RobustBench's CIFAR-10 ``Standard`` checkpoint, which
takes inputs in [0, 1] with no further normalization.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from tta.models.registry import IDENTITY_MEAN, IDENTITY_STD, register_model


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x):
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        shortcut = x if self.equal_in_out else self.convShortcut(activated)
        return shortcut + out


class WideStage(nn.Module):
    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                                     for i in range(blocks)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10) -> None:
        super().__init__()
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = WideStage(blocks, widths[0], widths[1], 1)
        self.block2 = WideStage(blocks, widths[1], widths[2], 2)
        self.block3 = WideStage(blocks, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("wrn28_10", mean=IDENTITY_MEAN, std=IDENTITY_STD, head="fc")
def wrn28_10(num_classes: int = 10) -> WideResNet:
    """WideResNet-28-10 (36.5M params; RobustBench Standard checkpoint layout, inputs in [0, 1])."""
    return WideResNet(28, 10, num_classes)
