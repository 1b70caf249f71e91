"""ViT-B/16 at 224 px through timm, registered with its checkpoints' input normalization.

Any timm name works with ``--model`` (random init, normalization from timm's default
pretrained config); this entry pins the one ViT the TTA literature reports (SAR, DeYO, ROID
and MD's ImageNet-C ViT runs use timm's ``vit_base_patch16_224``) to mean = std = 0.5 per
channel, the normalization of every timm ``vit_base_patch16_224`` tag (``augreg2_in21k_ft_in1k``,
``augreg_in21k_ft_in1k``, ``orig_in21k``; timm 1.0 ``pretrained_cfg``), not ImageNet's
mean/std: feeding ImageNet-normalized images costs a ViT several points of accuracy, a pitfall
documented in SAR's and DeYO's code. LayerNorm throughout: the entropy family adapts the
LayerNorm affine parameters (:mod:`tta.methods.affine_adapt`).
"""

from __future__ import annotations

from torch import nn

from tta.models.registry import register_model

VIT_MEAN = (0.5, 0.5, 0.5)
VIT_STD = (0.5, 0.5, 0.5)


@register_model("vit_base_patch16_224", mean=VIT_MEAN, std=VIT_STD, head="head")
def vit_base_patch16_224(num_classes: int = 1000) -> nn.Module:
    """ViT-B/16, 224 px, LayerNorm (timm; load weights with --checkpoint timm:vit_base_patch16_224.<tag>)."""
    import timm

    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=num_classes)
