"""BatchNorm replacements that normalize with test-time statistics.

Every layer here keeps the source layer's affine parameters and source statistics as the
*same* tensors (no copies), so swapping layers never changes a checkpoint's state dict
and ``source`` statistics stay available. They differ only in which mean and variance
they normalize with:

    y = (x - mean) / sqrt(var + eps) * weight + bias

All statistics are per channel over every other axis (batch and spatial), biased
(divide by n), as BatchNorm uses for normalization.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta.errors import UserError


#: channels-last statistics are taken over rows at least this wide (see :func:`_grouped_channels_last_statistics`)
STATS_ROW_WIDTH = 128
#: ... when a pixel's channels fill at most this many floats of a row (wider pixels vectorize
#: well enough in the fused kernel that pooling the groups costs more than it saves) ...
GROUPED_STATS_MAX_CHANNELS = 16
#: ... for CPU tensors at least this large; below, the fixed cost of pooling the groups outweighs the gain
GROUPED_STATS_MIN_NUMEL = 2**20


def batch_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel biased variance and mean of ``x`` (channel axis 1): ``(var, mean)``.

    Kernels chosen by memory layout, because the obvious ``torch.var_mean`` over axes
    (0, 2, 3) is a strided Welford pass that costs more on CPU than the rest of a ResNet-20
    forward:

    * channels-last input (how tta streams images, and faster for CPU convolutions), no
      gradient needed: PyTorch's fused BatchNorm statistics kernel, over pixel groups
      where that pays (:func:`_grouped_channels_last_statistics`);
    * otherwise: ``mean = S1 / n``, ``var = S2 / n - mean^2`` from the sums ``S1 = sum x`` and
      ``S2 = sum x^2`` taken along the contiguous spatial rows (a sum and a dot product per
      row), differentiable. Float32 cancellation in ``S2/n - mean^2`` is negligible unless
      |mean| exceeds the standard deviation by orders of magnitude.
    """
    if _channels_last_without_grad(x):
        if _grouped_statistics_pay(x):
            return _grouped_channels_last_statistics(x)
        mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
        return var, mean
    rows = x.flatten(2) if x.dim() > 2 else x.unsqueeze(2)
    n = rows.shape[0] * rows.shape[2]
    mean = rows.sum(2).sum(0) / n
    square_mean = torch.linalg.vecdot(rows, rows, dim=2).sum(0) / n
    return (square_mean - mean.square()).clamp_min_(0.0), mean


def _channels_last_without_grad(x: torch.Tensor) -> bool:
    return (x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
            and not (x.requires_grad and torch.is_grad_enabled()))


def _grouped_channels_last_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(var, mean)`` of a channels-last 4-d tensor by PyTorch's fused BatchNorm statistics
    kernel (``torch.batch_norm_update_stats`` without running buffers, biased variance), over
    pixel groups; callers take it only where :func:`_grouped_statistics_pay`.

    That kernel vectorizes over the channels, so with few channels (16 in a CIFAR ResNet's
    first stage) its rows are too short and it runs at a third of memory speed. The memory
    ``(N, H, W, C)`` is then read as rows of ``g = STATS_ROW_WIDTH // C`` consecutive pixels,
    ``(N*H*W/g, g*C)``, whose per-column statistics are the statistics of ``g`` equal-sized
    groups of pixels, pooled exactly:

        mean = avg_g(mean_g);  var = avg_g(var_g + mean_g^2) - mean^2
    """
    channels = x.shape[1]
    groups = STATS_ROW_WIDTH // channels
    rows = x.permute(0, 2, 3, 1).reshape(-1, groups * channels)
    group_mean, group_var = torch.batch_norm_update_stats(rows, None, None, 0.0)
    group_mean = group_mean.view(groups, channels)
    mean = group_mean.mean(0)
    square_mean = group_var.view(groups, channels).addcmul(group_mean, group_mean).mean(0)
    return (square_mean - mean.square()).clamp_min_(0.0), mean


def _grouped_statistics_pay(x: torch.Tensor) -> bool:
    """Whether :func:`_grouped_channels_last_statistics` should pool pixel groups for ``x``: on CPU, at
    most 16 channels, a tensor of at least 2^20 values, and a pixel count divisible by the
    group size.

    Measured on a 2-core x86 CPU. Statistics alone: (200, 16, 32, 32) 0.27 ms grouped against
    0.81 ms. One TestBatchNorm layer, grouped against PyTorch's fused kernel: (64, 16, 32, 32)
    289 against 417 us, but (64, 32, 16, 16) 168 against 156 us, (200, 32, 16, 16) 678 against
    455 us and (16, 64, 8, 8) 58 against 30 us. Whole ResNet-20 with test statistics (medians
    of 5 interleaved runs): grouping its 16-channel layers is 1.6% faster at batch 64 but 2.4%
    slower at batch 16 (2^18 values), although that layer alone measures 111 against 119 us.
    """
    channels = x.shape[1]
    groups = STATS_ROW_WIDTH // channels
    return (x.device.type == "cpu" and channels <= GROUPED_STATS_MAX_CHANNELS
            and x.numel() >= GROUPED_STATS_MIN_NUMEL and (x.numel() // channels) % groups == 0)


class StatsNorm(nn.Module):
    """Base: a BatchNorm layer whose statistics come from :meth:`statistics`."""

    def __init__(self, bn: _BatchNorm) -> None:
        super().__init__()
        if bn.running_mean is None or bn.running_var is None:
            raise UserError(f"{type(bn).__name__} without running statistics cannot be adapted (track_running_stats=False)")
        self.num_features = bn.num_features
        self.eps = bn.eps
        self.weight = bn.weight
        self.bias = bn.bias
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked)

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean, var)`` to normalize ``x`` with."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.statistics(x)
        return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class TestBatchNorm(StatsNorm):
    """Test-batch statistics only (BN-adapt; Schneider et al. 2020, Nado et al. 2020).

    One value per channel (batch size 1 on a layer without spatial extent) has no variance:
    the layer would output its bias whatever the input, so it refuses instead.
    """

    def statistics(self, x):
        var, mean = batch_statistics(x)
        return mean, var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_with_test_statistics(self, x)


def normalize_with_test_statistics(layer: StatsNorm, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm of ``x`` with its own statistics and ``layer``'s affine parameters.

    Where the pooled channels-last statistics are not faster, PyTorch's training-mode kernel
    computes the batch statistics and normalizes in one call (no running buffers are passed,
    so nothing is updated).
    """
    if x.numel() == x.shape[1]:
        raise UserError(f"test-batch statistics of one value per channel ({type(layer).__name__} on input "
                        f"{tuple(x.shape)}): use --batch-size 2 or more, or a method that keeps source statistics")
    if _grouped_statistics_pay(x) and _channels_last_without_grad(x):
        var, mean = _grouped_channels_last_statistics(x)
        return F.batch_norm(x, mean, var, layer.weight, layer.bias, False, 0.0, layer.eps)
    return F.batch_norm(x, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)


