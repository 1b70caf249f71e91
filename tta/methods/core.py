"""``core``: alpha-BN plus online minimization of pairwise class correlation.

You, Li & Zhao, "Test-time Batch Statistics Calibration for Covariate Shift"
(arXiv:2110.04065, 2021). **The paper's**: the framework Core = alpha-BN (every BN layer
normalizes with ``alpha * source + (1 - alpha) * test-batch`` statistics; ``alpha`` is the
weight on the SOURCE statistics, tta's convention, see :mod:`tta.methods.alpha_bn`) plus a
loss on the pairwise class correlation of the test predictions, optimized online on the
BN affine parameters.

**This project's choice** (the paper's exact loss was not available offline): the Minimum
Class Confusion loss of Jin, Wang, Long & Wang (ECCV 2020), which penalizes exactly the
off-diagonal class correlation of a batch. For logits ``Z`` (B x K):

    Y_ij  = softmax(Z_i / T)_j                               temperature T = 2.5
    H_i   = -sum_j Y_ij log Y_ij
    w_i   = B (1 + exp(-H_i)) / sum_i' (1 + exp(-H_i'))     confident examples weigh more
    C     = Y^T diag(w) Y                                     K x K class correlation
    C~_jk = C_jk / sum_j' C_j'k                                normalize by class mass
    L     = 1/K sum_j sum_{k != j} C~_jk                       off-diagonal correlation

``w`` is treated as a constant (no gradient through it), as in MCC. T = 2.5 is the default of
MCC's published examples (thuml Transfer-Learning-Library). Optimizer and schedule follow
``tent`` (Adam, one step per batch, prediction from before the step); the lr default 1e-3 is
this project's choice, alpha 0.1 as ``alpha_bn``.

Segmentation: the pixels of a batch are its examples (same formula, ``B`` = number of pixels).

Batch size 1: ``C`` is then rank one and ``L = (K - 1) / K`` for every input, so the loss
carries no signal (and Adam would turn float round-off in its zero gradient into steps of
size ~lr): a batch of one example is predicted with alpha-BN and no step is taken. A layer
with one value per channel refuses (see :mod:`tta.methods.affine_adapt`).
"""

import torch

from tta.hparams import HParam
from tta.methods.affine_adapt import AffineAdaptMethod, GradMixedBatchNorm, optimizer_hparams
from tta.registry import register_method


def class_confusion_loss(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The MCC loss ``L`` above: normalized off-diagonal class correlation of one batch.

    Dense outputs (N x K x H x W, segmentation) count every pixel as an example.
    """
    if logits.dim() > 2:
        logits = logits.movedim(1, -1).reshape(-1, logits.shape[1])
    batch, classes = logits.shape
    probs = (logits / temperature).softmax(1)
    with torch.no_grad():
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
        weight = 1.0 + torch.exp(-entropy)
        weight = batch * weight / weight.sum()
    correlation = (probs * weight[:, None]).t() @ probs
    correlation = correlation / correlation.sum(0, keepdim=True)
    return (correlation.sum() - correlation.trace()) / classes


@register_method("core")
class Core(AffineAdaptMethod):
    """Core (You et al. 2021): alpha-BN + class-correlation (MCC) loss on BN affine parameters."""

    requires_batchnorm = True

    hparams = {
        "alpha": HParam(0.1, "weight on the source statistics (1 = source, 0 = test batch only)", 0.0, 1.0,
                        search=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5)),
        "temperature": HParam(2.5, "softmax temperature T of the class-correlation loss", 1e-3, 100.0,
                              search=(1.0, 2.0, 2.5, 3.0)),
        **optimizer_hparams(lr=1e-3),
    }
    min_batch_for_step = 2

    def make_layer(self, bn):
        return GradMixedBatchNorm(bn, self.hp["alpha"])

    def loss(self, logits):
        return class_confusion_loss(logits, self.hp["temperature"])
