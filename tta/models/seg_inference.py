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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tta.models.registry import Normalized


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """``(height, width)`` rounded up to multiples of ``multiple``."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


class PaddedSegmenter(Normalized):
    """``Normalized`` + zero padding (after normalization) to ``input_multiple`` and cropping the logits back."""

    def __init__(self, net, mean, std, input_multiple: int = 32) -> None:
        super().__init__(net, mean, std)
        self.input_multiple = int(input_multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        target = padded_size(height, width, self.input_multiple)
        normalized = (x - self.mean) / self.std
        if target == (height, width):
            return self.net(normalized)
        logits = self.net(F.pad(normalized, (0, target[1] - width, 0, target[0] - height)))
        if tuple(logits.shape[-2:]) != target:
            logits = F.interpolate(logits, size=target, mode="bilinear", align_corners=False)
        return logits[..., :height, :width]
