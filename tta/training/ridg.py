"""``ridg``: Domain Generalization via Rationale Invariance (Chen et al., ICCV 2023).

For features ``z = phi(x)`` (the classifier's input, dimension D) and classifier weights
``w`` (K x D), the *rationale* of an example is the K x D matrix of per-feature
contributions to every logit

    R(x)_k = w_k * z          (elementwise; sum_d R(x)_kd + b_k is logit k)

A class-wise bank ``M_c`` (K x D) tracks the mean rationale of class c. For every class c
in the minibatch, with ``Rbar_c`` the mean rationale of the minibatch's examples of c:

    M_c <- Rbar_c                                      (first time c is seen)
    M_c <- (1 - m) * M_c + m * Rbar_c                  (afterwards; m = momentum)

and the loss is

    L = CE + lambda * sum_c  mean_{x in B_c}  mean_k  ||R(x)_k - M_c,k||_2^2

(squared norm over features, mean over the K logit rows and over the examples of the
class, summed over the classes present; this is how the authors' code reduces it).
The bank is updated from detached rationales before the loss is formed, so it never
carries autograd history and the regularizer pulls each rationale toward its class's
(slowly moving) mean. Defaults ``m = 0.001``, ``lambda = 0.01``.
"""

from __future__ import annotations

import torch

from tta.hparams import HParam
from tta.registry import register_training_method
from tta.training.base import OPTIMIZER_HPARAMS, TrainingMethod, cross_entropy


@register_training_method("ridg")
class RIDG(TrainingMethod):
    """RIDG (Chen et al. 2023): CE + lambda * distance of rationales w_k * z to a class-wise momentum bank."""

    hparams = {
        **OPTIMIZER_HPARAMS,
        "momentum_bank": HParam(0.001, "momentum m of the class-wise rationale bank", 0.0, 1.0,
                                search=(0.0001, 0.001, 0.01, 0.1)),
        "ridg_lambda": HParam(0.01, "weight lambda of the rationale-invariance loss", 0.0, None,
                              search=(0.001, 0.01, 0.1, 1.0)),
    }

    def setup(self, model, num_classes, total_steps):
        super().setup(model, num_classes, total_steps)
        weight = self.head.linear.weight
        self.bank = torch.zeros(num_classes, *weight.shape, device=weight.device)
        self.seen = torch.zeros(num_classes, dtype=torch.bool, device=weight.device)

    def step(self, x, y):
        logits = self.model(x)
        rationale = self.head.linear.weight.unsqueeze(0) * self.head.features.unsqueeze(1)  # B x K x D
        penalty = logits.new_zeros(())
        for c in torch.unique(y).tolist():
            members = rationale[y == c]
            self.update_bank(c, members.detach().mean(0))
            penalty = penalty + (members - self.bank[c]).square().sum(-1).mean()
        ce = cross_entropy(logits, y)
        loss = ce + self.hp["ridg_lambda"] * penalty
        self.descend(loss)
        return {"loss": loss.item(), "ce": ce.item(), "rationale": penalty.item()}

    @torch.no_grad()
    def update_bank(self, c: int, mean_rationale: torch.Tensor) -> None:
        if self.seen[c]:
            m = self.hp["momentum_bank"]
            self.bank[c].mul_(1 - m).add_(mean_rationale, alpha=m)
        else:
            self.bank[c].copy_(mean_rationale)
            self.seen[c] = True

    def extra_state(self):
        return {"bank": self.bank.clone(), "seen": self.seen.clone()}

    def load_extra_state(self, state):
        self.bank.copy_(state["bank"])
        self.seen.copy_(state["seen"])
