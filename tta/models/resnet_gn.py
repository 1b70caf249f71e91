"""CIFAR ResNet-26 with GroupNorm: the normalization-agnostic CIFAR model of TTT and MEMO.

Sun et al., "Test-Time Training with Self-Supervision for Generalization under Distribution
Shifts" (ICML 2020) trained a pre-activation ResNet-26 (depth 6n + 2, n = 4 blocks per stage,
widths 16/32/64) with GroupNorm of 8 groups; Zhang, Levine & Finn, "MEMO" (NeurIPS 2022) and
mariodoebler/test-time-adaptation (MD, arch ``resnet26_gn``) reuse its checkpoint. Facts from
MD 8b2ed63 ``classification/models/resnet26.py``: module names (``conv1``,
``layer{1,2,3}.{i}.{bn1,conv1,bn2,conv2}``, final ``bn``, ``fc``), checkpoint under the key
``net`` (unwrapped by :mod:`tta.models.checkpoint`), input normalization mean = std = 0.5 per
channel (lines 14-16), and the parameter-free downsampling shortcut: 2x2 average pooling,
then the new channels are zeros.

Pre-activation block: ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``, the shortcut applied to
``x`` where the stage changes resolution or width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tta.models.registry import register_model

#: GroupNorm groups of the TTT / MEMO checkpoint (MD ``build_resnet26(groups=8)``)
GROUPS = 8


class AvgPoolZeroShortcut(nn.Module):
    """``avg_pool(x, stride)`` followed by zero channels up to ``out_channels`` (no parameters)."""

    def __init__(self, stride: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(F.avg_pool2d(x, self.stride), (0, 0, 0, 0, 0, self.extra))


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.GroupNorm(GROUPS, in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.GroupNorm(GROUPS, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        changes = stride != 1 or in_planes != planes
        self.downsample = AvgPoolZeroShortcut(stride, in_planes, planes) if changes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv1(F.relu(self.bn1(x)))
        residual = self.conv2(F.relu(self.bn2(residual)))
        return (x if self.downsample is None else self.downsample(x)) + residual


class ResNetGN(nn.Module):
    def __init__(self, depth: int = 26, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2, got {depth}")
        per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        in_planes, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(per_stage):
                blocks.append(PreActBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.GroupNorm(GROUPS, 64)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.relu(self.bn(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("resnet26_gn", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), head="fc")
def resnet26_gn(num_classes: int = 10) -> ResNetGN:
    """CIFAR ResNet-26, GroupNorm (8 groups), pre-activation (TTT / MEMO / MD resnet26_gn checkpoint layout)."""
    return ResNetGN(26, num_classes)
