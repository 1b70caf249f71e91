"""Hyperparameters: one declaration per method, with a default and a search range.

As DomainBed's ``hparams_registry``: the default is what a run uses unless ``--hp key=value``
overrides it; ``search`` is the range a sweep samples from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tta.errors import UserError


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: default, type, allowed interval and random-search range."""

    default: Any
    help: str = ""
    low: float | None = None
    high: float | None = None
    search: tuple[Any, ...] = ()

    def coerce(self, name: str, value: Any) -> Any:
        kind = type(self.default)
        if isinstance(value, str) and kind is not str:
            try:
                value = _parse_text(value, kind)
            except ValueError:
                raise UserError(f"hyperparameter {name}={value!r} is not a valid {kind.__name__}") from None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind):
            raise UserError(f"hyperparameter {name}={value!r} must be a {kind.__name__}")
        if kind is float and not math.isfinite(value):  # NaN passes every bounds check: refuse it by name
            raise UserError(f"hyperparameter {name}={value!r} must be a finite number")
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            raise UserError(f"hyperparameter {name}={value!r} is outside [{self.low}, {self.high}]")
        return value


def _parse_text(text: str, kind: type) -> Any:
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    return kind(text)


def resolve(owner: str, declared: dict[str, HParam], overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with validated overrides; unknown keys are a :class:`UserError`."""
    import difflib

    unknown = [k for k in overrides if k not in declared]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(declared), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        known = ", ".join(sorted(declared)) or "none"
        raise UserError(f"{owner} has no hyperparameter {unknown[0]!r}{hint} (it has: {known})")
    values = {k: p.default for k, p in declared.items()}
    values.update({k: declared[k].coerce(k, v) for k, v in overrides.items()})
    return values


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """``["lr=0.001", "steps=1"]`` -> ``{"lr": "0.001", "steps": "1"}``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--hp expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out
