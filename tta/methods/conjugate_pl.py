"""``conjugate_pl``: test-time adaptation with the conjugate pseudo-label loss of a cross-entropy source.

Goyal, Sun, Raghunathan & Kolter, "Test-Time Adaptation via Conjugate Pseudo-labels" (NeurIPS
2022). For a source trained with a loss of the form ``L(h, y) = f(h) - y^T h`` the conjugate
adaptation loss is the source loss at its conjugate pseudo-label ``y* = grad f(h)``:

    L_conj(h) = f(h) - grad f(h)^T h.

For the cross-entropy, ``f = logsumexp`` and ``y* = softmax(h)``; with the temperature ``T`` of the
paper (``h = z / T``, ``z`` the logits)

    L = 1/B sum_i [ logsumexp(z_i / T) - softmax(z_i / T)^T (z_i / T) ],

which equals the softmax entropy of ``z / T`` (Tent's loss at T = 1). The gradient flows through
the pseudo-label too, as in the authors' code (no detach). Only the normalization affine
parameters train (BN layers with test-batch statistics), one step per batch.

**Prediction after the step** (``predict_after_step``, default on): the authors' evaluation
forwards the batch again after the update and scores that second forward; so does this method
(one extra forward without gradient). ``--hp predict_after_step=false`` returns the logits the
loss was taken on (Tent's convention) and saves that forward.

Defaults, locuslab/tta_conjugate at commit 52c7e05 (the authors' code):
``cfgs/cifar.yaml`` lines 38-44 (SGD, 1 step, lr 1e-3, ``OPTIM.TEMP 1.0``; batch 200 at line 8);
``conf.py`` lines 92-101 (momentum 0.9, dampening 0, Nesterov on, weight decay 0) and line 45
(``MODEL.EPS 0.``: a cross-entropy source; the yaml's ``EPS 6.0`` is for their PolyLoss model,
whose conjugate loss this method does not implement). The loss: ``cifar_tta_test.py`` lines
146-185 (``OPTIM.ADAPT conjugate``; with ``eps = 0`` its linear solve is the identity); BN
affine of ``BatchNorm2d`` only with batch statistics (``tent.py`` lines 261-277 and 310-325,
called at ``cifar_tta_test.py`` lines 125-130); prediction after the step, line 192; a fresh copy
of the source model per corruption (episodic), lines 214-216. GroupNorm/LayerNorm models: their
affine parameters train too (tta's normalization-agnostic recipe, :mod:`tta.methods.affine_adapt`).
``benchmarks/reference_conjugate/``: tta against the authors' code, side by side.

Batch size 1: the loss of the single image has a gradient; conv layers normalize with its
spatial statistics and a layer with one value per channel refuses (see
:mod:`tta.methods.affine_adapt`).
"""

from __future__ import annotations

import torch

from tta.hparams import HParam
from tta.methods.affine_adapt import (OPTIMIZERS, AffineAdaptMethod, GradTestBatchNorm, nesterov_hparam,
                                      optimizer_hparams)
from tta.registry import register_method


def conjugate_ce_loss(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-example ``logsumexp(h) - softmax(h)^T h`` with ``h = logits / temperature``."""
    h = logits / temperature
    pseudo_label = h.softmax(1)  # built before the logsumexp: autograd then sums h's three gradient
    return h.logsumexp(1) - (pseudo_label * h).sum(1)  # terms in the authors' order (bit-identical steps)


@register_method("conjugate_pl")
class ConjugatePL(AffineAdaptMethod):
    """Conjugate PL (Goyal et al. 2022): conjugate loss of the cross-entropy with temperature, SGD-Nesterov."""

    hparams = {
        "temperature": HParam(1.0, "temperature T of the loss (h = logits / T)", 0.01, 100.0,
                              search=(0.5, 1.0, 1.5, 2.0, 3.0)),
        "predict_after_step": HParam(True, "return the logits of a second forward after the step (the authors')",
                                     search=(True, False)),
        **optimizer_hparams(lr=1e-3),
        "optimizer": HParam("sgd", f"optimizer of the affine parameters: {', '.join(OPTIMIZERS)}",
                            search=tuple(OPTIMIZERS)),
        **nesterov_hparam(True),
    }

    def make_layer(self, bn):
        return GradTestBatchNorm(bn)

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        return conjugate_ce_loss(logits, self.hp["temperature"]).mean()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        if not self.hp["predict_after_step"]:
            return logits
        with torch.no_grad():
            return self.model(x)
