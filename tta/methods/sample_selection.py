"""Sample selection of the entropy family: reliable-entropy filter, redundancy filter, re-weighting.

Niu, Wu, Zhang, Chen, Zheng, Zhao & Tan, "Efficient Test-Time Model Adaptation without
Forgetting" (EATA, ICML 2022), Sections 3.1-3.2; reused by SAR and DeYO (their entropy filter).
For logits ``Z`` (B x K), ``p_i = softmax(z_i)`` and ``E_i = H(p_i)`` in nats:

* reliable (Eqn. 3): ``E_i < E0`` with ``E0 = e0_factor * ln K`` (the paper's 0.4 ln K);
* non-redundant (Eqn. 5): among the reliable ones, ``|cos(m, p_i)| < d_margin``, where ``m`` is
  the moving average of the probability vectors of the samples selected so far (Eqn. 4):
  ``m <- p_mean`` for the first batch with a selected sample, then
  ``m <- 0.9 m + 0.1 p_mean`` (``p_mean``: mean over this batch's selected samples; no update
  when none is selected). Before ``m`` exists, every reliable sample passes;
* weight (Eqn. 6): ``S(x) = 1 / exp(E - E0)`` of each selected sample, a constant (no gradient).

The momentum 0.9 is hard-coded in EATA's reference (mr-eggplant/EATA, ``update_model_probs``)
and in mariodoebler/test-time-adaptation ``methods/eata.py`` (``update_model_probs``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: weight of the old moving average of probability vectors (EATA reference, ``update_model_probs``)
PROBS_MOMENTUM = 0.9


def entropy_margin(num_classes: int, factor: float) -> float:
    """``E0 = factor * ln K``: the reliable-entropy threshold (EATA Eqn. 3; factor 0.4 in the paper)."""
    return factor * math.log(num_classes)


def reweight(entropy: torch.Tensor, margin: float) -> torch.Tensor:
    """``1 / exp(E - E0)`` per sample, detached (EATA Eqn. 6)."""
    return 1.0 / torch.exp(entropy.detach() - margin)


class RedundancyFilter:
    """The moving average ``m`` of selected probability vectors and the cosine test against it."""

    def __init__(self, margin: float, momentum: float = PROBS_MOMENTUM) -> None:
        self.margin = margin
        self.momentum = momentum
        self.average: torch.Tensor | None = None

    def keep(self, probs: torch.Tensor) -> torch.Tensor:
        """Boolean mask over ``probs`` (N x K): ``|cos(m, p)| < margin``; all True before ``m`` exists."""
        if self.average is None:
            return torch.ones(probs.shape[0], dtype=torch.bool, device=probs.device)
        return F.cosine_similarity(self.average.unsqueeze(0), probs, dim=1).abs() < self.margin

    @torch.no_grad()
    def update(self, selected_probs: torch.Tensor) -> None:
        """Fold the mean of the selected probability vectors into ``m`` (nothing when none was selected)."""
        if selected_probs.shape[0] == 0:
            return
        mean = selected_probs.detach().mean(0)
        self.average = mean if self.average is None else self.momentum * self.average + (1 - self.momentum) * mean

    def reset(self) -> None:
        self.average = None


def select(logits: torch.Tensor, entropy: torch.Tensor, entropy_threshold: float,
           redundancy: RedundancyFilter | None) -> torch.Tensor:
    """Indices of the samples that pass the entropy filter and then (if given) the redundancy filter;
    folds the selected samples' probabilities into the redundancy filter's average."""
    reliable = torch.nonzero(entropy < entropy_threshold).squeeze(1)
    if redundancy is None:
        return reliable
    probs = logits[reliable].softmax(1)
    kept = redundancy.keep(probs)
    redundancy.update(probs[kept])
    return reliable[kept]
