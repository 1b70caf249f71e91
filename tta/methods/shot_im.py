"""``shot_im``: SHOT's information maximization on the feature extractor, classifier frozen.

Liang, Hu & Feng, "Do We Really Need to Access the Source Data? Source Hypothesis Transfer for
Unsupervised Domain Adaptation" (ICML 2020), SHOT-IM (SHOT without its pseudo-label term):
the source classifier (hypothesis) is frozen and the feature extractor is trained so that the
outputs are individually certain and globally diverse (paper Eq. 2-3),

    p_i = softmax(z_i),   m = 1/B sum_i p_i,
    L_IM = 1/B sum_i sum_k -p_ik log(p_ik + eps)  -  sum_k -m_k log(m_k + eps),   eps = 1e-5

here online, per test batch: ``steps`` SGD steps on L_IM of every parameter of the feature
extractor (everything but the final linear layer of the split, :mod:`tta.models.split`), with
BatchNorm normalizing with the test batch's statistics (SHOT adapts with ``netF.train()``), and
the logits of the forward the loss is taken on returned (before the step, as Tent).

Defaults, tim-learn/SHOT at f7d555a, ``object/image_target.py``: the loss lines 199-206 (entropy of
``object/loss.py`` lines 9-14 with its ``epsilon = 1e-5``, diversity with ``--epsilon 1e-5`` line
323, ``ent_par 1.0`` line 318, so no weight here), the classifier frozen lines 141-143, all
backbone parameters trained at ``lr * lr_decay1 = 1e-2 * 0.1 = 1e-3`` (lines 146-148, 316, 319),
SGD with momentum 0.9, Nesterov and weight decay 1e-3 (``lr_scheduler`` lines 23-29). SHOT's
learning-rate decay ``(1 + 10 t / T)^-0.75`` needs the run's length T, which an online stream does
not have: the rate stays at its initial value. SHOT's 256-d bottleneck (``netB``, lr 1e-2) belongs to
its own training recipe; tta's models have none, their whole extractor is SHOT's backbone.
Not compared with a reference run: MD has no SHOT and the authors' code adapts offline (epochs
over the whole target set), see the closing note of the method's commit.

Reset is exact: every trained parameter is declared (snapshotted) and the optimizer rebuilt.
Batch size 1: the diversity term of one image is minus its own entropy, so the loss is 0 up to
eps and carries no signal; such a batch is predicted (per-image BatchNorm statistics) without a step.
"""

from __future__ import annotations

import torch

from tta.hparams import HParam
from tta.methods.affine_adapt import (OPTIMIZERS, AffineAdaptMethod, GradTestBatchNorm, nesterov_hparam,
                                      optimizer_hparams)
from tta.models.split import split_classifier
from tta.registry import register_method


def information_maximization(logits: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """SHOT's L_IM: mean per-example entropy minus the entropy of the mean prediction (SHOT's float order)."""
    p = logits.softmax(1)
    loss = torch.mean((-p * torch.log(p + eps)).sum(1))
    mean = p.mean(dim=0)
    return loss - torch.sum(-mean * torch.log(mean + eps))


@register_method("shot_im")
class SHOTIM(AffineAdaptMethod):
    """SHOT-IM (Liang et al. 2020): information maximization on the whole feature extractor, classifier frozen."""

    min_batch_for_step = 2
    hparams = {
        **optimizer_hparams(lr=1e-3),
        "optimizer": HParam("sgd", f"optimizer of the feature extractor: {', '.join(OPTIMIZERS)}",
                            search=tuple(OPTIMIZERS)),
        "weight_decay": HParam(1e-3, "weight decay", 0.0, 1.0, search=(0.0, 1e-4, 1e-3)),
        **nesterov_hparam(True),
        "eps": HParam(1e-5, "epsilon inside both logarithms", 0.0, 1.0),
    }

    def configure(self, model) -> None:
        self.features, self.classifier = split_classifier(model, "method 'shot_im'")
        super().configure(model)  # BatchNorm -> test-batch statistics with gradients
        frozen = {id(p) for p in self.classifier.parameters()}
        self.params = [p for p in model.parameters() if id(p) not in frozen]
        for p in self.params:
            p.requires_grad_(True)
        self.reset_state()  # the optimizer over these parameters

    def make_layer(self, bn):
        return GradTestBatchNorm(bn)

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        return information_maximization(logits, self.hp["eps"])
