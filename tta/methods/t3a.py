"""``t3a``: test-time classifier adjustment, class prototypes from low-entropy test features.

Iwasawa & Matsuo, "Test-Time Classifier Adjustment Module for Model-Agnostic Domain
Generalization" (NeurIPS 2021). The classifier's weight rows ``w_k`` start the support set
``S_k`` of each class (labelled with the classifier's own arg-max on them, entropy of its
softmax on them). Per test batch with penultimate features ``z_i`` (the split of
:mod:`tta.models.split`) and source predictions ``p_i = softmax(W z_i + b)``:

    S_{argmax p_i} <- S_{argmax p_i} + {z_i}                   (every test feature joins)
    S_k            <- the filter_K members of S_k of lowest entropy H(p) (all when filter_K = -1)
    c_k = sum_{s in S_k} s / ||s||,    logits_ik = z_i . c_k / ||c_k||      (paper Eq. 3-5)

so the batch is predicted with the prototypes that already include it; the classifier's bias is
not used once the prototypes replace it, and the network is never changed. Only the support
sets are state (at most ``filter_K`` per class plus one batch); ``reset()`` restores the warm-up
sets built at setup (exact: the tensors are replaced, never changed in place).

Defaults: ``filter_K = 100``. The authors' code (matsuolab/T3A at ff8cde5,
``domainbed/scripts/unsupervised_adaptation.py`` line 327) has no single default: it sweeps
``filter_K`` over ``[1, 5, 20, 50, 100, -1]`` and the paper selects it on held-out source data;
100 is the largest finite value of that grid, used here, and the grid is the search range.
The support set, entropy, selection and prediction follow ``domainbed/adapt_algorithms.py``
lines 34-107 (warm-up from ``classifier.weight``, entropy ``-(softmax * log_softmax).sum``,
lines 240-242), the order of float operations included. One difference: for ``filter_K = -1``
the authors' selection slices ``[:-1]`` (line 92; the ``-1`` branch at lines 85-86 is overwritten),
which drops the highest-entropy support of each class; here -1 keeps them all, as the paper's
"no filtering". ``benchmarks/reference_t3a/``: tta against the authors' class.

Batch size 1: the single feature joins its predicted class's support set and is predicted with
the updated prototypes; nothing needs more than one image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tta.errors import UserError
from tta.hparams import HParam
from tta.methods.base import Method, all_finite
from tta.methods.tent import softmax_entropy
from tta.models.split import split_classifier
from tta.registry import register_method


def select_supports(entropy: torch.Tensor, labels: torch.Tensor, filter_k: int) -> torch.Tensor:
    """Indices of the kept supports: per class (ascending class), its ``filter_k`` lowest-entropy
    members in ascending entropy (ties: lower index first); ``filter_k = -1`` keeps every member."""
    order = torch.sort(entropy, stable=True).indices
    order = order[torch.sort(labels[order], stable=True).indices]  # class-major, entropy order inside
    if filter_k < 0:
        return order
    classes = labels[order]
    counts = torch.bincount(classes)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=order.device) - first[classes]
    return order[rank < filter_k]


def prototype_logits(z: torch.Tensor, supports: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """``z . c_k / ||c_k||`` with ``c_k`` the sum of the normalized supports of class k."""
    prototypes = F.normalize(supports, dim=1).T @ onehot  # [d, C]
    return z @ F.normalize(prototypes, dim=0)


@register_method("t3a")
class T3A(Method):
    """T3A (Iwasawa & Matsuo 2021): prototypes of the filter_K lowest-entropy test features per class."""

    hparams = {
        "filter_K": HParam(100, "supports kept per class, lowest entropy first (-1: all)", -1, 1_000_000,
                           search=(1, 5, 20, 50, 100, -1)),
    }

    def __init__(self, **overrides) -> None:
        super().__init__(**overrides)
        if self.hp["filter_K"] == 0:
            raise UserError("method 't3a': filter_K must be a positive number of supports per class, or -1 (all)")

    def configure(self, model) -> None:
        self.features, self.classifier = split_classifier(model, "method 't3a'")
        with torch.no_grad():
            warmup = self.classifier.weight.detach().clone()
            logits = self.classifier(warmup)
        self.num_classes = logits.shape[1]
        self._warmup = (warmup, F.one_hot(logits.argmax(1), self.num_classes).float(), softmax_entropy(logits))
        self.reset_state()

    def reset_state(self) -> None:
        self.supports, self.labels, self.entropy = self._warmup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        p = self.classifier(z)
        supports = torch.cat([self.supports, z])
        labels = torch.cat([self.labels, F.one_hot(p.argmax(1), self.num_classes).float()])
        entropy = torch.cat([self.entropy, softmax_entropy(p)])
        keep = select_supports(entropy, labels.argmax(1), self.hp["filter_K"])
        self.supports, self.labels, self.entropy = supports[keep], labels[keep], entropy[keep]
        return prototype_logits(z, self.supports, self.labels)

    def diverged(self) -> bool:
        """A non-finite support feature or entropy (e.g. from non-finite inputs)."""
        return not all_finite([self.supports, self.entropy])

    def row_extra(self) -> dict:
        return {"t3a_supports": int(self.supports.shape[0])}
