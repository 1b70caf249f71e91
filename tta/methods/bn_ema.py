"""``bn_ema``: test statistics as an exponential moving average across batches.

The ``norm_ema`` method of mariodoebler/test-time-adaptation ("MD";
``classification/methods/norm.py`` class ``BNEMA`` and ``methods/bn.py`` class
``EMABatchNorm``). Every BatchNorm layer keeps moving statistics, initialised to the
source statistics and, for each test batch ``t`` with batch mean ``m_t`` and *unbiased*
batch variance ``v_t`` (PyTorch's running-statistics update),

    mu_t     = (1 - momentum) * mu_{t-1}     + momentum * m_t
    sigma2_t = (1 - momentum) * sigma2_{t-1} + momentum * v_t
    y = (x - mu_t) / sqrt(sigma2_t + eps) * gamma + beta

**Two passes per batch, as the reference.** MD's ``EMABatchNorm.forward`` runs the model
once in train mode (every layer normalizes with its batch statistics and updates its
running statistics) and then once in eval mode (every layer normalizes with the updated
running statistics), returning the second pass. So the statistics that layer ``l``
accumulates are those of its input when all earlier layers normalize with *batch*
statistics, not with the moving ones; a one-pass variant would differ from the reference
after the first layer. Here: pass 1 (``collecting``) calls ``F.batch_norm`` in training mode
on the moving buffers, PyTorch's own update; pass 2 normalizes with them.

Default ``momentum = 0.1``: MD sets none, so the update uses the checkpoint's BatchNorm
momentum, PyTorch's default 0.1 (the ResNet-20 and RobustBench CIFAR models keep it);
``cfgs/cifar10_c/norm_ema.yaml`` only sets ``ADAPTATION: bnema`` and batch 200.

Reset: the moving buffers are declared in ``touched_tensors``, so the base class restores
them to the source statistics bit for bit (episodic: at every new domain).
Batch size 1 on a layer without spatial extent has no variance and refuses, as ``bn_adapt``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from tta.hparams import HParam
from tta.methods.norm_layers import StatsNorm
from tta.methods.norm_stats import NormStatsMethod
from tta.errors import UserError
from tta.registry import register_method


class EMABatchNorm(StatsNorm):
    """BatchNorm with moving test statistics (``ema_mean``, ``ema_var``, started at the source ones)."""

    def __init__(self, bn: _BatchNorm, momentum: float) -> None:
        super().__init__(bn)
        self.momentum = momentum
        self.collecting = False
        self.register_buffer("ema_mean", bn.running_mean.detach().clone(), persistent=False)
        self.register_buffer("ema_var", bn.running_var.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.collecting:
            return F.batch_norm(x, self.ema_mean, self.ema_var, self.weight, self.bias, False, 0.0, self.eps)
        if x.numel() == x.shape[1]:
            raise UserError(f"moving test statistics need more than one value per channel (input {tuple(x.shape)}): "
                            "use --batch-size 2 or more")
        return F.batch_norm(x, self.ema_mean, self.ema_var, self.weight, self.bias, True, self.momentum, self.eps)


@register_method("bn_ema")
class BNEma(NormStatsMethod):
    """BN-EMA (MD's norm_ema): BatchNorm statistics as a moving average over test batches."""

    hparams = {
        "momentum": HParam(0.1, "weight of the current batch in the moving statistics (0 = source)", 0.0, 1.0,
                           search=(0.01, 0.03, 0.05, 0.1, 0.2, 0.5)),
    }

    def make_layer(self, bn):
        return EMABatchNorm(bn, self.hp["momentum"])

    def touched_tensors(self):
        return [t for layer in self.layers for t in (layer.ema_mean, layer.ema_var)]

    def forward(self, x):
        self._collect(True)
        try:
            with torch.no_grad():
                self.model(x)
        finally:
            self._collect(False)
        return self.model(x)

    def _collect(self, on: bool) -> None:
        for layer in self.layers:
            layer.collecting = on
