"""Shared base of the methods that train normalization affine parameters online (``tent``, ``eta``, ``core``...).

Per test batch ``x`` and for ``steps`` steps (default 1, as Tent):

    logits = model(x)                      # BN layers normalize with make_layer's statistics
    loss   = self.loss(logits)             # label-free
    gamma, beta <- optimizer step on loss  # only the BN affine parameters train

and the logits of the last forward are returned: the prediction is made *before* the
last update, exactly as Tent's reference ``forward_and_adapt`` (DequanWang/tent), which
returns the outputs of the forward pass it back-propagates.

Which layers: every BatchNorm layer is swapped for ``make_layer(bn)`` (test-batch statistics
for the entropy family), and the affine ``gamma, beta`` of every GroupNorm and LayerNorm layer
(subclasses included, e.g. timm's ``LayerNorm2d``) train too, unchanged otherwise: the
normalization-agnostic recipe of MD's ``Tent.configure_model`` / ``collect_params``
(mariodoebler/test-time-adaptation 8b2ed63, ``classification/methods/tent.py``), which is
how Tent, EATA, SAR and DeYO adapt ResNet-GN and ViT models. ``adapts(name, layer)`` lets a
method leave named layers out (SAR's exclusions). A method that only makes sense with
BatchNorm statistics (``core``'s alpha-BN) sets ``requires_batchnorm`` and refuses other models.

Reset is exact: the affine parameters are declared in ``touched_tensors`` (the base class
snapshots and restores them) and the optimizer is rebuilt, which is its state at setup
(no step taken: empty moment buffers, step counters absent).

Batch statistics of one value: a layer whose statistics would come from a single value
per channel (batch size 1 on a layer without spatial extent) refuses with a
:class:`~tta.errors.UserError`; on conv layers a batch of 1 still has spatial statistics
(per-image statistics, as instance normalization), which is allowed.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta.errors import UserError
from tta.hparams import HParam
from tta.methods.base import Method, all_finite
from tta.methods.norm_layers import MixedBatchNorm, TestBatchNorm, replace_batchnorms

class GradTestBatchNorm(TestBatchNorm):
    """:class:`TestBatchNorm` with gradients through the batch statistics (train-mode BN, as Tent).

    ``F.batch_norm(training=True)`` without running buffers: normalizes with the biased
    mean and variance of ``x`` and back-propagates through them; source statistics untouched.
    """

    def forward(self, x):
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


class GradMixedBatchNorm(MixedBatchNorm):
    """:class:`MixedBatchNorm` with gradients through the test-batch part of the statistics."""

    def forward(self, x):
        mean, var = self.statistics(x)
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.view(shape) + shift.view(shape)


#: optimizer name -> factory(params, hp); the ``optimizer`` hyperparameter picks one
OPTIMIZERS: dict[str, Callable[[list[torch.Tensor], dict[str, Any]], torch.optim.Optimizer]] = {
    "adam": lambda params, hp: torch.optim.Adam(params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                                                weight_decay=hp["weight_decay"]),
    "sgd": lambda params, hp: torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"],
                                              weight_decay=hp["weight_decay"], nesterov=hp.get("nesterov", False)),
}


def nesterov_hparam(default: bool) -> dict[str, HParam]:
    """The ``nesterov`` switch of the SGD factory (methods whose reference uses Nesterov momentum)."""
    return {"nesterov": HParam(default, "Nesterov momentum (SGD only)", search=(True, False))}


def check_optimizer(method: str, hp: dict[str, Any]) -> None:
    """Refuse, in one line, an optimizer name :data:`OPTIMIZERS` lacks or Nesterov SGD without momentum."""
    if hp["optimizer"] not in OPTIMIZERS:
        raise UserError(f"method {method!r}: unknown optimizer {hp['optimizer']!r} "
                        f"(choose one of: {', '.join(OPTIMIZERS)})")
    if hp["optimizer"] == "sgd" and hp.get("nesterov") and hp["momentum"] <= 0.0:
        raise UserError(f"method {method!r}: Nesterov SGD needs momentum > 0 (or --hp nesterov=false)")


def optimizer_hparams(lr: float) -> dict[str, HParam]:
    """The optimizer's hyperparameters (Tent's CIFAR setting: Adam, lr 1e-3, betas (0.9, 0.999))."""
    return {
        "optimizer": HParam("adam", f"optimizer of the BN affine parameters: {', '.join(OPTIMIZERS)}",
                            search=tuple(OPTIMIZERS)),
        "lr": HParam(lr, "learning rate", 0.0, 10.0, search=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2)),
        "steps": HParam(1, "optimizer steps per test batch", 1, 100, search=(1, 2, 3)),
        "beta1": HParam(0.9, "Adam beta1", 0.0, 1.0),
        "beta2": HParam(0.999, "Adam beta2", 0.0, 1.0),
        "momentum": HParam(0.9, "SGD momentum", 0.0, 1.0),
        "weight_decay": HParam(0.0, "weight decay", 0.0, 1.0),
    }


#: normalization layers whose affine parameters train as they are (no statistics swapped in)
AFFINE_NORMALIZATIONS = (nn.GroupNorm, nn.LayerNorm)


class AffineAdaptMethod(Method):
    """Swap BN layers for ``make_layer(bn)``; train the affine parameters of every normalization
    layer (BN, GroupNorm, LayerNorm) on ``loss(logits)``."""

    compilable = True

    needs_grad = True
    #: ``True``: the method's statistics need BatchNorm layers; models without any are refused
    requires_batchnorm = False
    #: batches smaller than this are predicted without a step (the loss carries no signal there)
    min_batch_for_step = 1

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        check_optimizer(self.name, self.hp)
        self._last_loss: torch.Tensor | None = None

    # -- what subclasses define ------------------------------------------------------
    def make_layer(self, bn: nn.Module) -> nn.Module:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- the contract ------------------------------------------------------------------
    def adapts(self, name: str, layer: nn.Module) -> bool:
        """Whether the normalization layer ``name`` (its name in the model) trains. Default: all."""
        return True

    def configure(self, model: nn.Module) -> None:
        has_batchnorm = any(isinstance(m, _BatchNorm) for m in model.modules())
        if self.requires_batchnorm and not has_batchnorm:
            raise UserError(f"method {self.name!r} needs BatchNorm layers (its statistics are BatchNorm "
                            "statistics); the model has none")
        swapped = replace_batchnorms(model, self.make_layer) if has_batchnorm else []
        for layer in swapped:
            layer.register_forward_pre_hook(_refuse_single_value)
        swapped_ids = {id(layer) for layer in swapped}
        self.adapted_layers = [(name, layer) for name, layer in model.named_modules()
                       if (id(layer) in swapped_ids or isinstance(layer, AFFINE_NORMALIZATIONS))
                       and self.adapts(name, layer)]
        self.params = [p for _, layer in self.adapted_layers for p in (layer.weight, layer.bias) if p is not None]
        if not self.params:
            raise UserError(f"method {self.name!r} trains normalization affine parameters, but the model has no "
                            "BatchNorm, GroupNorm or LayerNorm layer with affine parameters it adapts")
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = OPTIMIZERS[self.hp["optimizer"]](self.params, self.hp)

    def touched_tensors(self) -> list[torch.Tensor]:
        return self.params

    def reset_state(self) -> None:
        self.optimizer = OPTIMIZERS[self.hp["optimizer"]](self.params, self.hp)
        self._last_loss = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < self.min_batch_for_step:
            with torch.no_grad():
                return self.model(x)
        with torch.enable_grad():
            for _ in range(self.hp["steps"]):
                logits = self.model(x)
                loss = self.loss(logits)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        self._last_loss = loss.detach()
        return logits.detach()

    def diverged(self) -> bool:
        """Non-finite affine parameters or a non-finite last loss."""
        tensors = self.params if self._last_loss is None else [*self.params, self._last_loss]
        return not all_finite(tensors)


def _refuse_single_value(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    x = inputs[0]
    if x.numel() // x.shape[1] < 2:  # values per channel = batch x spatial positions
        raise UserError(f"{type(layer).__name__} got one value per channel (input {tuple(x.shape)}): batch "
                        "statistics need a batch size of at least 2 on layers without spatial extent")
