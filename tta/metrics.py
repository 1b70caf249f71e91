"""Per-domain classification metrics, accumulated batch by batch on the device.

* ``error``: top-1 error in percent.
* ``nll``: mean negative log-likelihood (cross-entropy of the softmax) in nats.
* ``ece``: expected calibration error in percent, 15 equal-width confidence bins
  (Guo et al., ICML 2017): ``sum_b |B_b|/n * |acc(B_b) - conf(B_b)|``.

Sums stay tensors on the device until :meth:`compute`, so no per-batch host sync.

Non-finite outputs (a method that returns NaN or inf for some examples) are scored, not
fatal: an example whose logits row holds any non-finite value counts as **wrong** for
``error``, and as the uniform prediction ``1/C`` for ``nll`` (``log C``) and ``ece``
(confidence ``1/C``, accuracy 0): a method gains nothing by giving up on an example. Their
number is reported in ``extra.nonfinite_logits`` (the runner stores it in the row).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tta.errors import UserError
from tta.registry import TASKS

ECE_BINS = 15


class Metrics:
    """Base of a task's metric accumulator (``TASKS`` registry, chosen by the spec's ``task``)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def expected_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """The output shape a method must return for input ``x``."""
        raise NotImplementedError

    def update(self, output: torch.Tensor, labels: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        """At least ``n`` and ``error`` (percent, lower is better)."""
        raise NotImplementedError


@TASKS.register("classification")
class ClassificationMetrics(Metrics):
    def __init__(self, num_classes: int, bins: int = ECE_BINS) -> None:
        super().__init__(num_classes)
        self.bins = bins
        self.n = 0
        self._correct = self._nll = self._nonfinite = None
        self._bin_count = self._bin_conf = self._bin_acc = None

    def expected_shape(self, x):
        return (x.shape[0], self.num_classes)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.no_grad():
            logits = logits.detach().float()
            finite = torch.isfinite(logits).all(dim=1)
            logits = torch.where(finite[:, None], logits, torch.zeros((), device=logits.device))  # uniform
            log_probs = F.log_softmax(logits, dim=1)
            confidence, prediction = log_probs.max(dim=1)
            confidence = confidence.exp()
            correct = ((prediction == labels) & finite).float()
            try:
                nll = F.nll_loss(log_probs, labels, reduction="sum")
            except IndexError as exc:  # readers validate labels on load; this guards readers that cannot
                raise UserError(f"a label is outside 0..{self.num_classes - 1} ({exc})") from None
            bin_index = (confidence * self.bins).long().clamp_(max=self.bins - 1)
            counts = torch.bincount(bin_index, minlength=self.bins).float()
            conf_sum = torch.bincount(bin_index, weights=confidence, minlength=self.bins)
            acc_sum = torch.bincount(bin_index, weights=correct, minlength=self.bins)
            nonfinite = (~finite).sum()
            if self._correct is None:
                self._correct, self._nll, self._nonfinite = correct.sum(), nll, nonfinite
                self._bin_count, self._bin_conf, self._bin_acc = counts, conf_sum, acc_sum
            else:
                self._correct += correct.sum()
                self._nll += nll
                self._nonfinite += nonfinite
                self._bin_count += counts
                self._bin_conf += conf_sum
                self._bin_acc += acc_sum
            self.n += len(labels)

    def compute(self) -> dict[str, float]:
        if not self.n:
            return {"n": 0, "error": float("nan"), "nll": float("nan"), "ece": float("nan"),
                    "extra": {"nonfinite_logits": 0}}
        gap = (self._bin_acc - self._bin_conf).abs().sum()
        return {
            "n": self.n,
            "error": 100.0 * (1.0 - self._correct.item() / self.n),
            "nll": self._nll.item() / self.n,
            "ece": 100.0 * gap.item() / self.n,
            "extra": {"nonfinite_logits": int(self._nonfinite.item())},
        }
