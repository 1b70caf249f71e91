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

Frozen BatchNorm without pretrained weights would keep every layer at mean 0 / variance 1
for the whole run (a model that is not a DG model, and nothing says so). :func:`bn_mode`
therefore decides: ``--bn frozen`` asked for explicitly with ``pretrained = none`` is
refused in one line; a recipe's default ``frozen`` with ``pretrained = none`` becomes
``train``, with a one-line notice the CLI prints. The mode actually used is part of the
training run's identity and of the checkpoint's metadata.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta.errors import UserError
from tta.models import Normalized, create_model
from tta.models.checkpoint import read_state_dict, resolve
from tta.training.spec import BN_MODES


def bn_mode(requested: str | None, recipe_bn: str, pretrained: str) -> tuple[str, str | None]:
    """``(mode, notice)``: the BatchNorm mode to train with, and a one-line notice when the
    recipe's default had to change (see the module docstring). ``requested`` is ``--bn``."""
    if requested is not None and requested not in BN_MODES:
        raise UserError(f"--bn must be one of {', '.join(BN_MODES)}, got {requested!r}")
    if pretrained != "none":
        return requested or recipe_bn, None
    if requested == "frozen":
        raise UserError("--bn frozen needs pretrained weights (--pretrained none trains from random init, "
                        "where frozen BatchNorm stays at mean 0 / variance 1); use --bn train or give --pretrained")
    if requested is None and recipe_bn == "frozen":
        return "train", ("note: --pretrained none (random init): BatchNorm trains its statistics "
                         "(bn = train instead of the recipe's frozen)")
    return "train", None


@lru_cache(maxsize=8)
def check_pretrained(name: str, num_classes: int, pretrained: str, stamp: tuple = ()) -> None:
    """Raise the one-line :class:`UserError` that :func:`build_model` would raise, before any work.

    Cached per (model, weights, file stamp) so a grid of trainings reads a weights file once;
    ``stamp`` is the file's (size, mtime) for a path, so a replaced file is checked again."""
    build_model(name, num_classes, pretrained)


def file_stamp(pretrained: str) -> tuple:
    """(size, mtime_ns) of a local weights file, ``()`` for ``none`` / ``timm`` / URLs."""
    if pretrained in ("none", "timm"):
        return ()
    try:
        stat = resolve(pretrained).stat()
    except OSError:
        return ()
    return (stat.st_size, stat.st_mtime_ns)


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
    try:
        return read_state_dict(resolve(pretrained))
    except UserError as exc:
        raise UserError(f"--pretrained: {exc}") from None


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
