"""``deyo``: destroy your object, entropy minimization on samples whose prediction depends on shape.

Lee, Jung, Lee, Lee & Yoon, "Entropy is not Enough for Test-Time Adaptation: From the
Perspective of Disentangled Factors" (ICLR 2024). As Tent, BatchNorm layers normalize with the
test batch's statistics and the affine parameters of the normalization layers train, one step
per batch. For logits ``z_i`` of the batch, ``p_i = softmax(z_i)``, ``E_i = H(p_i)`` (nats):

    S1      = {i : E_i < tau_ent},                   tau_ent = margin * ln K           (entropy filter)
    x'_i    = patch_shuffle(x_i)  for i in S1        (:func:`tta.methods.augmentations.patch_shuffle`)
    PLPD_i  = p_i[c_i] - p'_i[c_i],  c_i = argmax p_i,  p'_i = softmax(f(x'_i))       (no gradient)
    S       = {i in S1 : PLPD_i > tau_plpd}                                            (Eqn. 8)
    a_i     = 1 / exp(E_i - E0) + 1 / exp(-PLPD_i),  E0 = margin_e0 * ln K  (detached, Eqn. 10)
    L       = 1/|S| sum_{i in S} a_i E_i

Either weight term can be switched off (``reweight_ent`` / ``reweight_plpd``; both off: plain
mean). The shuffled views are one forward pass of the model, without gradient, on the batch of
the entropy-selected images only, so its BatchNorm statistics are those of that batch (as both
references). No step is taken when ``S`` is empty (both references skip it; an Adam step on a
zero gradient would still move the parameters). The returned logits are those of the forward
pass the loss is taken on, before the step.

**Which layers.** The affine parameters of every normalization layer except the top ones, the
references' ``collect_params``: a layer whose name (relative to tta's input-normalizing wrapper,
``Normalized.net``) contains ``layer4``, ``blocks.9``, ``blocks.10``, ``blocks.11`` or
``norm.``, or is ``norm``, stays fixed (MD ``methods/deyo.py`` lines 129-148; authors lines
194-213). ResNet-20 and ResNet-26-GN have no ``layer4``: every layer trains. On timm's ViT the
final ``norm`` is kept fixed as in the authors' code on the bare timm model; in MD the model is
wrapped by RobustBench's ``normalize_model`` (names ``model.norm``), so MD's ``nm in ['norm']``
does not fire and MD trains that layer.

**Randomness.** The patch permutations come from a CPU :class:`torch.Generator` the method owns
(never torch's global one). Its seed is the constructor argument ``seed``; when it is ``None``
(the runner's case), ``torch.initial_seed()`` at ``setup``, which is the run seed: ``Run`` calls
``torch.manual_seed(config.seed)`` right before ``method.setup``. ``reset`` re-seeds it, so a
reset method repeats its run bit for bit. The draws are those of the references
(``argsort(rand(B, patches**2))`` on the CPU), so a generator seeded ``s`` yields the same
permutations as MD's global generator after ``torch.manual_seed(s)``.

Defaults and where they come from (mariodoebler/test-time-adaptation "MD" at 8b2ed63; authors'
code Jhyun17/DeYO at 3d7d289):

* ``margin`` 0.5 (tau_ent = 0.5 ln K): MD ``classification/conf.py`` line 239
  (``DEYO.MARGIN``); authors ``config.py`` line 52 (``--deyo_margin``).
* ``margin_e0`` 0.4 (E0 = 0.4 ln K): MD ``conf.py`` line 225 (DeYO reads ``EATA.MARGIN_E0``,
  ``methods/deyo.py`` line 28); authors ``config.py`` line 54 (``--deyo_margin_e0``).
* ``plpd_threshold`` 0.2: MD ``conf.py`` line 238 (``DEYO.PLPD``); authors ``config.py`` line 55.
  The authors' script ``exp_deyo.sh`` uses 0.3 for ImageNet-C on ResNet-50-BN (``DTHR=0.3``,
  line 6) and 0.2 in the wild settings (line 19).
* ``reweight_ent`` / ``reweight_plpd`` on: MD ``conf.py`` lines 236-237; authors ``config.py``
  lines 61-62. Both coefficients are 1 (MD: ``float(True)``, ``methods/deyo.py`` lines 93-95).
* ``patches`` 4 per side, augmentation ``patch``: MD ``conf.py`` lines 240 and 244
  (``DEYO.AUG_TYPE``, ``DEYO.PATCH_LEN``); authors ``config.py`` lines 39 and 47. The other
  views of the references (``occ``, ``pixel``) are not implemented.
* optimizer Adam, lr 1e-3, beta 0.9, 1 step, no weight decay: MD
  ``classification/cfgs/cifar10_c/deyo.yaml`` lines 26-31 (Adam's beta2 0.999: MD
  ``methods/base.py`` line 166). ImageNet-C differs: MD ``cfgs/imagenet_c/deyo.yaml`` lines 24-31
  (SGD, lr 0.00025, batch 64; MD's SGD is Nesterov, momentum 0.9, ``conf.py`` lines 134-140);
  the authors use plain momentum-0.9 SGD, lr 0.00025 for ResNets (batch >= 32) and
  ``0.001 / 64 * batch`` for ViT-B/16 (``main.py`` lines 349-359 and 588; doubled at batch 1,
  line 378). ``--hp optimizer=sgd lr=0.00025`` is the authors' ResNet setting (tta's SGD has no
  Nesterov option).

Reference differences that do not change CIFAR results: the authors put the model in train
mode (``methods/deyo.py`` line 227), MD in eval mode (line 155); only dropout and stochastic
depth see the difference, BN uses batch statistics in both.

Batch size 1: the filters see the one image; conv layers normalize with its spatial
statistics in both passes (the shuffled view's too); a layer with one value per channel refuses
(see :mod:`tta.methods.affine_adapt`). MD instead buffers single images in a sliding window
(``TEST.WINDOW_LENGTH``); tta does not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tta.hparams import HParam
from tta.methods.affine_adapt import AffineAdaptMethod, GradTestBatchNorm, optimizer_hparams
from tta.methods.augmentations import patch_shuffle
from tta.methods.sample_selection import entropy_margin, reweight, select
from tta.methods.tent import softmax_entropy
from tta.models.registry import Normalized
from tta.registry import register_method

#: name fragments of the layers the references leave fixed (MD ``methods/deyo.py`` lines 131-142)
FROZEN_FRAGMENTS = ("layer4", "blocks.9", "blocks.10", "blocks.11", "norm.")


def deyo_hparams() -> dict[str, HParam]:
    """DeYO's selection and weighting hyperparameters (MD CIFAR-10-C defaults, see the module docstring)."""
    return {
        "margin": HParam(0.5, "entropy filter tau_ent = margin * ln K (kept: E < tau_ent)", 0.0, 10.0,
                         search=(0.3, 0.4, 0.5, 0.6)),
        "margin_e0": HParam(0.4, "entropy weight E0 = margin_e0 * ln K in 1/exp(E - E0)", 0.0, 10.0,
                            search=(0.3, 0.4, 0.5)),
        "plpd_threshold": HParam(0.2, "PLPD filter (kept: PLPD > threshold)", -1.0, 1.0,
                                 search=(0.1, 0.2, 0.3, 0.4)),
        "reweight_ent": HParam(True, "weight term 1/exp(E - E0)", search=(True, False)),
        "reweight_plpd": HParam(True, "weight term 1/exp(-PLPD)", search=(True, False)),
        "patches": HParam(4, "patches per side of the shuffled view (patches x patches tiles)", 1, 64,
                          search=(2, 3, 4, 6)),
    }


