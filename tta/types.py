"""Core value types shared by protocols, methods, the runner and the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Domain:
    """One test domain of a protocol, e.g. ``gaussian_noise`` at severity 5."""

    name: str
    severity: int | None = None

    @property
    def key(self) -> str:
        """The domain's name in result rows and leaderboards (``gaussian_noise-5``)."""
        return self.name if self.severity is None else f"{self.name}-{self.severity}"


@dataclass
class Batch:
    """One test batch. ``x`` goes to the method; ``y`` goes only to the metrics.

    ``x`` is a float tensor in [0, 1], NCHW (normalization lives in the model);
    ``y`` the integer labels; ``index`` the position of each example in its domain's
    array (so any run can be traced back to the exact images it saw); ``extras`` holds
    label-free side inputs the protocol provides per example (e.g. ``reference``: a
    normal-condition image of the same place, float NCHW in [0, 1]). The runner passes a
    method only the side inputs it declares in ``Method.side_inputs``.
    """

    x: torch.Tensor
    y: torch.Tensor
    domain: str
    index: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class DomainResult:
    """The metrics of one domain (one cell of a run): what the store keeps as one row."""

    domain: str
    metrics: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)
