"""``memo``: marginal entropy minimization over AugMix views of each single test point, episodic per image.

Zhang, Levine & Finn, "MEMO: Test Time Robustness via Adaptation and Augmentation" (NeurIPS 2022). For
every test image ``x``, starting from the source weights ``theta0`` each time (Algorithm 1):

    x_1..x_B  = B AugMix views of x                                      (B = 32)
    p_bar     = 1/B sum_b softmax(f_theta(x_b))                          (Eq. 1, the marginal over views)
    L(theta)  = H(p_bar) = -sum_c p_bar_c log p_bar_c                    (Eq. 2, marginal entropy)
    theta    <- one SGD step on L from theta0
    y         = f_theta(x)                                               (the prediction after the update)

``log p_bar`` is computed in log space, ``logsumexp_b(log_softmax(f(x_b))) - log B`` (clamped at the
dtype's lowest finite value), as MD's ``marginal_entropy``. Every module's own ``weight`` and ``bias``
train (MD's ``collect_params``). The B views go through the model in ONE call (as MD, which concatenates
them); the views themselves are made by :func:`tta.methods.augmentations.augmix_views` with PIL's 8-bit
operations, as MD. A batch of several images is that many independent episodes, image after image (the
reference's setting is batch size 1): the result does not depend on the batch size. This is the slowest
method of the suite: B + 1 forward passes and B backward passes per image.

**BatchNorm** (MD's ``AlphaBatchNorm`` with ``BN.ALPHA`` 0.1, ``methods/memo.py`` line 54, ``methods/bn.py``
lines 29-80): every BN layer normalizes with ``alpha * source + (1 - alpha) * test`` statistics, ``alpha = 0.9``
on the source (tta's convention, :mod:`tta.methods.alpha_bn`), where the test statistics are the mean and
the *unbiased* variance of the input the layer sees (all B views together during the step; the one image's
spatial positions at the prediction) and no gradient flows through them (MD keeps them in buffers of a
train-mode BatchNorm with momentum 1).

**Randomness.** Crop offsets and flips come from a CPU :class:`torch.Generator`, AugMix's mixing weights and
operations from a :class:`numpy.random.RandomState`, both owned by the method and seeded with the constructor's
``seed`` or ``torch.initial_seed()`` at setup (the run seed); ``reset`` re-seeds both. Seeded ``s`` they draw
what MD draws from the global generators after ``torch.manual_seed(s)`` and ``np.random.seed(s)``.

Defaults (mariodoebler/test-time-adaptation 8b2ed63, ``classification/cfgs/cifar10_c/memo.yaml``): SGD
(line 30), lr 0.005 (line 33), 1 step (line 31), wd 0 (line 34), 32 views (line 8), episodic at batch size
1 (lines 4, 6); momentum 0.9 and Nesterov (``conf.py`` lines 134 and 140; with one step from a fresh
optimizer the update is ``lr * (1 + momentum) * grad``); BN alpha (``conf.py`` line 116, 0.1 on the test
statistics = 0.9 here); AugMix severity 1 (``transforms_augmix.py`` line 44). Comparison with MD:
``benchmarks/reference_md/results_memo*.md``.

Batch size 1: the reference's setting (see above). A BatchNorm layer that would see one value per channel
(no spatial extent) refuses, since the unbiased variance of one value is undefined.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from tta.errors import UserError
from tta.hparams import HParam
from tta.methods.affine_adapt import OPTIMIZERS, _refuse_single_value, check_optimizer, nesterov_hparam, optimizer_hparams
from tta.methods.augmentations import augmix_views
from tta.methods.base import Method, all_finite
from tta.methods.cotta import weights_and_biases
from tta.methods.norm_layers import StatsNorm, replace_batchnorms
from tta.registry import register_method


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``H(1/B sum_b softmax(logits_b))`` of the (B, C) logits of B views of one image, in log space."""
    log_p = logits - logits.logsumexp(dim=-1, keepdim=True)
    log_mean = log_p.logsumexp(dim=0) - math.log(logits.shape[0])
    log_mean = torch.clamp(log_mean, min=torch.finfo(log_mean.dtype).min)
    return -(log_mean * torch.exp(log_mean)).sum(dim=-1)


