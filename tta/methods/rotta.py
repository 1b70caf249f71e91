"""``rotta``: robust test-time adaptation with robust BN, a category-balanced memory bank and a mean teacher.

Yuan, Xie & Li, "Robust Test-Time Adaptation in Dynamic Scenarios" (CVPR 2023). Three parts:

* **Robust BN** (Sec. 3.2, Eq. 3): every BatchNorm layer keeps global statistics, started at the source
  ones and moved towards the statistics of each batch it sees while the model learns,
  ``mu <- (1 - alpha) mu + alpha mu_b``, ``sigma2 <- (1 - alpha) sigma2 + alpha sigma2_b`` (biased batch
  variance, gradients through the batch part), and normalizes with them; at prediction time it
  normalizes with the stored ones (:class:`RobustBatchNorm`).
* **Category-balanced sampling with timeliness and uncertainty** (Sec. 3.3, Alg. 1, CSTU): each test image
  enters a memory bank of ``capacity`` images under the teacher's pseudo-label ``c`` with the score
  ``H(a, u) = lambda_t / (1 + exp(-a / capacity)) + lambda_u * u / ln K`` (age ``a`` = images seen since it
  entered, ``u`` = its prediction entropy; new: ``a = 0``). If class ``c`` holds fewer than
  ``capacity / K`` images and the bank has room, it enters; if class ``c`` is under its share but the bank
  is full, the highest-scoring image of the majority classes (all classes with the most images) is
  evicted when its score exceeds the new one's, else the new image is dropped; if class ``c`` is at its
  share, the same test within class ``c``. Ties go to the later image. Then every stored image ages by one
  (the new one included).
* **Teacher-student with time-aware re-weighting** (Sec. 3.4, Eq. 6-8): every ``update_every`` test images
  the student (robust BN and the affine parameters of every normalization layer) takes one Adam step on
  ``L = 1/N sum_i w_i CE(softmax(f_teacher(m_i)), f_student(aug(m_i)))`` over the N memory images
  ``m_i``, ``w_i = exp(-a_i / capacity) / (1 + exp(-a_i / capacity))``, ``aug`` CoTTA's view
  (:func:`tta.methods.augmentations.cotta_augment`, one draw for the memory batch); both models update
  their robust statistics on what they see (teacher: the clean memory, student: the augmented one); then
  ``theta_teacher <- (1 - nu) theta_teacher + nu theta_student``.

The prediction is the teacher's on the test batch with its stored statistics, made before the batch's
updates (MD's ``forward_and_adapt`` returns it). Which images are in the memory when an update fires
follows the batch's order image by image, as MD: with batches of 200 and updates every 64 images an
update can fire in the middle of a batch with part of it inserted.

Defaults (mariodoebler/test-time-adaptation "MD" 8b2ed63): ``capacity`` 64, ``update_every`` 64,
``nu`` 0.001, ``alpha`` 0.05, ``lambda_t`` = ``lambda_u`` = 1 (``classification/conf.py`` lines 249-254);
Adam, lr 1e-3, beta 0.9, 1 step, wd 0 (``cfgs/cifar10_c/rotta.yaml`` lines 26-31; beta2 0.999
``methods/base.py`` line 166). The entropy adds 1e-6 inside the log (``methods/rotta.py`` line 68); the
teacher step is MD's ``1 - nu`` momentum (line 25). MD switches the models to train / eval mode around
updates (lines 44-45, 63-64); here only the robust BN layers change behaviour (a flag), so dropout and
stochastic depth stay off. Comparison with MD: ``benchmarks/reference_md/results_rotta*.md`` (MD's class
needs one fix on CPU: its non-AMP branch calls ``loss_calculation(x)`` on a method taking no argument).

**Randomness**: the strong views come from a CPU :class:`torch.Generator` the method owns, seeded with
``seed`` or ``torch.initial_seed()`` at setup and re-seeded by ``reset``; its draws are those MD makes
from the global generator (same order). ``strong_augment=False`` feeds the memory images unaugmented
(an ablation, and the deterministic comparison with MD).

Batch size 1: images enter the memory one by one as always; the update takes the memory batch (size
up to ``capacity``), so single test images adapt the model without a special case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tta.errors import UserError
from tta.hparams import HParam
from tta.methods.affine_adapt import AFFINE_NORMALIZATIONS, OPTIMIZERS, check_optimizer, optimizer_hparams
from tta.methods.augmentations import cotta_augment
from tta.methods.base import Method, all_finite
from tta.methods.cotta import consistency_loss
from tta.methods.norm_layers import StatsNorm, replace_batchnorms
from tta.methods.weight_averaging import ema_update_, frozen_copy
from tta.registry import register_method


class RobustBatchNorm(StatsNorm):
    """BatchNorm with global statistics moved by ``alpha`` towards each batch seen while ``updating``."""

    def __init__(self, bn: nn.Module, alpha: float) -> None:
        super().__init__(bn)
        self.alpha = alpha
        self.updating = False
        self.register_buffer("global_mean", bn.running_mean.detach().clone(), persistent=False)
        self.register_buffer("global_var", bn.running_var.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.updating:
            dims = [0, *range(2, x.dim())]
            var_b, mean_b = torch.var_mean(x, dim=dims, unbiased=False)
            mean = (1 - self.alpha) * self.global_mean + self.alpha * mean_b
            var = (1 - self.alpha) * self.global_var + self.alpha * var_b
            with torch.no_grad():
                self.global_mean.copy_(mean)
                self.global_var.copy_(var)
        else:
            mean, var = self.global_mean, self.global_var
        shape = (1, -1) + (1,) * (x.dim() - 2)
        x = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return x * self.weight.view(shape) + self.bias.view(shape)


@dataclass
class MemoryItem:
    image: torch.Tensor
    uncertainty: float
    #: how many images the memory had been offered before this one (its age is derived from it)
    born: int = 0


class CategoryBalancedMemory:
    """RoTTA's CSTU memory bank: per-class lists, class-balanced eviction by timeliness and uncertainty."""

    def __init__(self, capacity: int, num_classes: int, lambda_t: float = 1.0, lambda_u: float = 1.0) -> None:
        self.capacity, self.num_classes = capacity, num_classes
        self.per_class = capacity / num_classes
        self.lambda_t, self.lambda_u = lambda_t, lambda_u
        self.classes: list[list[MemoryItem]] = [[] for _ in range(num_classes)]
        self.offered = 0  # images offered so far: every stored image ages by one per offer

    def __len__(self) -> int:
        return sum(len(items) for items in self.classes)

    def score(self, age: int, uncertainty: float) -> float:
        return self.lambda_t * 1 / (1 + math.exp(-age / self.capacity)) + \
            self.lambda_u * uncertainty / math.log(self.num_classes)

    def add(self, image: torch.Tensor, label: int, uncertainty: float) -> None:
        """Offer one image with its pseudo-label and entropy; then every stored image ages by one."""
        if self._make_room(label, self.score(0, uncertainty)):
            self.classes[label].append(MemoryItem(image, uncertainty, self.offered))
        self.offered += 1

    def age(self, item: MemoryItem) -> int:
        """Offers since ``item`` was stored, its own included (1 right after its ``add``)."""
        return self.offered - item.born

    def _make_room(self, label: int, new_score: float) -> bool:
        if len(self.classes[label]) >= self.per_class:
            return self._evict([label], new_score)
        if len(self) < self.capacity:
            return True
        counts = [len(items) for items in self.classes]
        return self._evict([c for c, n in enumerate(counts) if n == max(counts)], new_score)

    def _evict(self, classes: list[int], new_score: float) -> bool:
        best = None  # (score, class, index); ties go to the later item
        for c in classes:
            for i, item in enumerate(self.classes[c]):
                s = self.score(self.age(item), item.uncertainty)
                if best is None or s >= best[0]:
                    best = (s, c, i)
        if best is None:
            return True
        if best[0] > new_score:
            self.classes[best[1]].pop(best[2])
            return True
        return False

    def batch(self) -> tuple[list[torch.Tensor], list[float]]:
        """The stored images class by class, and their ages divided by the capacity."""
        items = [item for items in self.classes for item in items]
        return [item.image for item in items], [self.age(item) / self.capacity for item in items]


