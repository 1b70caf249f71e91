"""``ema_bn``: BatchNorm statistics tracked as an exponential moving average of test batches.

Starting from the source statistics, after every test batch with statistics
``(mu_B, var_B)``:

    mu  <- (1 - m) * mu  + m * mu_B
    var <- (1 - m) * var + m * var_B

and the batch is normalized with the updated ``(mu, var)``. This is the BN-EMA baseline
of the continual-TTA literature (e.g. Mirza et al., CVPR 2022, "The Norm Must Go On",
whose DUA additionally decays ``m``). ``m = 1`` is ``bn_adapt``; ``m = 0`` is ``source``.

It shows the whole plugin contract: subclass :class:`tta.methods.base.Method` (here its
BN-swapping helper), declare hyperparameters, keep state that :meth:`reset_state` clears,
and register through the ``tta.methods`` entry point in ``pyproject.toml``.
"""

from __future__ import annotations

import torch

from tta.hparams import HParam
from tta.methods.norm_layers import StatsNorm, batch_statistics
from tta.methods.norm_stats import NormStatsMethod


class EMABatchNorm(StatsNorm):
    def __init__(self, bn, momentum: float) -> None:
        super().__init__(bn)
        self.momentum = momentum
        self.register_buffer("ema_mean", bn.running_mean.clone(), persistent=False)
        self.register_buffer("ema_var", bn.running_var.clone(), persistent=False)

    def statistics(self, x: torch.Tensor):
        var, mean = batch_statistics(x.detach())
        self.ema_mean.lerp_(mean, self.momentum)
        self.ema_var.lerp_(var, self.momentum)
        return self.ema_mean, self.ema_var

    def restart(self) -> None:
        self.ema_mean.copy_(self.running_mean)
        self.ema_var.copy_(self.running_var)


class EMABatchNormMethod(NormStatsMethod):
    """BN-EMA: moving average of test-batch statistics, initialized at the source statistics."""

    hparams = {"momentum": HParam(0.1, "weight of each new batch", 0.0, 1.0, search=(0.01, 0.05, 0.1, 0.3))}

    def make_layer(self, bn):
        return EMABatchNorm(bn, self.hp["momentum"])

    def reset_state(self) -> None:
        for layer in self.layers:
            layer.restart()
