"""Classification metrics against hand computations."""

import math

import pytest
import torch

from tta.metrics import ClassificationMetrics


def test_error_nll_ece_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.5]])
    labels = torch.tensor([0, 0, 0, 1])
    metrics = ClassificationMetrics(num_classes=2)
    metrics.update(logits[:2], labels[:2])
    metrics.update(logits[2:], labels[2:])
    out = metrics.compute()
    probs = logits.softmax(1)
    nll = -sum(math.log(probs[i, labels[i]]) for i in range(4)) / 4
    conf = probs.max(1).values
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0])
    bins = (conf * 15).long()
    ece = sum(abs(correct[bins == b].sum() - conf[bins == b].sum()) for b in bins.unique()) / 4
    assert out["n"] == 4 and out["error"] == pytest.approx(25.0)
    assert out["nll"] == pytest.approx(nll, rel=1e-6)
    assert out["ece"] == pytest.approx(100 * float(ece), rel=1e-5)


def test_perfectly_confident_and_right_is_zero_everything():
    metrics = ClassificationMetrics(num_classes=3)
    metrics.update(torch.tensor([[50.0, 0, 0], [0, 50.0, 0]]), torch.tensor([0, 1]))
    out = metrics.compute()
    assert out["error"] == 0 and out["nll"] < 1e-15 and out["ece"] < 1e-9
