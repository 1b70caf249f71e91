"""Models: registered CIFAR ResNets (BatchNorm; GroupNorm ResNet-26), WideResNet-28-10, ViT-B/16, the smoke CNN,
and any timm model by name.

Every model from :func:`create_model` takes images in [0, 1] and normalizes internally.
Names that are not registered here are looked up in timm (``pretrained=False``; load
weights with ``--checkpoint``).
"""

from tta.models import cifar_resnet, deeplab, resnet_gn, smoke_cnn, street_seg, vit, wide_resnet  # noqa: F401
from tta.models.checkpoint import load_into
from tta.models.registry import Normalized, create_model, register_model

__all__ = ["Normalized", "create_model", "load_into", "register_model"]
