"""``cotta``: continual test-time adaptation with a mean teacher, augmented pseudo-labels and stochastic restore.

Wang, Fink, Van Gool & Dai, "Continual Test-Time Domain Adaptation" (CVPR 2022). Three copies of the
source model: the student ``f_theta`` (every weight and bias trains), the teacher ``f_theta'`` (an
exponential moving average of the student) and the frozen anchor ``f_theta0`` (the source model).
Per test batch ``x`` (B images):

    conf     = mean_i max_c softmax(f_theta0(x_i))_c                          (anchor confidence)
    y'       = 1/N sum_n f_theta'(aug_n(x))   if conf < p_th  (Eq. 4-5, N augmented views)
               f_theta'(x)                     otherwise
    L        = 1/B sum_i -sum_c softmax(y'_i)_c log softmax(f_theta(x_i))_c    (Eq. 6, consistency)
    theta    <- Adam step on L
    theta'   <- m theta' + (1 - m) theta                                       (Eq. 2, m = 0.999)
    theta    <- M * theta0 + (1 - M) * theta,  M ~ Bernoulli(p) per element    (Eq. 8-9, stochastic restore)

and the prediction returned is ``y'`` (the teacher's, made before this batch's updates), as the paper and
MD return. BatchNorm layers normalize with the statistics of the batch they see in all three models, as
MD (``configure_model`` drops the running statistics). ``symmetric=True`` is MD's ImageNet loss, the
mean of the two cross-entropies (``softmax_entropy_imagenet``).

**Batched views.** The N views of ``x`` (one random draw each for the whole batch, see
:func:`tta.methods.augmentations.cotta_augment`) are made in one batched pass (2.9x faster than MD's 32
torchvision calls on 200 CIFAR images, one thread). They go through the teacher ``views_per_call`` views
per call; each BatchNorm layer normalizes every view with that view's own statistics
(:class:`ViewBatchNorm`), which is what N separate calls of B images compute, as MD's loop. The default
is 1 view per call (PyTorch's fused BN kernel, MD's exact arithmetic): on CPU one call of 32 x 200
ResNet-20 images took 1.8x (grouped statistics) and 1.4x (even with pooled statistics) the time of 32
calls of 200 (activations of 6,400 images leave the caches); ``views_per_call=32`` is one call, for
accelerators.

**Randomness.** The views and the restore masks come from a CPU :class:`torch.Generator` the method owns:
seeded with the constructor's ``seed``, or ``torch.initial_seed()`` at setup (the run seed, which
``Run`` sets right before ``setup``); ``reset`` re-seeds it. The draws are made in MD's order (per view
the torchvision parameters, then per parameter ``rand(shape) < p``), so a generator seeded ``s`` draws
what MD draws from the global generator after ``torch.manual_seed(s)``.

Defaults (mariodoebler/test-time-adaptation, "MD", 8b2ed63): Adam, lr 1e-3, beta 0.9, 1 step, wd 0
(``classification/cfgs/cifar10_c/cotta.yaml`` lines 26-31; beta2 0.999 ``methods/base.py`` line 166);
``teacher_momentum`` 0.999 (``cotta.yaml`` line 33, ``conf.py`` line 149); ``restore`` p = 0.01 (``cotta.yaml``
line 35, ``conf.py`` line 167); ``threshold`` 0.92 (``cotta.yaml`` line 36, ``conf.py`` line 170; the
paper's CIFAR-10 value); ``augmentations`` 32 (``conf.py`` line 322 ``TEST.N_AUGMENTATIONS``); the
cross-entropy loss on CIFAR (``methods/cotta.py`` lines 40 and 131-133); the trained parameters are
every module's own ``weight`` and ``bias`` (``methods/cotta.py`` lines 110-128, ``base.py`` lines
147-160), also the restored ones (``methods/cotta.py`` lines 90-97). Comparison with MD:
``benchmarks/reference_md/results_cotta*.md``.

Batch size 1: the consistency loss of the one image is taken and every step runs; conv layers normalize
with the image's spatial statistics (each view's own in the teacher); a BatchNorm layer with one value
per channel refuses. MD instead buffers single images in a sliding window (``TEST.WINDOW_LENGTH``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tta.errors import UserError
from tta.hparams import HParam
from tta.methods.affine_adapt import OPTIMIZERS, _refuse_single_value, check_optimizer, optimizer_hparams
from tta.methods.augmentations import cotta_augment
from tta.methods.base import Method, all_finite
from tta.methods.losses import soft_cross_entropy, symmetric_cross_entropy
from tta.methods.norm_layers import StatsNorm, replace_batchnorms
from tta.methods.weight_averaging import ema_update_, frozen_copy
from tta.registry import register_method


class ViewBatchNorm(StatsNorm):
    """BatchNorm with the statistics of the batch it sees (gradients through them), per group of ``views``.

    ``views = 1``: PyTorch's training-mode kernel without running buffers (MD's BN with
    ``track_running_stats=False``). ``views = N``: the input is N equal consecutive chunks (views) and each
    chunk is normalized with its own biased mean and variance, as N separate calls would.
    """

    def __init__(self, bn: nn.Module) -> None:
        super().__init__(bn)
        self.views = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.views == 1:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        grouped = x.reshape(self.views, x.shape[0] // self.views, x.shape[1], -1)
        var, mean = torch.var_mean(grouped, dim=(1, 3), unbiased=False, keepdim=True)
        scale = torch.rsqrt(var + self.eps) * self.weight.view(1, 1, -1, 1)
        return ((grouped - mean) * scale + self.bias.view(1, 1, -1, 1)).view_as(x)


def weights_and_biases(model: nn.Module) -> list[torch.Tensor]:
    """Every module's own ``weight`` and ``bias`` parameters, in ``named_modules`` order (MD's collect_params)."""
    return [p for m in model.modules() for n, p in m.named_parameters(recurse=False)
            if n in ("weight", "bias")]


def consistency_loss(student: torch.Tensor, teacher: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """Per-row cross-entropy of the student's softmax against the teacher's (symmetric: mean of both ways)."""
    return symmetric_cross_entropy(student, teacher, 0.5) if symmetric else soft_cross_entropy(student, teacher)


@torch.no_grad()
def stochastic_restore_(params: list[torch.Tensor], source: list[torch.Tensor], p: float,
                        generator: torch.Generator) -> None:
    """``theta <- M * theta0 + (1 - M) * theta`` with ``M = (rand(shape) < p)`` per tensor, drawn in list order."""
    if p <= 0.0:
        return
    for param, param0 in zip(params, source, strict=True):
        mask = (torch.rand(param.shape, generator=generator) < p).float().to(param.device)
        param.copy_(param0 * mask + param * (1.0 - mask))


@register_method("cotta")
class CoTTA(Method):
    """CoTTA (Wang et al. 2022): EMA teacher, augmentation-averaged pseudo-labels, stochastic restore."""

    needs_grad = True
    hparams = {
        "teacher_momentum": HParam(0.999, "teacher EMA momentum m (theta' <- m theta' + (1 - m) theta)", 0.0, 1.0,
                           search=(0.99, 0.999, 0.9999)),
        "restore": HParam(0.01, "stochastic restore probability p per weight element", 0.0, 1.0,
                          search=(0.0, 0.001, 0.01, 0.1)),
        "threshold": HParam(0.92, "augment the teacher when the anchor's mean confidence is below this", 0.0, 1.0,
                            search=(0.0, 0.5, 0.72, 0.92, 1.0)),
        "augmentations": HParam(32, "augmented views averaged by the teacher", 1, 1024, search=(8, 16, 32)),
        "views_per_call": HParam(1, "augmented views per teacher call (each view keeps its own BN statistics)",
                                 1, 1024, search=(1, 8, 32)),
        "soft_augment": HParam(False, "the narrower ('soft') augmentation ranges", search=(False, True)),
        "noise_std": HParam(0.005, "std of the views' additive Gaussian noise", 0.0, 1.0),
        "symmetric": HParam(False, "symmetric cross-entropy (MD's ImageNet loss) instead of CE(teacher, student)",
                            search=(False, True)),
        **optimizer_hparams(lr=1e-3),
    }

    def __init__(self, seed: int | None = None, **overrides: Any) -> None:
        super().__init__(**overrides)
        check_optimizer(self.name, self.hp)
        #: seed of the views and restore masks; ``None``: ``torch.initial_seed()`` at setup (the run seed)
        self.seed = seed
        self.generator = torch.Generator()
        self._last_loss: torch.Tensor | None = None
        self.augmented_batches = 0

    def configure(self, model: nn.Module) -> None:
        for layer in replace_batchnorms(model, ViewBatchNorm):
            layer.register_forward_pre_hook(_refuse_single_value)
        self.params = weights_and_biases(model)
        if not self.params:
            raise UserError("method 'cotta' trains the model's weights and biases; the model has none")
        for p in self.params:
            p.requires_grad_(True)
        self.source = [p.detach().clone() for p in self.params]
        self.teacher = frozen_copy(model)
        self.anchor = frozen_copy(model)
        self.teacher_params = list(self.teacher.parameters())
        self.teacher_norms = [m for m in self.teacher.modules() if isinstance(m, ViewBatchNorm)]
        self.optimizer = OPTIMIZERS[self.hp["optimizer"]](self.params, self.hp)
        self.rng_seed = torch.initial_seed() if self.seed is None else self.seed
        self.generator.manual_seed(self.rng_seed)

    def touched_tensors(self) -> list[torch.Tensor]:
        return [*self.params, *self.teacher_params]

    def reset_state(self) -> None:
        self.optimizer = OPTIMIZERS[self.hp["optimizer"]](self.params, self.hp)
        self.generator.manual_seed(self.rng_seed)
        self._last_loss = None
        self.augmented_batches = 0

    @torch.no_grad()
    def teacher_prediction(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits: the mean over augmented views when the anchor is unsure, else on ``x``."""
        confidence = self.anchor(x).softmax(1).max(1).values.mean(0)
        if not confidence < self.hp["threshold"]:
            return self.teacher(x)
        self.augmented_batches += 1
        n, per_call, b = self.hp["augmentations"], self.hp["views_per_call"], x.shape[0]
        views = cotta_augment(x, n, self.generator, self.hp["soft_augment"], self.hp["noise_std"])
        logits = []
        try:
            for start in range(0, n, per_call):
                chunk = views[start * b:(start + per_call) * b]
                for layer in self.teacher_norms:
                    layer.views = chunk.shape[0] // b
                logits.append(self.teacher(chunk))
        finally:
            for layer in self.teacher_norms:
                layer.views = 1
        return torch.cat(logits).view(n, b, -1).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.hp["steps"]):
            with torch.enable_grad():
                logits = self.model(x)
                teacher = self.teacher_prediction(x)
                loss = consistency_loss(logits, teacher, self.hp["symmetric"]).mean(0)
                loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            ema_update_(self.teacher_params, self.model.parameters(), self.hp["teacher_momentum"])
            stochastic_restore_(self.params, self.source, self.hp["restore"], self.generator)
        self._last_loss = loss.detach()
        return teacher

    def diverged(self) -> bool:
        tensors = self.touched_tensors() + ([] if self._last_loss is None else [self._last_loss])
        return not all_finite(tensors)

    def row_extra(self) -> dict[str, Any]:
        return {"augmented_batches": self.augmented_batches}
