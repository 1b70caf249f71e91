"""Source networks for DG training: creation, ImageNet initialization, BatchNorm mode.

``pretrained``: ``none`` (random init), ``timm`` (timm's ImageNet weights; needs the
network once, then timm's cache), or a weights file (``--pretrained PATH``, offline). The
pretrained classifier (1000 ImageNet classes) is dropped and a fresh one of the
protocol's classes kept; every other tensor must load.

``bn = "frozen"`` keeps every BatchNorm layer in eval mode during training, as DomainBed's
ResNet does (its ``train()`` calls ``freeze_bn()``): the trained model carries the
pretrained **ImageNet** running statistics, and the affine parameters are trained.
``bn = "train"`` re-estimates the running statistics on the pooled source domains (the
only choice from random init). Which one a checkpoint carries decides what the
``source`` statistics of AdaBN / alpha-BN are at test time.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta.errors import UserError
from tta.models import Normalized, create_model
from tta.models.checkpoint import read_state_dict, resolve


def build_model(name: str, num_classes: int, pretrained: str) -> Normalized:
    model = create_model(name, num_classes)
    if pretrained != "none":
        transplant(model.net, pretrained_state(name, pretrained))
    return model


def pretrained_state(name: str, pretrained: str) -> dict[str, torch.Tensor]:
    if pretrained == "timm":
        import timm

        try:
            return timm.create_model(name, pretrained=True).state_dict()
        except Exception as exc:  # offline, unknown tag, hub errors
            raise UserError(f"cannot fetch timm's pretrained {name!r} ({type(exc).__name__}: {exc}); "
                            "offline, give --pretrained PATH to a weights file") from None
    return read_state_dict(resolve(pretrained))


def transplant(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``net`` except tensors whose shape differs (the old classifier)."""
    own = net.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in fitting and not k.endswith("num_batches_tracked")]
    if len(missing) > 2 or not all(_is_head(net, k) for k in missing):
        raise UserError(f"pretrained weights do not fit {type(net).__name__}: {len(missing)} tensors missing "
                        f"or mismatched (e.g. {missing[0] if missing else '?'}); only the classifier may differ")
    net.load_state_dict({**own, **fitting})


def _is_head(net: nn.Module, key: str) -> bool:
    module_name = key.rsplit(".", 1)[0]
    module = dict(net.named_modules()).get(module_name)
    return isinstance(module, nn.Linear)


def set_train_mode(model: nn.Module, bn: str) -> None:
    """``model.train()``, with BatchNorm layers back in eval mode when ``bn == "frozen"``."""
    model.train()
    if bn == "frozen":
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
