"""``rpl``: robust pseudo-labeling, generalized cross-entropy on the model's own hard predictions.

Rusak, Schneider, Pachitariu, Eck, Gehler, Bringmann, Brendel & Bethge, "If your data
distribution shifts, use self-learning" (TMLR 2022), robust pseudo-labeling (RPL): the
pseudo-label of each test image is the current model's arg-max, and the loss is the
generalized cross-entropy of Zhang & Sabuncu (NeurIPS 2018) against it,

    y_i = argmax_c z_ic,   p_i = softmax(z_i),   L = 1/B sum_i (1 - p_{i,y_i}^q) / q,   q = 0.8

(q -> 0 is the cross-entropy, q = 1 the linear ``1 - p_y``; the pseudo-label itself carries no
gradient). As Tent, BatchNorm layers normalize with the test batch's statistics, the affine
parameters of every normalization layer (BN, GroupNorm, LayerNorm) train, one step per batch,
and the logits returned are those of the forward pass the loss is taken on (before the step).

Defaults, mariodoebler/test-time-adaptation (MD) at commit 8b2ed63:
``classification/cfgs/cifar10_c/rpl.yaml`` lines 26-31 (Adam, 1 step, beta 0.9, lr 1e-3, wd 0;
batch 200 at line 5); ``classification/conf.py`` line 260 (``RPL.Q = 0.8``, the paper's value);
Adam's second beta 0.999 is fixed in ``classification/methods/base.py`` line 166. The loss is
MD's ``GeneralizedCrossEntropy`` (``classification/utils/losses.py`` lines 44-55) on the logits'
arg-max (``classification/methods/rpl.py`` lines 20-25), the parameters those of BN, LN and GN
(``methods/rpl.py`` lines 43-59). ``benchmarks/reference_md/results_rpl*.md``: tta against MD.

Batch size 1: the loss of the single image (its own arg-max as label) still has a gradient;
conv layers normalize with its spatial statistics and a layer with one value per channel
refuses (see :mod:`tta.methods.affine_adapt`).
"""

from __future__ import annotations

import torch

from tta.hparams import HParam
from tta.methods.affine_adapt import AffineAdaptMethod, GradTestBatchNorm, optimizer_hparams
from tta.registry import register_method


def generalized_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, q: float) -> torch.Tensor:
    """Per-example ``(1 - p_y^q) / q`` with ``p = softmax(logits)`` and ``y = targets`` (Zhang & Sabuncu 2018)."""
    p_target = logits.softmax(1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return (1.0 - p_target ** q) / q


@register_method("rpl")
class RPL(AffineAdaptMethod):
    """RPL (Rusak et al. 2022): generalized cross-entropy (q = 0.8) on hard pseudo-labels, normalization affine."""

    hparams = {
        "q": HParam(0.8, "GCE exponent q (towards 0: cross-entropy; 1: 1 - p_y)", 1e-3, 1.0,
                    search=(0.5, 0.7, 0.8, 0.9)),
        **optimizer_hparams(lr=1e-3),
    }

    def make_layer(self, bn):
        return GradTestBatchNorm(bn)

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        return generalized_cross_entropy(logits, logits.argmax(1), self.hp["q"]).mean()
