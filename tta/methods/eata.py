"""``eata``: ETA plus the Fisher anti-forgetting regularizer.

Niu, Wu, Zhang, Chen, Zheng, Zhao & Tan, "Efficient Test-Time Model Adaptation without
Forgetting" (ICML 2022), Eqns. 8-9. The loss of :mod:`tta.methods.eta` plus

    R(theta) = fisher_alpha * sum_k F_k (theta_k - theta0_k)^2

over the BN affine parameters, with ``theta0`` the source parameters and ``F`` the diagonal
Fisher information estimated before adaptation on clean source images, batch by batch:

    F = 1/T sum_{t=1..T} (d/d theta  CE(f(x_t), argmax f(x_t)))^2

(``CE`` the mean cross-entropy of batch ``t`` against the model's own hard predictions, BN
normalizing with each batch's statistics, as the reference).

**Source images: this method needs them, and they are an explicit input.** With
``fisher_alpha > 0`` it asks for ``fisher_samples`` clean source images
(:meth:`source_images_wanted`); the runner draws that many from the protocol reader's
``source_images`` (a seeded subset, in batches of the run's batch size) and calls
:meth:`fit_source` after ``setup``, before the first test batch. A protocol without source
images refuses the run in one line (``--hp fisher_alpha=0`` is ETA). The Fisher is kept
through ``reset`` (a fixed property of the source model). Rows say which data the Fisher came
from (``row_extra``: ``fisher_data``). For CIFAR-10 the reference uses 2,000 random CIFAR-10
*training* images (``data_batch_*``); where only the clean *test* images exist (offline here),
the reader gives those and the rows say so (:class:`tta.protocols.cifar_c.CorruptedStack`).

Defaults, mariodoebler/test-time-adaptation (MD) at commit 8b2ed63,
``classification/cfgs/cifar10_c/eata.yaml`` lines 26-36: Adam lr 1e-3, ``EATA.FISHER_ALPHA 1.0``,
``EATA.D_MARGIN 0.4``, ``SOURCE.NUM_SAMPLES 2000`` (Fisher batches of ``TEST.BATCH_SIZE`` 200,
``methods/eata.py``); ``conf.py`` line 225 ``EATA.MARGIN_E0 0.4``. MD's ImageNet-C defaults:
``conf.py`` lines 221 and 224, ``FISHER_ALPHA 2000``, ``D_MARGIN 0.05``.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F

from tta.errors import UserError
from tta.hparams import HParam
from tta.methods.eta import ETA
from tta.registry import register_method


@register_method("eata")
class EATA(ETA):
    """EATA (Niu et al. 2022): ETA + Fisher regularizer estimated on clean source images."""

    hparams = {
        **ETA.hparams,
        "fisher_alpha": HParam(1.0, "weight of the Fisher regularizer (0 = ETA)", 0.0, 1e6,
                               search=(0.1, 1.0, 10.0, 100.0, 2000.0)),
        "fisher_samples": HParam(2000, "clean source images used to estimate the Fisher", 1, 1_000_000,
                                 search=(500, 1000, 2000, 5000)),
    }

    def configure(self, model):
        super().configure(model)
        self.fisher: list[torch.Tensor] | None = None
        self.anchor: list[torch.Tensor] = []
        self.fisher_data = "none"

    source_images_use = "its Fisher regularizer"

    def source_images_wanted(self) -> int:
        return self.hp["fisher_samples"] if self.hp["fisher_alpha"] > 0 else 0

    def fit_source(self, batches: Iterable[torch.Tensor], description: str = "clean source images") -> None:
        """Estimate ``F`` on the first ``fisher_samples`` images of ``batches`` (clean, label-free);
        ``description`` names them in the rows."""
        limit = self.hp["fisher_samples"]
        totals = [torch.zeros_like(p) for p in self.params]
        seen = steps = 0
        with torch.enable_grad():
            for x in batches:
                x = x[: limit - seen]
                logits = self.model(x)
                loss = F.cross_entropy(logits, logits.argmax(1))
                for total, grad in zip(totals, torch.autograd.grad(loss, self.params)):
                    total.add_(grad.square())
                seen += x.shape[0]
                steps += 1
                if seen >= limit:
                    break
        if steps == 0:
            raise UserError("eata: no source images were given to estimate the Fisher information")
        self.fisher = [total / steps for total in totals]
        self.anchor = [p.detach().clone() for p in self.params]
        self.fisher_data = f"{seen} {description}"

    def regularizer(self) -> torch.Tensor | float:
        alpha = self.hp["fisher_alpha"]
        if alpha == 0.0:
            return 0.0
        if self.fisher is None:
            raise UserError("eata needs clean source images for its Fisher regularizer (EATA.fit_source), which "
                            "this run did not provide; use --hp fisher_alpha=0 (ETA) or the method eta")
        return sum(alpha * (f * (p - p0).square()).sum() for f, p, p0 in zip(self.fisher, self.params, self.anchor))

    def row_extra(self) -> dict[str, Any]:
        return {"fisher_data": self.fisher_data if self.hp["fisher_alpha"] > 0 else "none (fisher_alpha=0)"}