def plpd(probs: torch.Tensor, probs_view: torch.Tensor) -> torch.Tensor:
    """Pseudo-label probability difference ``p[c] - p'[c]``, ``c = argmax p``, per row (N x K inputs)."""
    label = probs.argmax(dim=1, keepdim=True)
    return (probs.gather(1, label) - probs_view.gather(1, label)).reshape(-1)


def deyo_weights(entropy: torch.Tensor, drop: torch.Tensor, e0: float, use_entropy: bool,
                 use_plpd: bool) -> torch.Tensor | None:
    """``1/exp(E - E0) + 1/exp(-PLPD)`` (enabled terms only, detached); ``None`` when both are off."""
    terms = ([reweight(entropy, e0)] if use_entropy else []) + ([1.0 / torch.exp(-drop.detach())] if use_plpd else [])
    return sum(terms[1:], terms[0]) if terms else None


@register_method("deyo")
class DeYO(AffineAdaptMethod):
    """DeYO (Lee et al. 2024): entropy + PLPD filter with patch-shuffled views, re-weighted entropy."""

    #: the patch-shuffled view is predicted for the entropy-selected images only: a new batch size each time
    compilable = False

    hparams = {**deyo_hparams(), **optimizer_hparams(lr=1e-3)}

    def __init__(self, seed: int | None = None, **overrides: Any) -> None:
        super().__init__(**overrides)
        #: seed of the patch permutations; ``None``: ``torch.initial_seed()`` at setup (the run seed)
        self.seed = seed
        self.generator = torch.Generator()  # CPU, as the references' torch.rand
        self.selected = (0, 0)

    def configure(self, model: nn.Module) -> None:
        self._prefix = "net." if isinstance(model, Normalized) else ""
        super().configure(model)
        self.shuffle_seed = torch.initial_seed() if self.seed is None else self.seed
        self.generator.manual_seed(self.shuffle_seed)

    def adapts(self, name: str, layer: nn.Module) -> bool:
        relative = name[len(self._prefix):] if name.startswith(self._prefix) else name
        return relative != "norm" and not any(fragment in relative for fragment in FROZEN_FRAGMENTS)

    def make_layer(self, bn):
        return GradTestBatchNorm(bn)

    def reset_state(self) -> None:
        super().reset_state()
        self.generator.manual_seed(self.shuffle_seed)
        self.selected = (0, 0)

    def deyo_loss(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """The weighted entropy of the samples that pass both filters; ``None`` when none does."""
        num_classes = logits.shape[1]
        entropy = softmax_entropy(logits)
        kept = select(logits, entropy, entropy_margin(num_classes, self.hp["margin"]), None)
        self.selected = (kept.shape[0], 0)
        if kept.shape[0] == 0:
            return None
        with torch.no_grad():
            logits_view = self.model(patch_shuffle(x[kept].detach(), self.hp["patches"], self.generator))
        drop = plpd(logits[kept].softmax(1), logits_view.softmax(1))
        passed = torch.nonzero(drop > self.hp["plpd_threshold"]).squeeze(1)
        self.selected = (kept.shape[0], passed.shape[0])
        if passed.shape[0] == 0:
            return None
        chosen, drop = entropy[kept][passed], drop[passed]
        weights = deyo_weights(chosen, drop, entropy_margin(num_classes, self.hp["margin_e0"]),
                               self.hp["reweight_ent"], self.hp["reweight_plpd"])
        return (chosen if weights is None else chosen * weights).mean(0)

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        raise TypeError("deyo's loss needs the images as well: deyo_loss(x, logits)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            for _ in range(self.hp["steps"]):
                logits = self.model(x)
                loss = self.deyo_loss(x, logits)
                if loss is None:
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self._last_loss = loss.detach()
        return logits.detach()
