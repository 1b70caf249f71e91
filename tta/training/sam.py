"""``sam``: Sharpness-Aware Minimization (Foret et al., ICLR 2021), optionally adaptive (ASAM).

SAM minimizes ``max_{||e||_2 <= rho} L(w + e)`` with the first-order solution

    g   = grad L(w)
    e   = rho * g / ||g||_2                                   (SAM)
    e   = rho * T^2 g / ||T g||_2,  T = |w| + eta (elementwise)  (ASAM, Kwon et al., ICML 2021)
    w  <- base_optimizer_step(w, grad L(w + e))

i.e. two forward/backward passes per step: the gradient at the perturbed weights
``w + e`` updates the unperturbed ``w`` (restored exactly from a copy, not by subtracting
``e``). BatchNorm running statistics are updated by the first pass only; the second pass
restores them (:func:`tta.training.base.bn_statistics_kept`). ``||g||`` is the norm over
all trainable parameters together. Defaults: ``rho = 0.05`` (the paper's), ASAM off; the
ASAM paper pairs ``adaptive`` with a larger ``rho`` (0.5 to 2) and ``eta = 0.01``.

The ascent and the perturbed pass are :mod:`tta.sharpness`, shared with the test-time
method ``sar`` (:mod:`tta.methods.sar`).
"""

from __future__ import annotations

import torch

from tta import sharpness
from tta.hparams import HParam
from tta.registry import register_training_method
from tta.training.base import OPTIMIZER_HPARAMS, TrainingMethod, bn_statistics_kept, cross_entropy, gradients

SAM_HPARAMS = {
    "rho": HParam(0.05, "radius of the weight perturbation", 0.0, None, search=(0.01, 0.02, 0.05, 0.1, 0.2)),
    "adaptive": HParam(False, "ASAM: scale the perturbation by |w| + eta (Kwon et al. 2021)", search=(False,)),
    "eta": HParam(0.01, "ASAM's offset in T = |w| + eta", 0.0, None, search=(0.01,)),
}


@register_training_method("sam")
class SAM(TrainingMethod):
    """SAM (Foret et al. 2021): descend with the gradient at w + rho * g/||g|| (ASAM optional)."""

    hparams = {**OPTIMIZER_HPARAMS, **SAM_HPARAMS}

    def step(self, x, y):
        loss = cross_entropy(self.model(x), y)
        grads = gradients(loss, self.params)
        with bn_statistics_kept(self.model):
            sharp_loss = self.perturbed_backward(grads, lambda: cross_entropy(self.model(x), y))
        self.optimizer.step()
        return {"loss": loss.item(), "sharp_loss": sharp_loss.item()}

    def ascent(self, grads: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """The perturbation ``e`` for gradients ``grads`` (one tensor per trainable parameter)."""
        scale = [p.detach().abs() + self.hp["eta"] for p in self.params] if self.hp["adaptive"] else None
        return sharpness.ascent(grads, self.hp["rho"], scale)

    def perturbed_backward(self, grads, loss_fn) -> torch.Tensor:
        """Set ``.grad`` to the gradient of ``loss_fn()`` at ``w + ascent(grads)``; restore ``w``; return the loss."""
        return sharpness.perturbed_backward(self.params, self.ascent(grads), loss_fn)