class PriorBatchNorm(StatsNorm):
    """BN with ``alpha * source + (1 - alpha) * test`` statistics; test: mean and unbiased variance, no gradient."""

    def __init__(self, bn: nn.Module, alpha: float) -> None:
        super().__init__(bn)
        self.alpha = alpha

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            mean = torch.zeros(self.num_features, dtype=x.dtype, device=x.device)
            var = torch.ones(self.num_features, dtype=x.dtype, device=x.device)
            # PyTorch's BN statistics kernel with momentum 1: mean and unbiased variance, as MD's buffers
            torch.batch_norm_update_stats(x.detach(), mean, var, 1.0)
        return (self.alpha * self.running_mean + (1 - self.alpha) * mean,
                self.alpha * self.running_var + (1 - self.alpha) * var)


@register_method("memo")
class MEMO(Method):
    """MEMO (Zhang et al. 2022): per image, one step on the marginal entropy of 32 AugMix views, then predict."""

    needs_grad = True
    hparams = {
        "augmentations": HParam(32, "AugMix views B per test image", 2, 1024, search=(8, 16, 32, 64)),
        "bn_alpha": HParam(0.9, "BN statistics: weight on the source (1 = source statistics only)", 0.0, 1.0,
                           search=(0.8, 0.9, 0.95, 1.0)),
        "severity": HParam(1.0, "AugMix operation severity (levels ~ uniform(0.1, severity))", 0.1, 10.0,
                           search=(1.0, 3.0)),
        **optimizer_hparams(lr=0.005),
        "optimizer": HParam("sgd", f"optimizer of the weights and biases: {', '.join(OPTIMIZERS)}",
                            search=tuple(OPTIMIZERS)),
        **nesterov_hparam(True),
    }
    hparams["lr"] = HParam(0.005, "learning rate", 0.0, 10.0, search=(1e-4, 1e-3, 2.5e-3, 5e-3, 1e-2))

    def __init__(self, seed: int | None = None, **overrides: Any) -> None:
        super().__init__(**overrides)
        check_optimizer(self.name, self.hp)
        #: seed of the views' draws; ``None``: ``torch.initial_seed()`` at setup (the run seed)
        self.seed = seed
        self.generator = torch.Generator()
        self.rng = np.random.RandomState(0)
        self._last_loss: torch.Tensor | None = None

    def configure(self, model: nn.Module) -> None:
        for layer in replace_batchnorms(model, lambda bn: PriorBatchNorm(bn, self.hp["bn_alpha"])):
            layer.register_forward_pre_hook(_refuse_single_value)
        self.params = weights_and_biases(model)
        if not self.params:
            raise UserError("method 'memo' trains the model's weights and biases; the model has none")
        for p in self.params:
            p.requires_grad_(True)
        self.rng_seed = torch.initial_seed() if self.seed is None else self.seed
        self._seed_generators()

    def _seed_generators(self) -> None:
        self.generator.manual_seed(self.rng_seed)
        self.rng.seed(self.rng_seed % 2**32)

    def touched_tensors(self) -> list[torch.Tensor]:
        return self.params

    def reset_state(self) -> None:
        self._seed_generators()
        self._last_loss = None

    def restore_source(self) -> None:
        """The weights back to the setup snapshot: each test image starts from the source model."""
        with torch.no_grad():
            for tensor, saved in zip(self._touched, self._snapshot):
                tensor.copy_(saved)

    def adapt_and_predict(self, image: torch.Tensor) -> torch.Tensor:
        """One episode: source weights, ``steps`` steps on the marginal entropy of the views, logits (1, C)."""
        self.restore_source()
        optimizer = OPTIMIZERS[self.hp["optimizer"]](self.params, self.hp)
        views = augmix_views(image, self.hp["augmentations"], self.generator, self.rng, self.hp["severity"])
        views = views.to(dtype=image.dtype)
        for _ in range(self.hp["steps"]):
            with torch.enable_grad():
                loss = marginal_entropy(self.model(views))
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self._last_loss = loss.detach()
        with torch.no_grad():
            return self.model(image.unsqueeze(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.adapt_and_predict(image) for image in x])

    def diverged(self) -> bool:
        tensors = self.params if self._last_loss is None else [*self.params, self._last_loss]
        return not all_finite(tensors)

