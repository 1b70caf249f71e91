"""CIFAR ResNet-20/32/44/56 (He et al., CVPR 2016, Sec. 4.2) with option-A shortcuts.

Module names match the widely used checkpoints of akamaster/pytorch_resnet_cifar10
(``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv,bn}{1,2}``, ``linear``), which were trained on
inputs normalized with the ImageNet mean and std. Option A: a downsampling shortcut
subsamples by 2 and zero-pads the new channels (no parameters). Depth = 6n + 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tta.models.registry import register_model


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::2, ::2]`` with ``pad`` zero channels on each side."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        downsample = stride != 1 or in_planes != planes
        self.shortcut = ZeroPadShortcut(planes // 4) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model("resnet20", head="linear")
def resnet20(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-20 (0.27M params, option A; akamaster checkpoint layout)."""
    return CifarResNet(3, num_classes)


@register_model("resnet32", head="linear")
def resnet32(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-32 (0.46M params, option A; akamaster checkpoint layout)."""
    return CifarResNet(5, num_classes)


@register_model("resnet44", head="linear")
def resnet44(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-44 (0.66M params, option A; akamaster checkpoint layout)."""
    return CifarResNet(7, num_classes)


@register_model("resnet56", head="linear")
def resnet56(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-56 (0.85M params, option A; akamaster checkpoint layout)."""
    return CifarResNet(9, num_classes)
