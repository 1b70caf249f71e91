"""``lame``: Laplacian-regularized maximum likelihood on the batch's affinity graph; no parameter changes.

Boudiaf, Mueller, Ben Ayed & Bertinetto, "Parameter-free Online Test-time Adaptation" (CVPR 2022).
Per test batch of N images with source predictions ``p_i = softmax(z_i)`` and L2-normalized
penultimate features ``f_i`` (the split of :mod:`tta.models.split`), LAME finds assignments
``y_i`` on the simplex minimizing (paper Eq. 5, its concave-convex bound Eq. 7)

    E(Y) = sum_i y_i . a_i  -  lambda sum_ij w_ij y_i . y_j  +  sum_i y_i . log y_i,   a_i = -log(p_i + 1e-10)

with the fixed-point iteration (paper Eq. 8), starting at ``y_i = softmax(-a_i)``,

    y_i <- softmax(-a_i + lambda sum_j w_ij y_j)

until the energy changes by at most ``1e-8 |E|`` (checked from the third step on) or ``max_steps``.
The returned logits are the last iteration's ``-a_i + lambda sum_j w_ij y_j`` (their softmax is the
assignment ``y_i``); the model is never changed. Affinities ``w`` over the normalized features
(``affinity``): ``rbf``: ``exp(-||f_i - f_j||^2 / (2 s^2))`` with ``s`` the batch mean of each point's
``knn``-th smallest distance (its own distance 0 counted), ``knn``: 1 for each of the ``knn`` nearest
other points, else 0; ``linear``: ``f_i . f_j``. ``force_symmetry`` replaces ``w`` with ``(w + w^T) / 2``.

Defaults, mariodoebler/test-time-adaptation (MD) at commit 8b2ed63: ``classification/conf.py``
lines 212-215 (``LAME.AFFINITY = "rbf"``, ``KNN = 5``, ``FORCE_SYMMETRY = False``; the CIFAR-10-C
config ``cfgs/cifar10_c/lame.yaml`` sets none of them, batch 200 at its line 5); ``lambda = 1`` and
``max_steps = 100`` are the defaults of ``laplacian_optimization`` (``classification/methods/lame.py``
line 126; MD passes neither), the energy and stopping rule its lines 130-147, the affinities its
lines 83-123, the ``1e-10`` and the normalization its lines 40-42. MD's ``LAME.SIGMA`` (conf.py
line 214) is read but used by no affinity (``rbf`` computes its own scale, lame.py line 110), so it
is not a hyperparameter here. ``benchmarks/reference_md/results_lame*.md``: tta against MD.

On tta's ResNet-20 (64-d features) the default ``rbf`` graph is dense: on a fog batch of 200 its rows
sum to 52 on average (18.7 at least) while a row's log-probabilities span 19, so the Laplacian term
outweighs the source predictions and batches collapse onto few classes (89% error against the source's
58%, identical in MD); ``affinity=knn`` (row sums 5) stays near the source (60%).

Batch size 1: a single point has no neighbour (MD's ``rbf`` scale is then 0 and its kernel 0/0);
the model's logits are returned unchanged.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from tta.errors import UserError
from tta.hparams import HParam
from tta.methods.base import Method
from tta.models.split import split_classifier
from tta.registry import register_method


def _distances(f: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` Euclidean distances, entry (i, j) = ||f_j - f_i|| (MD's broadcast order, lame.py line 89)."""
    return torch.norm(f.unsqueeze(0) - f.unsqueeze(1), dim=-1, p=2)


def rbf_affinity(f: torch.Tensor, knn: int) -> torch.Tensor:
    dist = _distances(f)
    kth = dist.topk(k=min(knn, f.shape[0]), dim=-1, largest=False).values[:, -1]
    scale = kth.mean()
    return torch.exp(-dist ** 2 / (2 * scale ** 2))


def knn_affinity(f: torch.Tensor, knn: int) -> torch.Tensor:
    n = f.shape[0]
    neighbours = _distances(f).topk(min(knn + 1, n), -1, largest=False).indices[:, 1:]  # first: the point itself
    return torch.zeros(n, n, device=f.device).scatter_(-1, neighbours, 1.0)


def linear_affinity(f: torch.Tensor, knn: int) -> torch.Tensor:
    return f @ f.t()


#: affinity name -> w(normalized features, knn)
AFFINITIES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "rbf": rbf_affinity, "knn": knn_affinity, "linear": linear_affinity}


def laplacian_assignment(unary: torch.Tensor, kernel: torch.Tensor, bound_lambda: float,
                         max_steps: int) -> tuple[torch.Tensor, int]:
    """LAME's fixed point: ``(logits, steps)``, ``softmax(logits)`` the assignment ``Y`` (see the module doc)."""
    logits = -unary
    y = logits.softmax(-1)
    old_energy = float("inf")
    steps = 0
    for i in range(max_steps):
        pairwise = bound_lambda * kernel.matmul(y)
        logits = -unary + pairwise
        y = logits.softmax(-1)
        energy = (unary * y - bound_lambda * pairwise * y + y * torch.log(y.clip(1e-20))).sum().item()
        steps = i + 1
        if i > 1 and abs(energy - old_energy) <= 1e-8 * abs(old_energy):
            break
        old_energy = energy
    return logits, steps


@register_method("lame")
class LAME(Method):
    """LAME (Boudiaf et al. 2022): Laplacian-regularized assignments on the batch's feature graph, model unchanged."""

    hparams = {
        "affinity": HParam("rbf", f"feature affinity: {', '.join(AFFINITIES)}", search=tuple(AFFINITIES)),
        "knn": HParam(5, "neighbours: knn graph degree; rbf scale = mean knn-th distance", 1, 10_000,
                      search=(1, 3, 5, 10, 20)),
        "force_symmetry": HParam(False, "use (W + W^T) / 2", search=(False, True)),
        "bound_lambda": HParam(1.0, "weight lambda of the Laplacian term", 0.0, 100.0, search=(0.5, 1.0, 2.0)),
        "max_steps": HParam(100, "fixed-point iterations at most", 0, 10_000),
    }

    def __init__(self, **overrides) -> None:
        super().__init__(**overrides)
        if self.hp["affinity"] not in AFFINITIES:
            raise UserError(f"method 'lame': unknown affinity {self.hp['affinity']!r} "
                            f"(choose one of: {', '.join(AFFINITIES)})")

    def configure(self, model) -> None:
        self.features, self.classifier = split_classifier(model, "method 'lame'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < 2:
            return self.model(x)
        features = self.features(x)
        unary = -torch.log(self.classifier(features).softmax(dim=1) + 1e-10)
        kernel = AFFINITIES[self.hp["affinity"]](F.normalize(features, p=2, dim=-1), self.hp["knn"])
        if self.hp["force_symmetry"]:
            kernel = 1 / 2 * (kernel + kernel.t())
        logits, _ = laplacian_assignment(unary, kernel, self.hp["bound_lambda"], self.hp["max_steps"])
        return logits
