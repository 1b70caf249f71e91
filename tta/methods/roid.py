"""``roid``: certainty- and diversity-weighted soft likelihood ratio, weight ensembling, prior correction.

Marsden, Döbler & Yang, "Universal Test-time Adaptation through Weight Ensembling, Diversity
Weighting, and Prior Correction" (WACV 2024). Per test batch ``x`` of ``B`` images, logits
``z = f(x)`` (BatchNorm layers normalize with the test batch's statistics) and ``p = softmax(z)``:

* **soft likelihood ratio** (Sec. 3.1): ``SLR_i = -sum_c p'_ic log(p'_ic / (1 - p'_ic) + 1e-5)``
  with ``p' = clamp(p, 0, 0.99)``;
* **weights** (Sec. 3.2), without gradient: diversity ``d_i = 1 - cos(p_bar, p_i)`` against the
  moving average ``p_bar`` of the batches' mean predictions, certainty ``c_i = -H(p_i)``, both
  min-max normalized over the batch (``(v - min) / (max - min)``); an image whose ``d_i`` is below
  the batch mean of ``d`` is dropped (weight 0), the others weigh ``w_i = exp(d_i c_i / T)``; then
  ``p_bar <- m_p p_bar + (1 - m_p) mean_i p_i`` (``p_bar`` starts uniform);
* **loss**: ``L = 1/B sum_{i kept} w_i SLR_i + 1/B sum_{i kept} w_i SCE(f(aug(x_i)), z_i)`` where the
  second (consistency) term, on by default, is the symmetric cross-entropy
  ``SCE(a, z) = -1/2 sum_c softmax(z)_c log_softmax(a)_c - 1/2 sum_c softmax(a)_c log_softmax(z)_c``
  between a random view of the kept images and their logits (gradients through both sides);
  one optimizer step on the affine parameters of every normalization layer (BN, GN, LN);
* **weight ensembling** (Sec. 3.3): after the step ``theta <- m_s theta + (1 - m_s) theta_source``
  on the trained parameters (:func:`tta.methods.weight_averaging.ema_update_`);
* **prior correction** (Sec. 3.4) of the returned output: ``pi = mean_i p_i`` (the pre-step
  forward), ``s = max(1/B, 1/C) / max_c pi_c``, ``pi' = (pi + s) / (1 + C s)``, output ``z_i * pi'``.
  As MD, the correction multiplies the *logits* elementwise (``roid.py`` line 121), not the
  probabilities of the paper's Eq. 9; the logits returned are those of the forward before the step.

The random view (``aug``) is MD's ``get_tta_transforms(img_size, padding_mode="reflect",
cotta_augs=False)``: clip, CoTTA's colour jitter (5 operations in a random order), reflect
padding by H/2, random affine (+-15 degrees, translation up to 1/16 of the padded side, scale
[0.9, 1.1], bilinear), centre crop, horizontal flip with probability 1/2, clip; no blur, no noise.
:func:`roid_view` draws its parameters from a generator the method owns, in torchvision's order, so
a generator seeded ``s`` gives the views MD draws after ``torch.manual_seed(s)`` (equal in exact
arithmetic; the fused sampling differs from torchvision in the last bits). The seed is the
constructor argument ``seed``, else ``torch.initial_seed()`` at ``setup`` (the run seed); ``reset``
re-seeds it.

Defaults, mariodoebler/test-time-adaptation (MD) at commit 8b2ed63: ``classification/conf.py``
lines 265-270 (``ROID.USE_WEIGHTING`` True, ``USE_PRIOR_CORRECTION`` True, ``USE_CONSISTENCY`` True,
``MOMENTUM_SRC`` 0.99, ``MOMENTUM_PROBS`` 0.9, ``TEMPERATURE`` 1/3); ``cfgs/cifar10_c/roid.yaml``
lines 26-31 (Adam, 1 step, beta 0.9, lr 1e-3, wd 0; batch 200 at line 5); Adam's second beta 0.999
(``methods/base.py`` line 166). The losses are MD's ``SoftLikelihoodRatio`` (clip 0.99, eps 1e-5)
and ``SymmetricCrossEntropy`` (alpha 0.5), ``utils/losses.py`` lines 13-41; the step order is
``methods/roid.py`` lines 57-123. What trains: MD's ``configure_model`` (lines 147-163) turns on
gradients of whole BN/GN/LN modules and ``collect_params`` (131-145) keeps their ``weight`` and
``bias``, so only normalization affine parameters train (1,376 on ResNet-20), and the ensembling
(``utils/misc.py`` lines 8-13) touches exactly the parameters that require gradients.
``benchmarks/reference_md/results_roid*.md``: tta against MD.

Differences from MD, by design: the loss is divided by the batch's size, MD by the configured
``TEST.BATCH_SIZE`` (equal on full batches); with ``use_weighting`` off every image is kept with
weight 1 (MD then fails when the consistency term is on: its mask is undefined).

Batch size 1: the min-max normalization of the weights needs two images, so a batch of one is
predicted without a step (model, ``p_bar`` and optimizer unchanged), with the prior correction
(``s = 1 / max_c p_c``). A batch whose weights are all equal (identical images) gives a NaN loss,
which :meth:`diverged` reports (the runner then resets).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tta.hparams import HParam
from tta.methods.affine_adapt import AffineAdaptMethod, GradTestBatchNorm, optimizer_hparams
from tta.methods.augmentations import COTTA_JITTER, _colour_op, _uniform
from tta.methods.base import all_finite
from tta.methods.losses import symmetric_cross_entropy
from tta.methods.tent import softmax_entropy
from tta.methods.weight_averaging import ema_update_
from tta.registry import register_method


def soft_likelihood_ratio(logits: torch.Tensor, clip: float = 0.99, eps: float = 1e-5) -> torch.Tensor:
    """Per-example ``-sum_c p_c log(p_c / (1 - p_c) + eps)``, ``p = clamp(softmax(logits), 0, clip)``."""
    probs = logits.softmax(1).clamp(0.0, clip)
    return -(probs * torch.log(probs / (torch.ones_like(probs) - probs) + eps)).sum(1)


@torch.no_grad()
def roid_weights(logits: torch.Tensor, class_probs: torch.Tensor, temperature: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights, dropped)``: ROID's certainty x diversity weights of a batch (0 where dropped) and the mask of
    images whose normalized diversity is below the batch mean."""
    diversity = 1 - F.cosine_similarity(class_probs.unsqueeze(0), logits.softmax(1), dim=1)
    diversity = (diversity - diversity.min()) / (diversity.max() - diversity.min())
    dropped = diversity < diversity.mean()
    certainty = -softmax_entropy(logits)
    certainty = (certainty - certainty.min()) / (certainty.max() - certainty.min())
    weights = torch.exp(diversity * certainty / temperature)
    weights[dropped] = 0.0
    return weights, dropped


