"""Shared base of the methods that only change which statistics BatchNorm normalizes with."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta.methods.base import Method
from tta.methods.norm_layers import replace_batchnorms


class NormStatsMethod(Method):
    """Swap every BatchNorm layer for ``make_layer(bn)`` and predict with the swapped model."""

    compilable = True

    def make_layer(self, bn: _BatchNorm) -> nn.Module:
        raise NotImplementedError

    def configure(self, model: nn.Module) -> None:
        self.layers = replace_batchnorms(model, self.make_layer)

    def forward(self, x):
        return self.model(x)
