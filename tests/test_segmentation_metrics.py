"""mIoU from one confusion matrix over the whole domain, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tta.registry import TASKS
from tta.segmentation_metrics import SegmentationMetrics


def one_hot_logits(prediction: torch.Tensor, classes: int) -> torch.Tensor:
    """Logits (N x C x H x W) whose argmax is ``prediction`` (N x H x W)."""
    return F.one_hot(prediction, classes).permute(0, 3, 1, 2).float() * 5.0


def test_miou_equals_hand_computed_value_over_two_batches():
    # truth / prediction per pixel (255 = ignored); two images in two separate batches
    truth = [torch.tensor([[[0, 0, 1]]]), torch.tensor([[[1, 2, 255]]])]
    prediction = [torch.tensor([[[0, 1, 1]]]), torch.tensor([[[1, 0, 2]]])]
    metrics = TASKS.get("segmentation")(4)  # class 3 never occurs: excluded from the mean
    for t, p in zip(truth, prediction):
        metrics.update(one_hot_logits(p, 4), t)
    result = metrics.compute()
    # confusion: t0 -> p0 1, p1 1;  t1 -> p1 2;  t2 -> p0 1
    # IoU0 = 1 / (2 + 2 - 1) = 1/3;  IoU1 = 2 / (2 + 3 - 2) = 2/3;  IoU2 = 0 / (1 + 0 - 0) = 0
    assert result["extra"]["iou"][:3] == pytest.approx([100 / 3, 200 / 3, 0.0])
    assert result["extra"]["iou"][3] is None
    assert result["extra"]["miou"] == pytest.approx(100 / 3)
    assert result["error"] == pytest.approx(100 - 100 / 3)
    assert result["extra"]["pixel_accuracy"] == pytest.approx(100 * 3 / 5)
    assert result["n"] == 2
    # a mean of per-image mIoUs would differ: image 1 -> (1/2 + 1/2)/2 = 1/2;
    # image 2 -> classes 0 (predicted once, never true), 1, 2: (0 + 1 + 0)/3 = 1/3
    per_image = []
    for t, p in zip(truth, prediction):
        single = SegmentationMetrics(4)
        single.update(one_hot_logits(p, 4), t)
        per_image.append(single.compute()["extra"]["miou"])
    assert per_image == pytest.approx([50.0, 100 / 3])
    assert sum(per_image) / 2 != pytest.approx(result["extra"]["miou"])


def test_logits_are_upsampled_bilinearly_to_the_label_size():
    # 2 x 2 logits, one class per quadrant; labels at 4 x 4 hold the same quadrants
    coarse = torch.tensor([[[0, 1], [2, 0]]])
    labels = coarse.repeat_interleave(2, 1).repeat_interleave(2, 2)
    metrics = SegmentationMetrics(3)
    metrics.update(one_hot_logits(coarse, 3), labels)
    assert metrics.compute()["extra"]["miou"] == pytest.approx(100.0)
    assert metrics.expected_shape(torch.zeros(5, 3, 7, 9)) == (5, 3, None, None)  # any h x w: upsampled


def test_pixel_nll_of_uniform_logits_is_log_c_and_empty_domain_is_nan():
    metrics = SegmentationMetrics(19)
    metrics.update(torch.zeros(1, 19, 4, 4), torch.full((1, 4, 4), 7))
    assert metrics.compute()["nll"] == pytest.approx(math.log(19), rel=1e-6)
    ignored = SegmentationMetrics(19)
    ignored.update(torch.zeros(1, 19, 2, 2), torch.full((1, 2, 2), 255))
    assert math.isnan(ignored.compute()["error"])