def timeliness_weights(ages: list[float]) -> torch.Tensor:
    """``exp(-a) / (1 + exp(-a))`` per (normalized) age (RoTTA Eq. 7)."""
    a = torch.tensor(ages).float()
    return torch.exp(-a) / (1 + torch.exp(-a))


@register_method("rotta")
class RoTTA(Method):
    """RoTTA (Yuan et al. 2023): robust BN, category-balanced memory with timeliness, re-weighted mean teacher."""

    needs_grad = True
    hparams = {
        "capacity": HParam(64, "memory bank capacity (images)", 1, 100000, search=(32, 64, 128)),
        "update_every": HParam(64, "test images between two updates", 1, 100000, search=(32, 64, 128)),
        "nu": HParam(0.001, "teacher EMA rate: theta_t <- (1 - nu) theta_t + nu theta_s", 0.0, 1.0,
                     search=(0.0005, 0.001, 0.005)),
        "alpha": HParam(0.05, "robust BN rate towards each batch's statistics", 0.0, 1.0, search=(0.01, 0.05, 0.1)),
        "lambda_t": HParam(1.0, "weight of timeliness in the memory score", 0.0, 100.0),
        "lambda_u": HParam(1.0, "weight of uncertainty in the memory score", 0.0, 100.0),
        "strong_augment": HParam(True, "augment the memory images for the student (CoTTA's view)",
                                 search=(True, False)),
        **optimizer_hparams(lr=1e-3),
    }

    def __init__(self, seed: int | None = None, **overrides: Any) -> None:
        super().__init__(**overrides)
        check_optimizer(self.name, self.hp)
        self.seed = seed
        self.generator = torch.Generator()
        self._last_loss: torch.Tensor | None = None
        self.seen = 0
        self.updates = 0
        self.memory: CategoryBalancedMemory | None = None

    def configure(self, model: nn.Module) -> None:
        replace_batchnorms(model, lambda bn: RobustBatchNorm(bn, self.hp["alpha"]))
        layers = [m for m in model.modules() if isinstance(m, (RobustBatchNorm, *AFFINE_NORMALIZATIONS))]
        self.params = [p for m in layers for p in (m.weight, m.bias) if p is not None]
        if not self.params:
            raise UserError("method 'rotta' trains normalization affine parameters; the model has no BatchNorm, "
                            "GroupNorm or LayerNorm layer with affine parameters")
        for p in self.params:
            p.requires_grad_(True)
        self.teacher = frozen_copy(model)
        self.teacher_params = list(self.teacher.parameters())
        self.robust = [m for net in (model, self.teacher) for m in net.modules() if isinstance(m, RobustBatchNorm)]
        self.optimizer = OPTIMIZERS[self.hp["optimizer"]](self.params, self.hp)
        self.rng_seed = torch.initial_seed() if self.seed is None else self.seed
        self.generator.manual_seed(self.rng_seed)

    def touched_tensors(self) -> list[torch.Tensor]:
        buffers = [t for m in self.robust for t in (m.global_mean, m.global_var)]
        return [*self.params, *self.teacher_params, *buffers]

    def reset_state(self) -> None:
        self.optimizer = OPTIMIZERS[self.hp["optimizer"]](self.params, self.hp)
        self.generator.manual_seed(self.rng_seed)
        self._last_loss = None
        self.seen = 0
        self.updates = 0
        self.memory = None

    def _updating(self, on: bool) -> None:
        for m in self.robust:
            m.updating = on

    def update(self) -> None:
        """One student step on the re-weighted memory, then the teacher's EMA step."""
        images, ages = self.memory.batch()
        memory = torch.stack(images)
        strong = cotta_augment(memory, 1, self.generator) if self.hp["strong_augment"] else memory
        self._updating(True)
        try:
            with torch.no_grad():
                teacher = self.teacher(memory)
            with torch.enable_grad():
                student = self.model(strong)
                weights = timeliness_weights(ages).to(student.device)
                loss = (consistency_loss(student, teacher, False) * weights).mean()
                loss.backward()
        finally:
            self._updating(False)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        ema_update_(self.teacher_params, self.model.parameters(), 1 - self.hp["nu"])
        self._last_loss = loss.detach()
        self.updates += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.teacher(x)
            probs = logits.softmax(1)
            labels = probs.argmax(1).tolist()
            entropy = (-probs * torch.log(probs + 1e-6)).sum(1).tolist()
        if self.memory is None:
            self.memory = CategoryBalancedMemory(self.hp["capacity"], logits.shape[1], self.hp["lambda_t"],
                                                 self.hp["lambda_u"])
        for image, label, uncertainty in zip(x, labels, entropy):
            self.memory.add(image, label, uncertainty)
            self.seen += 1
            if self.seen % self.hp["update_every"] == 0:
                self.update()
        return logits

    def diverged(self) -> bool:
        tensors = self.touched_tensors() + ([] if self._last_loss is None else [self._last_loss])
        return not all_finite(tensors)

    def row_extra(self) -> dict[str, Any]:
        return {"updates": self.updates, "memory": 0 if self.memory is None else len(self.memory)}