class MixedBatchNorm(StatsNorm):
    """alpha-BN statistics: ``mean = alpha * mu_source + (1 - alpha) * mu_test`` (same for var).

    ``alpha`` is the weight on the *source* statistics (see :mod:`tta.methods.alpha_bn`).
    """

    def __init__(self, bn: _BatchNorm, alpha: float) -> None:
        super().__init__(bn)
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``alpha = 1`` and ``alpha = 0`` take the source and :class:`TestBatchNorm` paths, so
        they equal ``source`` and ``bn_adapt`` bit for bit (and skip the unused statistics)."""
        if self.alpha == 1.0:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if self.alpha == 0.0:
            return normalize_with_test_statistics(self, x)
        return super().forward(x)

    def statistics(self, x):
        var, mean = batch_statistics(x)
        # lerp(source, test, 1 - alpha): exactly the source at alpha = 1, exactly the test batch at alpha = 0
        weight = 1.0 - self.alpha
        return torch.lerp(self.running_mean, mean, weight), torch.lerp(self.running_var, var, weight)


class PooledBatchNorm(StatsNorm):
    """Statistics of every target example seen so far, pooled exactly (AdaBN, online).

    Keeps per channel the count ``n``, mean ``m`` and sum of squared deviations ``M2`` in
    float64 and merges each batch (``n_b``, ``m_b``, ``v_b``) with Chan et al.'s parallel
    update, in Welford's form:

        d = m_b - m;  n' = n + n_b;  m' = m + d * n_b / n';
        M2' = M2 + n_b * v_b + n_b * d * (m_b - m');  var = M2' / n'

    (``n_b d (m_b - m') = d^2 n n_b / n'``), so after a domain the statistics equal those of
    all its inputs computed at once, between-batch variance included (unlike torch's
    ``momentum=None`` running average of per-batch variances). The count is a tensor too:
    under ``torch.compile`` a Python number would be guarded and recompiled at every batch.
    """

    def __init__(self, bn: _BatchNorm) -> None:
        super().__init__(bn)
        device = bn.running_mean.device
        for name, shape in (("count", ()), ("pooled_mean", (bn.num_features,)), ("pooled_m2", (bn.num_features,))):
            self.register_buffer(name, torch.zeros(shape, dtype=torch.float64, device=device), persistent=False)

    def statistics(self, x):
        var_b, mean_b = batch_statistics(x.detach())
        n_b = float(x.numel() // x.shape[1])
        self.count.add_(n_b)
        mean_b = mean_b.double()
        delta = mean_b - self.pooled_mean
        self.pooled_mean.addcmul_(delta, n_b / self.count)
        self.pooled_m2.add_(var_b.double(), alpha=n_b).addcmul_(delta, mean_b - self.pooled_mean, value=n_b)
        return self.pooled_mean.to(x.dtype), (self.pooled_m2 / self.count).to(x.dtype)

    def reset_statistics(self) -> None:
        self.count.zero_()
        self.pooled_mean.zero_()
        self.pooled_m2.zero_()


def replace_batchnorms(model: nn.Module, make: Callable[[_BatchNorm], nn.Module]) -> list[nn.Module]:
    """Swap every BatchNorm{1,2,3}d in ``model`` for ``make(bn)``; return the new layers."""
    replaced = []
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm):
                layer = make(child)
                setattr(parent, child_name, layer)
                replaced.append(layer)
    if not replaced:
        raise UserError("the model has no BatchNorm layer, so normalization-statistics methods cannot adapt it")
    return replaced
