"""DeepLabV3 and DeepLabV3+ segmenters with ResNet-50/101 backbones; logits at input size.

* ``deeplabv3_resnet50`` / ``deeplabv3_resnet101``: torchvision's DeepLabV3 (Chen et al.,
  arXiv:1706.05587): dilated ResNet (output stride 8) + ASPP head (rates 12, 24, 36).
  Same module names as ``torchvision.models.segmentation.deeplabv3_resnet*`` without the
  auxiliary head, so torchvision-layout checkpoints load strictly; ``forward`` returns the
  logits tensor instead of torchvision's ``{"out": ...}`` dict.
* ``deeplabv3plus_resnet50`` / ``deeplabv3plus_resnet101``: DeepLabV3+ (Chen et al., ECCV
  2018): a timm ResNet at output stride 16, ASPP (1x1, 3x3 at rates 6/12/18, image
  pooling; 256 channels) and a decoder that fuses the ASPP output, upsampled x4, with the
  stride-4 features reduced to 48 channels, then two 3x3 convolutions and a 1x1 classifier.

Every model here exposes ``encoder`` (the backbone; its output, or its deepest output, is
the feature map encoder-adapting methods such as CMA align) and ``decoder``. Inputs are
normalized with the ImageNet mean and std inside the model (:class:`tta.models.Normalized`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

from tta.models.registry import register_model


class DeepLabV3Logits(DeepLabV3):
    """torchvision's DeepLabV3 returning the ``out`` logits tensor."""

    @property
    def encoder(self) -> nn.Module:
        return self.backbone

    @property
    def decoder(self) -> nn.Module:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)["out"]


def _deeplabv3(resnet, num_classes: int) -> DeepLabV3Logits:
    backbone = resnet(weights=None, replace_stride_with_dilation=[False, True, True])
    return DeepLabV3Logits(IntermediateLayerGetter(backbone, {"layer4": "out"}), DeepLabHead(2048, num_classes))


@register_model("deeplabv3_resnet50")
def deeplabv3_resnet50(num_classes: int = 19) -> DeepLabV3Logits:
    """DeepLabV3, ResNet-50 (torchvision layout, output stride 8); give --checkpoint."""
    return _deeplabv3(resnet50, num_classes)


@register_model("deeplabv3_resnet101")
def deeplabv3_resnet101(num_classes: int = 19) -> DeepLabV3Logits:
    """DeepLabV3, ResNet-101 (torchvision layout, output stride 8); give --checkpoint."""
    return _deeplabv3(resnet101, num_classes)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel 1x1, dilated 3x3 and image-pooling branches, fused by a 1x1."""

    def __init__(self, cin: int, cout: int = 256, rates: tuple[int, ...] = (6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(cin, cout), *(_conv_bn_relu(cin, cout, 3, r) for r in rates)])
        self.pool = _conv_bn_relu(cin, cout)
        self.project = _conv_bn_relu(cout * (len(rates) + 2), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(F.adaptive_avg_pool2d(x, 1)).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([*(branch(x) for branch in self.branches), pooled], dim=1))


class PlusDecoder(nn.Module):
    """DeepLabV3+ decoder: ASPP on the deep features, fused with reduced stride-4 features."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int) -> None:
        super().__init__()
        self.aspp = ASPP(high_channels)
        self.reduce = _conv_bn_relu(low_channels, 48)
        self.fuse = nn.Sequential(_conv_bn_relu(256 + 48, 256, 3), _conv_bn_relu(256, 256, 3))
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low, high = features
        context = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([context, self.reduce(low)], dim=1)))


class DeepLabV3Plus(nn.Module):
    def __init__(self, backbone: str, num_classes: int = 19) -> None:
        super().__init__()
        import timm

        self.encoder = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=(1, 4),
                                         output_stride=16)
        low, high = self.encoder.feature_info.channels()
        self.decoder = PlusDecoder(low, high, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.encoder(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model("deeplabv3plus_resnet50")
def deeplabv3plus_resnet50(num_classes: int = 19) -> DeepLabV3Plus:
    """DeepLabV3+, timm ResNet-50 backbone (output stride 16); give --checkpoint."""
    return DeepLabV3Plus("resnet50", num_classes)


@register_model("deeplabv3plus_resnet101")
def deeplabv3plus_resnet101(num_classes: int = 19) -> DeepLabV3Plus:
    """DeepLabV3+, timm ResNet-101 backbone (output stride 16); give --checkpoint."""
    return DeepLabV3Plus("resnet101", num_classes)
