"""Weight averaging shared by the teacher-student methods (``cotta``, ``rotta``, ``roid``, ``cmf``...).

One step, written once: the exponential moving average of one set of tensors towards another,

    t <- m * t + (1 - m) * s        (elementwise; m the momentum, in [0, 1])

used as the mean teacher of Tarvainen & Valpola (NeurIPS 2017) by CoTTA (Wang et al., CVPR 2022,
Eq. 2, ``m = 0.999``), RoTTA (Yuan et al., CVPR 2023, Eq. 6) and AdaContrast's momentum encoder,
and towards the *source* weights by ROID's weight ensembling (Marsden et al., WACV 2024, Sec. 3.3).
The float operations are those of mariodoebler/test-time-adaptation 8b2ed63
(``classification/utils/misc.py`` ``ema_update_model``: ``m * t + (1 - m) * s`` with ``1 - m``
computed in Python), so a method using this step can be compared with MD bit for bit. ``m = 1``
leaves ``t`` untouched (MD skips the update then too).

``frozen_copy`` makes the teacher: a deep copy that never trains (no gradients) and whose
tensors a method declares for its exact reset like any other state.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn


@torch.no_grad()
def ema_update_(targets: Iterable[torch.Tensor], sources: Iterable[torch.Tensor], momentum: float) -> None:
    """In place ``t <- momentum * t + (1 - momentum) * s`` for each pair (no-op when ``momentum >= 1``)."""
    if momentum >= 1.0:
        return
    for target, source in zip(targets, sources, strict=True):
        target.copy_(momentum * target + (1 - momentum) * source)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every parameter's ``requires_grad`` off (a teacher)."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher
