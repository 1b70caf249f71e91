"""Semantic-segmentation metrics (task ``segmentation``), accumulated over a whole domain.

* ``miou``: mean intersection over union in percent from ONE ``C x C`` confusion matrix
  ``M[t, p]`` (pixels of true class ``t`` predicted as ``p``) summed over every labelled
  pixel of the domain (as the Cityscapes benchmark scores, not a mean of per-image scores):

      IoU_c = M[c, c] / (sum_p M[c, p] + sum_t M[t, c] - M[c, c]),   mIoU = mean over classes
      with a non-empty union (classes absent from both labels and predictions are skipped).

* ``error`` = 100 - mIoU, so "lower is better" holds for every task's leaderboard.
* ``nll``, ``ece``: pixel-level negative log-likelihood and 15-bin calibration error over
  the labelled pixels (the classification definitions of :mod:`tta.metrics`, per pixel).
* ``extra``: ``miou``, per-class ``iou`` (percent; ``None`` where the union is empty),
  ``pixel_accuracy`` and ``nonfinite_logits``; the runner stores it in the row's ``extra``.

Non-finite logits (NaN/inf at a labelled pixel, after upsampling) never crash the metric:
such a pixel counts as wrong, i.e. a false negative of its true class with no predicted
class (``missed[t]`` joins class ``t``'s union and the pixel-accuracy denominator), and as
the uniform prediction for ``nll``/``ece`` (:mod:`tta.metrics`); ``nonfinite_logits`` is
their number of pixels.

Labels are integer maps ``N x H x W`` with ``255`` = ignored. Logits ``N x C x h x w`` of
another size are upsampled bilinearly (``align_corners=False``) to the label size first,
one image at a time (full Cityscapes labels are 1024 x 2048). So logits may come at any
resolution (:meth:`SegmentationMetrics.expected_shape` leaves ``h x w`` free): at the
input size, or at the 1/8 resolution many segmenters predict at, as mmseg's
``resize(..., mode="bilinear", align_corners=False)`` to the label size does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tta.metrics import ClassificationMetrics, Metrics
from tta.registry import TASKS

IGNORE_INDEX = 255


def iou_from_confusion(confusion: torch.Tensor, missed: torch.Tensor | None = None) -> torch.Tensor:
    """Per-class IoU (fraction, float64) from a ``C x C`` confusion matrix; NaN where the union is 0.

    ``missed[t]``: pixels of true class ``t`` without a prediction (non-finite logits), false
    negatives of ``t`` that are no class's false positive.
    """
    confusion = confusion.double()
    hits = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - hits
    if missed is not None:
        union = union + missed.double()
    return torch.where(union > 0, hits / union.clamp_min(1), torch.full_like(hits, math.nan))


def mean_iou(confusion: torch.Tensor, missed: torch.Tensor | None = None) -> float:
    """mIoU (fraction) over the classes with a non-empty union; NaN if there is none."""
    iou = iou_from_confusion(confusion, missed)
    valid = ~iou.isnan()
    return iou[valid].mean().item() if valid.any() else math.nan


@TASKS.register("segmentation")
class SegmentationMetrics(Metrics):
    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.n = 0
        self.confusion: torch.Tensor | None = None
        self.missed: torch.Tensor | None = None
        self._pixels = ClassificationMetrics(num_classes)

    def expected_shape(self, x: torch.Tensor) -> tuple[int | None, ...]:
        """``N x C x any x any``: logits at input size, or at a lower resolution (a network predicting
        at 1/8 scale), are upsampled to the label size in :meth:`update`; ``None`` = any size."""
        return (x.shape[0], self.num_classes, None, None)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.no_grad():
            if self.confusion is None:
                self.confusion = torch.zeros(self.num_classes ** 2, dtype=torch.int64, device=logits.device)
                self.missed = torch.zeros(self.num_classes, dtype=torch.int64, device=logits.device)
            for image_logits, label in zip(logits.detach().float(), labels.long()):
                if image_logits.shape[-2:] != label.shape[-2:]:
                    image_logits = F.interpolate(image_logits[None], size=label.shape[-2:], mode="bilinear",
                                                 align_corners=False)[0]
                valid = (label != IGNORE_INDEX) & (label >= 0) & (label < self.num_classes)
                pixel_logits = image_logits.permute(1, 2, 0)[valid]  # P x C
                truth = label[valid]
                if truth.numel():
                    finite = torch.isfinite(pixel_logits).all(1)
                    prediction = pixel_logits.argmax(1)
                    self.confusion += torch.bincount((truth * self.num_classes + prediction)[finite],
                                                     minlength=self.num_classes ** 2)
                    self.missed += torch.bincount(truth[~finite], minlength=self.num_classes)
                    self._pixels.update(pixel_logits, truth)
                self.n += 1

    def compute(self) -> dict[str, float]:
        if self.confusion is None or not self._pixels.n:
            return {"n": self.n, "error": math.nan, "nll": math.nan, "ece": math.nan,
                    "extra": {"miou": None, "iou": None, "pixel_accuracy": None, "nonfinite_logits": 0}}
        confusion = self.confusion.view(self.num_classes, self.num_classes).cpu()
        missed = self.missed.cpu()
        miou = 100.0 * mean_iou(confusion, missed)
        iou = [None if math.isnan(v) else 100.0 * v for v in iou_from_confusion(confusion, missed).tolist()]
        pixels = self._pixels.compute()
        accuracy = 100.0 * confusion.diagonal().sum().item() / (confusion.sum() + missed.sum()).item()
        return {"n": self.n, "error": 100.0 - miou, "nll": pixels["nll"], "ece": pixels["ece"],
                "extra": {"miou": miou, "iou": iou, "pixel_accuracy": accuracy,
                          "nonfinite_logits": int(missed.sum().item())}}
