"""Per-example losses between two predictions, shared by the teacher-student and consistency methods.

Both take logits and return one value per row (reduce in the method). The float operations are
those of mariodoebler/test-time-adaptation 8b2ed63 (``classification/methods/cotta.py``
``softmax_entropy`` and ``symmetric_cross_entropy``, ``classification/methods/roid.py``), so the
methods using them compare with MD bit for bit. The entropy of one prediction is
:func:`tta.methods.tent.softmax_entropy`.
"""

from __future__ import annotations

import torch


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """``-sum_c softmax(target)_c log softmax(logits)_c``: the cross-entropy of ``logits`` against a soft target."""
    return -(target_logits.softmax(1) * logits.log_softmax(1)).sum(1)


def symmetric_cross_entropy(view: torch.Tensor, anchor: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """``-(1 - alpha) sum p_anchor log p_view - alpha sum p_view log p_anchor`` (logits in, one value per row)."""
    return (-(1 - alpha) * (anchor.softmax(1) * view.log_softmax(1)).sum(1)
            - alpha * (view.softmax(1) * anchor.log_softmax(1)).sum(1))
