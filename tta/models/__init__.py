"""Models: registered CIFAR ResNets, WideResNet-28-10, the smoke CNN, and any timm model by name.

Every model from :func:`create_model` takes images in [0, 1] and normalizes internally.
Names that are not registered here are looked up in timm (``pretrained=False``; load
weights with ``--checkpoint``).
"""

from tta.models import cifar_resnet, deeplab, smoke_cnn, street_seg, wide_resnet  # noqa: F401
from tta.models.checkpoint import load_into
from tta.models.registry import Normalized, create_model, register_model

__all__ = ["Normalized", "create_model", "load_into", "register_model"]
