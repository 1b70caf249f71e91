"""``rdumb``: ETA with a full reset to the source model every ``reset_every`` updates.

Press, Schneider, Kümmerer & Bethge, "RDumb: A simple approach that questions our progress in
continual test-time adaptation" (NeurIPS 2023): run ETA (:mod:`tta.methods.eta`: re-weighted
entropy of reliable, non-redundant samples on the normalization affine parameters) and, after
every ``T`` adaptation steps, reset everything to the state at setup:

    theta_t = theta_0   and   ETA state (optimizer moments, probability average m) <- initial,
    whenever t is a multiple of T (t: adaptation steps taken since setup or the last reset).

**What counts as an update, and when the reset happens** (matched to MD): one update is one
adaptation step, i.e. one forward-and-adapt on a batch, counted whether or not ETA's filters
selected a sample (MD increments ``performed_updates`` after every ``forward_and_adapt`` call,
also when EATA skipped the optimizer step). The reset comes *after* that step: the batch that
completes the T-th update is predicted and adapted on by the adapted model (its logits are
returned), and the next batch starts from the source model. The reset is :meth:`Method.reset`
itself (the setup snapshot of the affine parameters, a fresh optimizer, the redundancy
average forgotten, the update counter zeroed), so it is bit-exact by the same test as every reset.

With ``steps > 1`` updates are still counted per step; a reset between two steps of one batch
(which MD would do) is not supported: ``reset_every`` must be a multiple of ``steps``, refused
otherwise in one line. Difference from MD in the *episodic* setting: tta's reset before each
domain zeroes the counter (all method state returns to setup); MD never zeroes
``performed_updates``, so with a period that does not divide a domain's updates MD's resets
fall elsewhere. In the continual setting (RDumb's) both count from the start of the stream.

Defaults, mariodoebler/test-time-adaptation (MD) at commit 8b2ed63:
``classification/cfgs/cifar10_c/rdumb.yaml`` line 3 (``MODEL.RESET_AFTER_NUM_UPDATES 1000``, the
paper's period), lines 27-35 (Adam, 1 step, beta 0.9, lr 1e-3, wd 0, ``EATA.FISHER_ALPHA 0.0``,
``EATA.D_MARGIN 0.4``; i.e. ETA); ``classification/conf.py`` line 225 (``EATA.MARGIN_E0 0.4``).
The counting and the reset: ``classification/methods/base.py`` lines 111-118 (batches) and
``methods/eata.py`` lines 143-147 (``reset`` also forgets ``current_model_probs``).

Batch size 1: as ETA (the filters see the single sample; conv layers normalize with its
spatial statistics); each batch of one is one update. (MD instead buffers single samples into
a sliding window and counts one update per full window; that protocol is not replicated.)
"""

from __future__ import annotations

import torch

from tta.errors import UserError
from tta.hparams import HParam
from tta.methods.eta import ETA
from tta.registry import register_method


@register_method("rdumb")
class RDumb(ETA):
    """RDumb (Press et al. 2023): ETA, reset to the source model every reset_every updates."""

    hparams = {
        **ETA.hparams,
        "reset_every": HParam(1000, "adaptation steps between two full resets to the source model", 1, 10**9,
                              search=(250, 500, 1000, 2000)),
    }

    def __init__(self, **overrides):
        super().__init__(**overrides)
        if self.hp["reset_every"] % self.hp["steps"]:
            raise UserError(f"rdumb: reset_every={self.hp['reset_every']} must be a multiple of "
                            f"steps={self.hp['steps']} (resets fall between batches)")

    def configure(self, model):
        super().configure(model)
        self.updates = 0

    def reset_state(self):
        super().reset_state()
        self.updates = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        self.updates += self.hp["steps"]
        if self.updates == self.hp["reset_every"]:
            self.reset()
        return logits
