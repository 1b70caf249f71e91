"""Segmentation inference as mmseg does it: pad the input to the network's stride, crop the logits back.

Every segmenter :func:`tta.models.create_model` makes for task ``segmentation`` is a
:class:`PaddedSegmenter`: the same :class:`~tta.models.registry.Normalized` wrapper (``.net``,
``.mean``, ``.std`` unchanged, so checkpoints, ``net.encoder`` and every method work as
before) whose ``forward`` makes any input size safe for the network:

* the normalized input is padded at the bottom and right up to a multiple of the model's
  declared ``input_multiple`` (``register_model(..., input_multiple=...)``, default 32): a
  network with skip connections across strided stages crashes on sizes it cannot halve
  evenly (ACDC's 540 rows: "Expected size 135 but got size 136");
* padding is **zero after normalization**, i.e. the dataset mean colour, as mmseg's
  ``SegDataPreProcessor`` (``pad_val=0`` after normalizing, bottom/right) does, so results
  match the convention most public segmentation checkpoints were evaluated with; it is
  also the value that leaves a BatchNorm's input mean least disturbed. (Reflect padding
  would invent mirrored structure at the border and fails when the pad exceeds the side.)
* the logits of a padded input are brought to the padded size (bilinear,
  ``align_corners=False``, only if the network predicts at a lower resolution) and cropped
  to the input's ``H x W``, as mmseg's ``postprocess_result`` does. An input that needs no
  padding passes straight through, so a network predicting at 1/8 resolution returns its
  1/8-resolution logits, which the metrics upsample to the label size
  (:mod:`tta.segmentation_metrics`).

Methods adapting on the padded batch see the padded pixels (a few rows at most); the
metrics never do.

Sliding-window inference (``--sliding-window crop,stride``, mmseg's ``mode="slide"``): with
:meth:`PaddedSegmenter.slide` set, ``forward`` runs the network on ``crop``-sized windows
``stride`` apart (the last window of a row or column flush with the image's edge, every
pixel covered), each padded and cropped as above and its logits brought to the window's
size (bilinear), and averages the overlapping logits; logits come back at input size.
Each window is one forward, so a method that adapts or takes batch statistics in
``forward`` does so per window, as it would on mmseg's crops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tta.errors import UserError
from tta.models.registry import Normalized


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """``(height, width)`` rounded up to multiples of ``multiple``."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


class PaddedSegmenter(Normalized):
    """``Normalized`` + zero padding (after normalization) to ``input_multiple`` and cropping the logits back."""

    def __init__(self, net, mean, std, input_multiple: int = 32) -> None:
        super().__init__(net, mean, std)
        self.input_multiple = int(input_multiple)
        #: ``((crop_h, crop_w), (stride_h, stride_w))`` of sliding-window inference; ``None``: whole image
        self.window: tuple[tuple[int, int], tuple[int, int]] | None = None

    def slide(self, crop: tuple[int, int], stride: tuple[int, int]) -> "PaddedSegmenter":
        """Use sliding-window inference from now on (``stride`` at most ``crop``, so windows overlap or touch)."""
        if any(s > c for s, c in zip(stride, crop)):
            raise UserError(f"sliding-window stride {stride[0]}x{stride[1]} exceeds the crop {crop[0]}x{crop[1]}; "
                            f"pixels between windows would never be predicted")
        self.window = (tuple(crop), tuple(stride))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window is None:
            return self.whole(x)
        (crop_h, crop_w), (stride_h, stride_w) = self.window
        height, width = x.shape[-2:]
        total = count = None
        for top in _starts(height, crop_h, stride_h):
            for left in _starts(width, crop_w, stride_w):
                window = x[..., top:top + crop_h, left:left + crop_w]
                logits = self.whole(window)
                if logits.shape[-2:] != window.shape[-2:]:
                    logits = F.interpolate(logits, size=window.shape[-2:], mode="bilinear", align_corners=False)
                if total is None:
                    total = logits.new_zeros((*logits.shape[:2], height, width))
                    count = logits.new_zeros((1, 1, height, width))
                total[..., top:top + crop_h, left:left + crop_w] += logits
                count[..., top:top + crop_h, left:left + crop_w] += 1
        return total / count

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized (channel order, mean, std) and zero-padded to ``input_multiple`` at the bottom and right."""
        height, width = x.shape[-2:]
        target = padded_size(height, width, self.input_multiple)
        normalized = self.normalize(x)
        if target == (height, width):
            return normalized
        return F.pad(normalized, (0, target[1] - width, 0, target[0] - height))

    def whole(self, x: torch.Tensor) -> torch.Tensor:
        """Whole-image inference: pad to ``input_multiple``, forward, crop the logits back."""
        height, width = x.shape[-2:]
        target = padded_size(height, width, self.input_multiple)
        if target == (height, width):
            return self.net(self.normalize(x))
        logits = self.net(self.network_input(x))
        if tuple(logits.shape[-2:]) != target:
            logits = F.interpolate(logits, size=target, mode="bilinear", align_corners=False)
        return logits[..., :height, :width]


def _starts(size: int, crop: int, stride: int) -> list[int]:
    """Window starts along one side (mmseg's grid): ``stride`` apart, the last one flush with the edge."""
    steps = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, size) - crop, 0) for i in range(steps)]


def parse_window(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """``"crop,stride"`` (each ``N`` for a square or ``HxW``), e.g. ``512,341`` or ``512x1024,341x683``."""
    from tta.protocols.spec import parse_size

    parts = text.split(",")
    if len(parts) != 2:
        raise UserError(f"--sliding-window {text!r} is not crop,stride (e.g. 512,341 or 512x1024,341x683)")
    crop, stride = (parse_size(p if "x" in p.lower() else f"{p}x{p}", f"--sliding-window {text!r}:") for p in parts)
    return crop, stride


def window_text(window: tuple[tuple[int, int], tuple[int, int]]) -> str:
    """``((512, 512), (341, 341))`` -> ``"512x512,341x341"`` (run identity, row ``extra``)."""
    return ",".join(f"{h}x{w}" for h, w in window)


def sliding_window(model, crop: tuple[int, int], stride: tuple[int, int]) -> PaddedSegmenter:
    """``model`` set to sliding-window inference; one :class:`UserError` line for a model that is not a segmenter."""
    if not isinstance(model, PaddedSegmenter):
        raise UserError("--sliding-window applies to segmentation protocols with a registered segmenter")
    return model.slide(crop, stride)
