"""DeepLabV3 and DeepLabV3+ segmenters with ResNet-50/101 backbones; logits at input size.

* ``deeplabv3_resnet50`` / ``deeplabv3_resnet101``: torchvision's DeepLabV3 (Chen et al.,
  arXiv:1706.05587): dilated ResNet (output stride 8) + ASPP head (rates 12, 24, 36).
  Same module names as ``torchvision.models.segmentation.deeplabv3_resnet*`` without the
  auxiliary head, so torchvision-layout checkpoints load strictly; their ``aux_classifier.*``
  tensors (a training-time head) are dropped on load (``drop_keys``). ``forward`` returns the
  logits tensor instead of torchvision's ``{"out": ...}`` dict. An mmseg DeepLabV3
  checkpoint (``state_dict`` + ``backbone.`` / ``decode_head.`` / ``auxiliary_head.``) is
  recognised and refused in one line: see :func:`refuse_mmseg_layout`.
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
from tta.errors import UserError
from tta.models.registry import register_model

#: torchvision's training-time auxiliary FCN head on layer3, absent here
TORCHVISION_AUX = ("aux_classifier.",)
MMSEG_HEADS = ("decode_head.", "auxiliary_head.")


def refuse_mmseg_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Key hook of the torchvision-layout DeepLabV3: a state dict in mmseg's layout is refused
    with the reason, any other passes unchanged.

    Checked against mmsegmentation's source (``mmseg/models/decode_heads/aspp_head.py``,
    ``mmseg/models/backbones/resnet.py``): mmseg's ``ResNet`` (V1b) backbone has torchvision's
    key names (``conv1``, ``bn1``, ``layerN.M.convK`` / ``bnK`` / ``downsample.0|1``), but the
    ``ResNetV1c`` its DeepLabV3 configs use has a 3-conv stem (``stem.0`` ... ``stem.7``) where
    torchvision has a 7x7 ``conv1``, and its ``ASPPHead`` (``image_pool``, ``aspp_modules``
    with dilations 1/12/24/36, a 3x3 ``bottleneck`` over the concatenation, ``conv_seg``; 512
    channels) is a different network from torchvision's ``DeepLabHead`` (ASPP with a 1x1
    ``project``, then a 3x3 conv and a 1x1 classifier; 256 channels). Renaming keys cannot
    make such a checkpoint compute what it computed in mmseg, so it is not attempted.
    """
    if not any(k.startswith(MMSEG_HEADS) for k in state):
        return state
    stem = (" and its ResNetV1c stem (backbone.stem.*) has no counterpart in torchvision's conv1"
            if any(k.startswith("backbone.stem.") for k in state) else "")
    raise UserError("the checkpoint is in mmseg's layout (backbone. / decode_head.): mmseg's DeepLabV3 ASPPHead "
                    "(image_pool, aspp_modules, a 3x3 bottleneck, conv_seg) is a different network from "
                    f"torchvision's DeepLabHead used here{stem}; no key mapping makes it fit, so it is not loaded "
                    "(wrap mmseg's own model as a plugin, see methods/README.md)")


class DeepLabV3Logits(nn.Module):
    """torchvision's DeepLabV3 (same modules, same state-dict keys ``backbone.*`` / ``classifier.*``)
    returning the logits tensor, upsampled bilinearly to the input size as torchvision's ``forward``.

    torchvision is imported only when such a model is built (``_deeplabv3``): importing it costs
    about 1.3 s, which every other run would pay at start-up.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    @property
    def encoder(self) -> nn.Module:
        return self.backbone

    @property
    def decoder(self) -> nn.Module:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.backbone(x)["out"])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _deeplabv3(depth: int, num_classes: int) -> DeepLabV3Logits:
    from torchvision.models import resnet50, resnet101
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    resnet = {50: resnet50, 101: resnet101}[depth]
    backbone = resnet(weights=None, replace_stride_with_dilation=[False, True, True])
    return DeepLabV3Logits(IntermediateLayerGetter(backbone, {"layer4": "out"}), DeepLabHead(2048, num_classes))


@register_model("deeplabv3_resnet50", drop_keys=TORCHVISION_AUX, remap_keys=refuse_mmseg_layout)
def deeplabv3_resnet50(num_classes: int = 19) -> DeepLabV3Logits:
    """DeepLabV3, ResNet-50 (torchvision layout, output stride 8); give --checkpoint."""
    return _deeplabv3(50, num_classes)


@register_model("deeplabv3_resnet101", drop_keys=TORCHVISION_AUX, remap_keys=refuse_mmseg_layout)
def deeplabv3_resnet101(num_classes: int = 19) -> DeepLabV3Logits:
    """DeepLabV3, ResNet-101 (torchvision layout, output stride 8); give --checkpoint."""
    return _deeplabv3(101, num_classes)


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
