"""``tent``: test entropy minimization on the BatchNorm affine parameters.

Wang, Shelhamer, Liu, Olshausen & Darrell, "Tent: Fully Test-Time Adaptation by Entropy
Minimization" (ICLR 2021). Every BatchNorm layer normalizes with the statistics of the
current test batch (train-mode BN; here :class:`~tta.methods.affine_adapt.GradTestBatchNorm`,
a ``TestBatchNorm`` that back-propagates through the batch statistics; source statistics
unused) and only its affine ``gamma, beta`` are trained, one step per batch, on the mean
Shannon entropy of the predictions

    L(x) = 1/B sum_i H(p_i),   H(p) = -sum_c p_c log p_c,   p_i = softmax(f(x_i))

with Adam, lr 1e-3, betas (0.9, 0.999), no weight decay, batch 200 (the paper's CIFAR
setting; all configurable: ``--hp lr=... steps=... optimizer=sgd``).

**Reported prediction: before the update.** As Tent's reference ``forward_and_adapt``
(DequanWang/tent), the logits returned for a batch are those of the forward pass whose
entropy is minimized, i.e. computed before that batch's step (with ``steps > 1``: before the
last step). The batch still benefits from all earlier batches' updates.

Batch size 1: conv layers normalize with the single image's spatial statistics; a layer
with one value per channel refuses (see :mod:`tta.methods.affine_adapt`).
"""

import torch

from tta.methods.affine_adapt import AffineAdaptMethod, GradTestBatchNorm, optimizer_hparams
from tta.registry import register_method


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-example entropy ``-sum_c p_c log p_c`` of ``softmax(logits)``, in nats."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


@register_method("tent")
class Tent(AffineAdaptMethod):
    """Tent (Wang et al. 2021): test-batch BN statistics, entropy minimization on BN affine."""

    hparams = optimizer_hparams(lr=1e-3)

    def make_layer(self, bn):
        return GradTestBatchNorm(bn)

    def loss(self, logits):
        return softmax_entropy(logits).mean()
