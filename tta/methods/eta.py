"""``eta``: efficient test-time adaptation, entropy minimization on selected and re-weighted samples.

Niu, Wu, Zhang, Chen, Zheng, Zhao & Tan, "Efficient Test-Time Model Adaptation without
Forgetting" (ICML 2022): EATA without its Fisher regularizer. As Tent, every BatchNorm layer
normalizes with the test batch's statistics and only the BN affine parameters train, one
Adam step per batch; the loss is the re-weighted entropy of the *selected* samples
(:mod:`tta.methods.sample_selection`):

    E_i = H(softmax(z_i));   S = {i : E_i < E0 and |cos(m, p_i)| < d_margin}
    L   = 1/|S| sum_{i in S} E_i / exp(E_i - E0),   E0 = e0_factor * ln K

``m`` is the moving average of the selected probability vectors (momentum 0.9), kept across
batches and forgotten at ``reset``. No step is taken when no sample is selected (the
reference skips it too; an Adam step on a zero gradient would still move the parameters).
The returned logits are those of the forward pass the loss is taken on (before the step).

Defaults, mariodoebler/test-time-adaptation (MD) at commit 8b2ed63:
``classification/cfgs/cifar10_c/eta.yaml`` lines 26-34 (Adam, lr 1e-3, beta 0.9, 1 step,
wd 0, ``EATA.FISHER_ALPHA 0.0``, ``EATA.D_MARGIN 0.4``); ``classification/conf.py`` line 225
(``EATA.MARGIN_E0 0.4``, the paper's 0.4 ln K). MD's ImageNet-C default margin is
``conf.py`` line 224, ``D_MARGIN 0.05`` (the paper's ImageNet value): pass ``--hp d_margin=0.05``.

Batch size 1: the filters apply to the single sample; conv layers normalize with its spatial
statistics; a layer with one value per channel refuses (see :mod:`tta.methods.affine_adapt`).
"""

from __future__ import annotations

import torch

from tta.hparams import HParam
from tta.methods.affine_adapt import AffineAdaptMethod, GradTestBatchNorm, optimizer_hparams
from tta.methods.sample_selection import RedundancyFilter, entropy_margin, reweight, select
from tta.methods.tent import softmax_entropy
from tta.registry import register_method


def selection_hparams() -> dict[str, HParam]:
    """EATA's sample-selection hyperparameters (MD CIFAR-10-C defaults)."""
    return {
        "e0_factor": HParam(0.4, "entropy threshold E0 = e0_factor * ln K (reliable samples: E < E0)", 0.0, 10.0,
                            search=(0.3, 0.4, 0.5, 0.6)),
        "d_margin": HParam(0.4, "redundancy threshold on |cos| to the moving average of probabilities", 0.0, 1.0,
                           search=(0.05, 0.1, 0.2, 0.4, 0.6)),
    }


@register_method("eta")
class ETA(AffineAdaptMethod):
    """ETA (Niu et al. 2022): entropy minimization on reliable, non-redundant, re-weighted samples."""

    hparams = {**selection_hparams(), **optimizer_hparams(lr=1e-3)}

    def configure(self, model):
        super().configure(model)
        self.redundancy = RedundancyFilter(self.hp["d_margin"])
        self.selected = 0

    def make_layer(self, bn):
        return GradTestBatchNorm(bn)

    def reset_state(self):
        super().reset_state()
        self.redundancy.reset()

    def loss(self, logits: torch.Tensor) -> torch.Tensor | None:
        """The re-weighted entropy of the selected samples; ``None`` when none is selected."""
        entropy = softmax_entropy(logits)
        threshold = entropy_margin(logits.shape[1], self.hp["e0_factor"])
        chosen = entropy[select(logits, entropy, threshold, self.redundancy)]
        self.selected = chosen.shape[0]
        if chosen.shape[0] == 0:
            return None
        return (chosen * reweight(chosen, threshold)).mean(0) + self.regularizer()

    def regularizer(self) -> torch.Tensor | float:
        """Extra loss term (EATA's Fisher penalty); none here."""
        return 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            for _ in range(self.hp["steps"]):
                logits = self.model(x)
                loss = self.loss(logits)
                if loss is None:
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self._last_loss = loss.detach()
        return logits.detach()
