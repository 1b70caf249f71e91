"""The feature extractor / classifier split of a classification model: ``logits = classifier(features(x))``.

Output-level and prototype methods (``lame``, ``t3a``, ``shot_im``) need the penultimate
features and the final linear layer separately. Each architecture declares its head once, in
its registration: ``@register_model(name, head="<attribute>")`` names the network's final
``nn.Linear`` (``resnet20``..``resnet56``: ``linear``; ``resnet26_gn``, ``wrn28_10``,
``smoke_cnn``: ``fc``; timm's ``vit_base_patch16_224``: ``head``), and :func:`create_model` hands it to
the :class:`~tta.models.registry.Normalized` wrapper (``classifier_head``, so deep copies keep it).
:func:`split_classifier` reads that declaration; a model without one (a timm model by name, a plugin model, a
segmenter) is refused with one :class:`~tta.errors.UserError` line.

``features`` takes images in [0, 1], as the model does (the input normalization of
:class:`~tta.models.registry.Normalized` stays inside), and returns the input the head receives
in the model's own forward: it runs the model and captures that input with a forward pre-hook
on the head (removed again after each call). So ``classifier(features(x))`` applies the same
layer to the same tensor as ``model(x)``: bit-identical logits, for every architecture, with no
per-architecture copy of its forward. The price is the head's matrix product, computed once and
discarded (10 x 64 multiply-adds per CIFAR image).
"""

from __future__ import annotations

import torch
from torch import nn

from tta.errors import UserError
from tta.models.registry import Normalized


class Features(nn.Module):
    """``model``'s penultimate features: the input of its head ``model.net.<head>``, images in [0, 1]."""

    def __init__(self, model: Normalized, head: str) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = getattr(self.model.net, self.head).register_forward_pre_hook(
            lambda _layer, inputs: captured.append(inputs[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        return captured[0]

    def extra_repr(self) -> str:
        return f"head={self.head}"


def split_classifier(model: nn.Module, who: str = "this method") -> tuple[Features, nn.Linear]:
    """``(features, classifier)`` of a registered classification model with a declared ``head``.

    ``who`` names the caller in the refusal (e.g. ``"method 'lame'"``).
    """
    net = getattr(model, "net", None)
    declared = model.classifier_head if isinstance(model, Normalized) else None
    name = type(net if net is not None else model).__name__
    if declared is None:
        raise UserError(f"{who} needs a feature extractor / classifier split, but model {name} declares no "
                        "classifier head (registered classification models declare it: register_model(..., "
                        "head='<attribute of the final nn.Linear>'))")
    head = getattr(net, declared, None)
    if not isinstance(head, nn.Linear):
        raise UserError(f"{who}: model {name} declares head {declared!r}, but its attribute {declared!r} is "
                        f"{type(head).__name__}, not an nn.Linear")
    return Features(model, declared), head
