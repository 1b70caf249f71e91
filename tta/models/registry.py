"""Model registry: ``@register_model(name, mean=..., std=...)`` factories and ``create_model``.

Every created model takes RGB images in [0, 1]; the input normalization (and, for a
network trained on BGR input, the channel order) of its checkpoint family is part of the
model (:class:`Normalized`), so protocols never normalize. A registration may also declare
how its checkpoints' keys are adapted (``drop_keys``, ``remap_keys``; applied by
:func:`tta.models.checkpoint.load_into`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from tta.download import sha256_of
from tta.errors import UserError
from tta.registry import MODELS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IDENTITY_MEAN = (0.0, 0.0, 0.0)
IDENTITY_STD = (1.0, 1.0, 1.0)

#: where the built-in checkpoints ship (package data, see :func:`packaged_weights`)
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights"


CHANNEL_ORDERS = ("rgb", "bgr")

#: a checkpoint key-remapping hook: the file's state dict in, the model's key names out
RemapKeys = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ModelEntry:
    factory: Callable[..., nn.Module]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    doc: str
    #: segmentation: input sides are padded to a multiple of this (the network's stride), see :mod:`tta.models.seg_inference`
    input_multiple: int = 32
    #: checkpoint adaptors and input channel order, see :func:`register_model`
    channel_order: str = "rgb"
    drop_keys: tuple[str, ...] = ()
    remap_keys: RemapKeys | None = None
    #: classification: attribute of the network holding its final ``nn.Linear`` (see :mod:`tta.models.split`)
    head: str | None = None


def register_model(name: str, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_multiple: int = 32, *,
                   channel_order: str = "rgb", drop_keys: tuple[str, ...] = (), remap_keys: RemapKeys | None = None,
                   head: str | None = None):
    """Register ``factory(num_classes=...) -> nn.Module``, its checkpoints' input normalization and, for a
    segmenter, the multiple its input sides are padded to (its output stride; default 32).

    ``mean`` / ``std`` are per channel in the order the network takes its channels.
    ``channel_order="bgr"``: the network was trained on BGR input (Caffe, OpenCV, mmseg
    without ``bgr_to_rgb``); :class:`Normalized` reverses the channels of the RGB images
    every protocol yields. ``drop_keys``: key prefixes of checkpoint tensors the model does
    not have (auxiliary heads, e.g. torchvision DeepLab's ``aux_classifier.``), dropped on
    load. ``remap_keys``: a hook renaming a checkpoint's keys to the model's, called after
    wrappers and ``module.`` / ``model.`` prefixes are removed (:mod:`tta.models.checkpoint`).
    ``head``: for a classifier, the attribute of the network that is its final ``nn.Linear`` on the
    penultimate features (the feature extractor / classifier split of :mod:`tta.models.split`).
    """
    if channel_order not in CHANNEL_ORDERS:
        raise UserError(f"model {name!r}: channel_order must be one of {', '.join(CHANNEL_ORDERS)}, "
                        f"got {channel_order!r}")

    def decorate(factory):
        doc = (factory.__doc__ or "").strip().splitlines()
        MODELS.add(name, ModelEntry(factory, tuple(mean), tuple(std), doc[0] if doc else "", int(input_multiple),
                                    channel_order=channel_order, drop_keys=tuple(drop_keys),
                                    remap_keys=remap_keys, head=head))
        return factory

    return decorate


#: created network -> its registration, so :func:`tta.models.checkpoint.load_into` applies
#: the model's declared key adaptors to the network it is handed (``model.net``)
_ENTRY_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def entry_of(net: nn.Module) -> ModelEntry | None:
    """The registration ``net`` was created from by :func:`create_model` (``None`` for any other network)."""
    return _ENTRY_OF.get(net)


class Normalized(nn.Module):
    """``net((x - mean) / std)``: the wrapped network (``.net``) sees its training normalization.

    ``channel_order="bgr"``: the RGB input's channels are reversed first, so a network trained
    on BGR images sees BGR (``mean`` / ``std`` are then in BGR order too). ``classifier_head``: the
    registration's ``head`` (the attribute of ``net`` that is its final ``nn.Linear``), carried by the
    wrapper so that copies of the model keep it (:mod:`tta.models.split`); ``None``: none declared.
    """

    classifier_head: str | None = None

    def __init__(self, net: nn.Module, mean, std, channel_order: str = "rgb",
                 classifier_head: str | None = None) -> None:
        super().__init__()
        if channel_order not in CHANNEL_ORDERS:
            raise UserError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {channel_order!r}")
        self.net = net
        self.channel_order = channel_order
        self.classifier_head = classifier_head
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """RGB images in [0, 1] -> what the network was trained on (channel order, then mean and std)."""
        if self.channel_order == "bgr":
            x = x.flip(1)
        return (x - self.mean) / self.std

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        """Exactly what ``forward`` feeds ``self.net`` (for methods that run a copy of the network)."""
        return self.normalize(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def extra_repr(self) -> str:
        return f"channel_order={self.channel_order}"


def create_model(name: str, num_classes: int, task: str = "classification") -> Normalized:
    """A registered model, else any timm model by name (random init; load weights separately).

    For ``task="segmentation"`` a :class:`tta.models.seg_inference.PaddedSegmenter`: inputs padded to the
    model's ``input_multiple``, logits cropped back to the input size.
    """
    if name in MODELS and task == "segmentation":
        from tta.models.seg_inference import PaddedSegmenter

        entry = MODELS.get(name)
        net = entry.factory(num_classes=num_classes)
        _ENTRY_OF[net] = entry
        segmenter = PaddedSegmenter(net, entry.mean, entry.std, entry.input_multiple)
        segmenter.channel_order = entry.channel_order
        return segmenter
    if name in MODELS:
        entry = MODELS.get(name)
        net = entry.factory(num_classes=num_classes)
        _ENTRY_OF[net] = entry
        return Normalized(net, entry.mean, entry.std, entry.channel_order, classifier_head=entry.head)
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dependency
        raise UserError(MODELS.unknown_message(name)) from None
    if not timm.list_models(name):
        close = MODELS.unknown_message(name)
        raise UserError(f"{close}; it is not a timm model name either")
    net = timm.create_model(name, pretrained=False, num_classes=num_classes)
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    return Normalized(net, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))


def packaged_weights(filename: str, sha256: str) -> Path:
    """``tta/models/weights/<filename>``, a built-in checkpoint shipped with the package, sha256-checked.

    The built-in offline models (``builtin:smoke_cnn``, ``builtin:street_seg``) ship as files
    rather than being trained on first use: float results of CPU training depend on the
    processor, so only shipped bytes give every machine the same model and the same numbers.
    A missing or altered file is a one-line :class:`UserError` naming it and the expected hash.
    """
    path = PACKAGED_WEIGHTS / filename
    if not path.is_file():
        raise UserError(f"built-in weights {path} are missing (expected sha256 {sha256}); reinstall tta-bench")
    actual = sha256_of(path)
    if actual != sha256:
        raise UserError(f"built-in weights {path} have sha256 {actual}, expected {sha256}; "
                        f"the file is damaged or was replaced: reinstall tta-bench")
    return path
