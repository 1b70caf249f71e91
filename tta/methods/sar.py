"""``sar``: sharpness-aware and reliable entropy minimization with model recovery.

Niu, Wu, Zhang, Wen, Chen, Zhao & Tan, "Towards Stable Test-Time Adaptation in Dynamic Wild
World" (ICLR 2023). As Tent, the normalization layers' affine parameters train online (BN
normalizes with the test batch's statistics, GroupNorm/LayerNorm as they are; see
:mod:`tta.methods.affine_adapt`), one step per batch, on the entropy ``E_i = H(softmax(z_i))``:

1. **Reliable samples** (Eqn. 2): ``S1 = {i : E_i(w) < E0}``, ``E0 = e0_factor * ln K``
   (:func:`~tta.methods.sample_selection.entropy_margin`), ``g = grad_w mean_{S1} E_i(w)``.
2. **Sharpness-aware step** (Eqns. 3-5): ``e = rho * g / ||g||`` (:mod:`tta.sharpness`, the step
   shared with DG's ``sam``); a second forward at ``w + e`` on the *same batch*, keeping the
   samples of ``S1`` that are still reliable there, ``S2 = {i in S1 : E_i(w + e) < E0}``; then
   ``w <- SGD step with grad_w mean_{S2} E_i(w + e)`` applied to the restored ``w``.
3. **Model recovery** (Sec. 4, "model recovery scheme"): ``ema <- mean_{S2} E_i(w + e)`` on the
   first batch, then ``ema <- 0.9 ema + (1 - 0.9) mean_{S2} E_i(w + e)`` (only when ``S2`` is not
   empty); after the step, ``ema < reset_constant_em`` resets the method to its snapshot
   (affine parameters, optimizer, ``ema``): a collapsing model has a very low entropy.

The logits returned are those of the first forward (before the step), as the reference.
An empty ``S1`` or ``S2`` gives a zero gradient (the mean over no sample is NaN, its gradient
zero; the EMA and ``diverged`` skip that NaN), and the SGD step is still taken, so momentum
carries on, as in the reference.

Which layers train (``adapts``): all normalization layers except the top of the network, by
name, as the reference's ``collect_params``: any name containing ``layer4`` (ResNets, e.g.
ResNet-50-GN), ``blocks.9``, ``blocks.10``, ``blocks.11`` (ViT-B) or ``norm.``, and the layer
named ``norm`` (ViT's final norm). Names are taken relative to the network inside tta's
input-normalizing wrapper (``Normalized.net``), as SAR's reference reads them on the bare timm
model. BatchNorm layers that do not train still normalize with test-batch statistics.

Defaults, mariodoebler/test-time-adaptation (MD) at commit 8b2ed63 (``classification/``):
``e0_factor`` 0.4: ``conf.py`` line 225 (``EATA.MARGIN_E0``, used by ``methods/sar.py`` line 34);
``reset_constant_em`` 0.2: ``conf.py`` line 231; EMA momentum 0.9: ``methods/sar.py`` lines 19-23;
``rho`` 0.05: the default of ``methods/sar.py``'s ``SAM`` (line 145; SAR never passes one);
optimizer SGD, momentum 0.9, no weight decay, no Nesterov: ``methods/sar.py`` line 140 (SGD with
``lr`` and ``OPTIM.MOMENTUM``, ``conf.py`` line 134, only), whatever ``OPTIM.METHOD`` says;
``lr`` 1e-3: ``cfgs/cifar10_c/sar.yaml`` line 30. MD's other settings: ImageNet-C ResNet-50
``lr`` 2.5e-4, batch 64 (``cfgs/imagenet_c/sar.yaml``); ViT and Swin always 1e-3 (``sar.py`` line 138).

Differences from MD, on purpose:

* **reset clears the SGD momentum.** MD restores its optimizer with ``load_state_dict`` on the
  ``SAM`` wrapper, which leaves the wrapped SGD's momentum buffers in place, so after MD's
  model recovery (and its episodic reset) the next steps still carry the old momentum. Here
  both resets return everything to the snapshot (the recovery is "reset the model to the
  original", and ``reset`` is exact by contract).
* **ViT's final norm stays frozen** behind a wrapper: MD wraps timm models in a
  ``normalize``/``model`` ``Sequential``, so its check ``name == "norm"`` never matches
  ``model.norm`` and MD trains that layer; SAR's own code (bare timm model) does not.

Batch size 1: the filters see the one sample; BN conv layers normalize with its spatial
statistics (a layer with one value per channel refuses, see :mod:`tta.methods.affine_adapt`);
MD instead buffers single images in a sliding window (``TEST.WINDOW_LENGTH``), which tta does not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tta import sharpness
from tta.hparams import HParam
from tta.methods.affine_adapt import OPTIMIZERS, AffineAdaptMethod, GradTestBatchNorm, optimizer_hparams
from tta.methods.eta import selection_hparams
from tta.methods.sample_selection import entropy_margin, select
from tta.methods.tent import softmax_entropy
from tta.models.registry import Normalized
from tta.registry import register_method

#: weight of the old value in the loss EMA (MD ``methods/sar.py`` ``update_ema``, ``alpha=0.9``)
EMA_MOMENTUM = 0.9
#: layers left out by name (MD ``methods/sar.py`` ``collect_params``, lines 92-103)
EXCLUDED_SUBSTRINGS = ("layer4", "blocks.9", "blocks.10", "blocks.11", "norm.")
EXCLUDED_NAMES = ("norm",)


@register_method("sar")
class SAR(AffineAdaptMethod):
    """SAR (Niu et al. 2023): reliable entropy, SAM step on the norm affine parameters, recovery by loss EMA."""

    hparams = {
        "e0_factor": selection_hparams()["e0_factor"],
        "rho": HParam(0.05, "SAM radius of the weight perturbation", 0.0, 10.0, search=(0.01, 0.02, 0.05, 0.1)),
        "reset_constant_em": HParam(0.2, "model recovery: reset when the EMA of the sharpness-aware loss falls "
                                    "below this (nats)", 0.0, 10.0, search=(0.1, 0.2, 0.3)),
        **optimizer_hparams(lr=1e-3),
        "optimizer": HParam("sgd", f"base optimizer of the SAM step: {', '.join(OPTIMIZERS)}",
                            search=tuple(OPTIMIZERS)),
    }

    def configure(self, model: nn.Module) -> None:
        self._prefix = "net." if isinstance(model, Normalized) else ""
        super().configure(model)
        self.ema: float | None = None
        self.recoveries = 0

    def adapts(self, name: str, layer: nn.Module) -> bool:
        relative = name.removeprefix(self._prefix)
        return relative not in EXCLUDED_NAMES and not any(s in relative for s in EXCLUDED_SUBSTRINGS)

    def make_layer(self, bn):
        return GradTestBatchNorm(bn)

    def reset_state(self) -> None:
        super().reset_state()
        self.ema = None

    def row_extra(self) -> dict[str, Any]:
        return {"sar_recoveries": self.recoveries}  # model recoveries since setup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < self.min_batch_for_step:
            with torch.no_grad():
                return self.model(x)
        with torch.enable_grad():
            for _ in range(self.hp["steps"]):
                logits = self.step(x)
        return logits

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One SAR step on ``x``; returns the logits of the first forward (detached)."""
        logits = self.model(x)
        entropy = softmax_entropy(logits)
        threshold = entropy_margin(logits.shape[1], self.hp["e0_factor"])
        reliable = select(logits, entropy, threshold, None)
        # the mean of no sample is NaN and back-propagates zeros, as the reference's (no step skipped)
        grads = torch.autograd.grad(entropy[reliable].mean(0), self.params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
        kept = []

        def sharp_loss() -> torch.Tensor:
            again = softmax_entropy(self.model(x))[reliable]
            kept.append(again[again < threshold])
            return kept[0].mean(0)

        loss = sharpness.perturbed_backward(self.params, sharpness.ascent(grads, self.hp["rho"]), sharp_loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if kept[0].numel():
            self._last_loss = loss.detach()
            self.update_ema(loss.item())
        if self.ema is not None and self.ema < self.hp["reset_constant_em"]:
            self.recoveries += 1
            self.reset()
        return logits.detach()

    def update_ema(self, loss: float) -> None:
        """``ema <- loss`` at first, then ``0.9 ema + (1 - 0.9) loss`` (Python floats, as the reference)."""
        self.ema = loss if self.ema is None else EMA_MOMENTUM * self.ema + (1 - EMA_MOMENTUM) * loss
