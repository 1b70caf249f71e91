"""``udim``: Unknown Domain Inconsistency Minimization (Shin et al., ICLR 2024).

SAM on the source data plus a penalty on the inconsistency between the loss landscape of
the source inputs and of worst-case perturbed inputs standing in for unknown domains. The
paper's objective is ``min_w max_{||e||<=rho} L_S(w + e) + lambda * max_{x~} [L_{x~}(w + e) -
L_S(w + e)]``; the authors' code (aailabkaist/UDIM, ``IADA_FINAL``), which this follows,
realizes one step as:

1. **What is perturbed: the input images, once per step.** With ``x`` the pooled source
   minibatch, ``g = grad_w CE(f_w(x), y)`` and the SAM-perturbed objective
   ``J(x) = CE(f_w(x), y) + rho * ||g(x)||_2`` (second order, through ``create_graph``)::

       x~ = x + input_step * normalize_0(grad_x J(x))

   where ``normalize_0`` scales the gradient to unit L2 norm *along the batch axis* at
   every pixel (``F.normalize(dim=0)``, as the official code does). ``x~`` is not clipped.
   ``input_step`` is in [0, 1] image units here (tta models normalize internally); the
   official PACS script's ``syn_lr = 10`` in ImageNet-normalized units is about 2.25.
2. **SAM gradient on the source inputs**: ``e = rho * g / ||g||``,
   ``g_sam = grad_w CE(f_{w+e}(x), y)`` (weights restored exactly afterwards).
3. **Inconsistency loss** on the concatenated batch ``[x; x~]`` (labels ``[y; y]``), from
   the per-example gradients of the output layer (weights ``W``, bias ``b``), in closed
   form ``G_i = [(p_i - onehot(y_i)) z_i^T, p_i - onehot(y_i)]`` with ``p_i`` the softmax
   and ``z_i`` the features::

       v_S, v_~ = per-element variance over the batch of G on x and on x~
       L_inc = 1/2 sum_{h in {S, ~}} mean_j (v_h,j - (v_S,j + v_~,j)/2)^2        (Fishr-style)
             + sum_{theta in {W, b}} mean_{i in x~} ||G_i,theta||^2 / dim(theta)   (gradient norm on x~)

   (the official code centres the perturbed half's variance on the *source* mean; here
   each half is centred on its own mean, the usual variance.)
4. **Update**: ``w <- base_optimizer_step(w, g_sam + inconsistency_weight * grad_w L_inc)``.

The first ``warmup_fraction`` of the run's steps are plain SAM steps (official: the first
``1 / sam_warm_up_ratio = 1/5``). BatchNorm running statistics see only the first pass
of every step. Defaults from the official PACS script: ``rho = 0.05``,
``inconsistency_weight`` (``worst_weight``) 1, warm-up 1/5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tta.hparams import HParam
from tta.registry import register_training_method
from tta.training.base import OPTIMIZER_HPARAMS, bn_statistics_kept, cross_entropy, gradients
from tta.training.sam import SAM, SAM_HPARAMS


@register_training_method("udim")
class UDIM(SAM):
    """UDIM (Shin et al. 2024): SAM + gradient-variance inconsistency between x and worst-case perturbed x~."""

    hparams = {
        **OPTIMIZER_HPARAMS, **SAM_HPARAMS,
        "input_step": HParam(2.25, "step of the input perturbation (in [0, 1] image units)", 0.0, None,
                             search=(0.5, 1.0, 2.25, 5.0)),
        "inconsistency_weight": HParam(1.0, "weight of the inconsistency gradient", 0.0, None,
                                       search=(0.1, 0.5, 1.0, 2.0)),
        "warmup_fraction": HParam(0.2, "fraction of the steps done as plain SAM first", 0.0, 1.0, search=(0.2, 0.33)),
    }

    def step(self, x, y):
        if self.steps_done < self.hp["warmup_fraction"] * self.total_steps:
            return super().step(x, y)
        x_source = x.detach().clone().requires_grad_(True)
        loss = cross_entropy(self.model(x_source), y)  # the one pass that updates BN statistics
        grads = gradients(loss, self.params, create_graph=True)
        grad_norm = torch.norm(torch.stack([g.norm() for g in grads]))
        (grad_x,) = torch.autograd.grad(loss + self.hp["rho"] * grad_norm, x_source)
        x_unknown = (x + self.hp["input_step"] * F.normalize(grad_x, p=2.0, dim=0)).detach()
        grads = [g.detach() for g in grads]
        with bn_statistics_kept(self.model):
            sharp_loss = self.perturbed_backward(grads, lambda: cross_entropy(self.model(x), y))
            g_sam = [p.grad.detach().clone() for p in self.params]
            logits = self.model(torch.cat([x, x_unknown]))
            inconsistency = self.inconsistency(logits, self.head.features, torch.cat([y, y]))
            g_inc = gradients(inconsistency, self.params)
        weight = self.hp["inconsistency_weight"]
        for p, a, b in zip(self.params, g_sam, g_inc):
            p.grad = a + weight * b
        self.optimizer.step()
        return {"loss": loss.item(), "sharp_loss": sharp_loss.item(), "inconsistency": inconsistency.item()}

    @staticmethod
    def inconsistency(logits: torch.Tensor, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``L_inc`` of step 3 for a batch whose first half is source and second half perturbed."""
        residual = logits.softmax(1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)  # dCE_i/dlogits
        per_example = {
            "weight": (residual.unsqueeze(2) * features.unsqueeze(1)).flatten(1),
            "bias": residual,
        }
        half = len(y) // 2
        variances = [torch.cat([g[part].var(0, unbiased=False) for g in per_example.values()])
                     for part in (slice(0, half), slice(half, None))]
        mean = (variances[0] + variances[1]) / 2
        penalty = sum((v - mean).square().mean() for v in variances) / 2
        norms = sum(g[half:].square().sum(1).mean() / g.shape[1] for g in per_example.values())
        return penalty + norms