@torch.no_grad()
def prior_correction(logits: torch.Tensor) -> torch.Tensor:
    """``logits * (pi + s) / (1 + C s)``, ``pi`` the batch's mean softmax, ``s = max(1/B, 1/C) / max(pi)``."""
    batch, classes = logits.shape
    prior = logits.softmax(1).mean(0)
    smooth = max(1 / batch, 1 / classes) / torch.max(prior)
    return logits * ((prior + smooth) / (1 + smooth * classes))


def roid_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random view of the batch ``x`` (B, 3, H, W) in [0, 1], ONE parameter draw for the batch (see module doc).

    Draw order (torchvision's): ``randperm(5)``, the five colour factors in that order, angle, tx, ty, scale,
    flip. Geometry: reflect padding by ``int(H/2)``, affine about the padded image's centre and the centre
    crop equal sampling the original image at the same centred coordinates with reflection at the pixel
    centres of its border (``grid_sample(..., padding_mode="reflection", align_corners=True)``).
    """
    b, c, h, w = x.shape
    if c != 3:
        raise ValueError(f"roid_view: RGB images expected, got {c} channels")
    order = torch.randperm(5, generator=generator).tolist()
    factors = [0.0] * 5
    for op in order:
        factors[op] = _uniform(*COTTA_JITTER[op], generator)
    pad_w, pad_h = w + 2 * int(w / 2), h + 2 * int(h / 2)
    angle = _uniform(-15.0, 15.0, generator)
    tx = int(round(_uniform(-pad_w / 16, pad_w / 16, generator)))
    ty = int(round(_uniform(-pad_h / 16, pad_h / 16, generator)))
    scale = _uniform(0.9, 1.1, generator)
    flip = bool(torch.rand(1, generator=generator) < 0.5)

    y = x.clamp(0.0, 1.0)
    for op in order:
        y = _colour_op(op, y, torch.full((b,), factors[op], dtype=x.dtype, device=x.device))
    rot = math.radians(angle)
    m = [math.cos(rot) / scale, math.sin(rot) / scale, -math.sin(rot) / scale, math.cos(rot) / scale]
    shift = (m[0] * -tx + m[1] * -ty, m[2] * -tx + m[3] * -ty)
    us = torch.arange(w, dtype=x.dtype, device=x.device) - (w - 1) / 2  # centred output columns
    vs = torch.arange(h, dtype=x.dtype, device=x.device) - (h - 1) / 2
    if flip:
        us = -us
    v, u = torch.meshgrid(vs, us, indexing="ij")
    src_x = m[0] * u + m[1] * v + shift[0]
    src_y = m[2] * u + m[3] * v + shift[1]
    grid = torch.stack((src_x / ((w - 1) / 2), src_y / ((h - 1) / 2)), -1).unsqueeze(0).expand(b, h, w, 2)
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    return y.clamp(0.0, 1.0)


def roid_hparams() -> dict[str, HParam]:
    """ROID's loss, weighting and prior-correction hyperparameters (MD ``conf.py`` lines 265-270)."""
    return {
        "use_weighting": HParam(True, "certainty x diversity weights and dropping of low-diversity images"),
        "use_consistency": HParam(True, "symmetric cross-entropy against a random view of the kept images"),
        "use_prior_correction": HParam(True, "multiply the returned logits by the smoothed batch prior"),
        "momentum_probs": HParam(0.9, "momentum of the moving average of mean predictions (diversity)", 0.0, 1.0,
                                 search=(0.8, 0.9, 0.95)),
        "temperature": HParam(1 / 3, "temperature T of the weights exp(d c / T)", 1e-3, 100.0,
                              search=(0.25, 1 / 3, 0.5, 1.0)),
        **optimizer_hparams(lr=1e-3),
    }


class WeightedSLRMethod(AffineAdaptMethod):
    """ROID's loss and prior correction on normalization affine parameters; subclasses define the averaging
    step that follows each optimizer step (:meth:`average`)."""

    compilable = False  # the consistency view goes through the model on a batch-dependent subset
    min_batch_for_step = 2

    def __init__(self, seed: int | None = None, **overrides: Any) -> None:
        super().__init__(**overrides)
        #: seed of the views; ``None``: ``torch.initial_seed()`` at setup (the run seed)
        self.seed = seed
        self.generator = torch.Generator()
        self.class_probs: torch.Tensor | None = None  # p_bar; uniform at the first batch (its class count)

    def make_layer(self, bn):
        return GradTestBatchNorm(bn)

    def configure(self, model: nn.Module) -> None:
        super().configure(model)
        self.source = [p.detach().clone() for p in self.params]
        self.view_seed = torch.initial_seed() if self.seed is None else self.seed
        self.generator.manual_seed(self.view_seed)

    def reset_state(self) -> None:
        super().reset_state()
        self.generator.manual_seed(self.view_seed)
        self.class_probs = None

    def average(self) -> None:
        """The weight-averaging step after each optimizer step."""
        raise NotImplementedError

    def weighted_loss(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """ROID's loss of the batch (updates ``p_bar``), in MD's order of operations."""
        batch = x.shape[0]
        if self.class_probs is None:
            self.class_probs = torch.full((logits.shape[1],), 1 / logits.shape[1], device=logits.device)
        if self.hp["use_weighting"]:
            weights, dropped = roid_weights(logits, self.class_probs, self.hp["temperature"])
            with torch.no_grad():
                m = self.hp["momentum_probs"]
                self.class_probs = m * self.class_probs + (1 - m) * logits.softmax(1).mean(0)
            loss = (soft_likelihood_ratio(logits) * weights)[~dropped].sum() / batch
        else:
            weights = torch.ones(batch, device=logits.device)
            dropped = torch.zeros(batch, dtype=torch.bool, device=logits.device)
            loss = soft_likelihood_ratio(logits).sum() / batch
        if self.hp["use_consistency"]:
            view_logits = self.model(roid_view(x[~dropped], self.generator))
            loss = loss + (symmetric_cross_entropy(view_logits, logits[~dropped]) * weights[~dropped]).sum() / batch
        return loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < self.min_batch_for_step:
            with torch.no_grad():
                logits = self.model(x)
        else:
            with torch.enable_grad():
                for _ in range(self.hp["steps"]):
                    logits = self.model(x)
                    loss = self.weighted_loss(x, logits)
                    loss.backward()
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.average()
            self._last_loss = loss.detach()
            logits = logits.detach()
        return prior_correction(logits) if self.hp["use_prior_correction"] else logits

    def diverged(self) -> bool:
        extra = [t for t in (self._last_loss, self.class_probs) if t is not None]
        return not all_finite([*self.params, *extra])


@register_method("roid")
class ROID(WeightedSLRMethod):
    """ROID (Marsden et al. 2024): weighted soft likelihood ratio + consistency, ensembling with the source, prior correction."""

    hparams = {
        **roid_hparams(),
        "momentum_src": HParam(0.99, "weight ensembling: theta <- m theta + (1 - m) theta_source", 0.0, 1.0,
                               search=(0.9, 0.99, 0.999)),
    }

    def average(self) -> None:
        ema_update_(self.params, self.source, self.hp["momentum_src"])
