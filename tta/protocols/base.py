"""A protocol = a spec (what to run) + a dataset reader (where the images come from).

Dataset readers register with ``@DATASETS.register(name)`` and return, per domain, the
domain's images as uint8 NHWC and its labels. Ordering, batching and resets are the
scenario's job (:mod:`tta.scenarios`), not the reader's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tta.data.root import existing_root
from tta.errors import UserError
from tta.protocols.spec import ProtocolSpec
from tta.registry import DATASETS
from tta.types import Domain


@dataclass
class DomainData:
    images: np.ndarray  # uint8, N x H x W x C
    labels: np.ndarray  # int64, N
    source: str  # "official" | "generated" | "procedural" ...
    #: label-free side arrays indexed like ``images`` (e.g. ``reference`` images, uint8 NHWC)
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class DatasetReader:
    """Base class of dataset readers."""

    #: every domain the reader accepts, in canonical order
    domains: tuple[str, ...] = ()
    #: the domains a run uses when neither the spec nor the user names them (default: all)
    default_domains: tuple[str, ...] | None = None
    #: where the data came from, once :meth:`check` has looked (``official``, ``generated``,
    #: a provenance label...); part of the run's identity when set
    data_source: str | None = None
    #: :data:`tta.data.corruptions.ENGINE_VERSION` when tta's corruption engine made the domains
    #: (generated or procedural data), once :meth:`check` has looked; part of the run's identity
    corruption_engine: int | None = None
    #: whether domains come in severities 1..5
    has_severity: bool = True
    #: names of the label-free side arrays :meth:`load` provides in ``DomainData.extras``
    side_inputs: tuple[str, ...] = ()

    def check(self, domains: list[Domain], root: Path) -> None:
        """Raise a :class:`UserError` naming what is missing before any work starts."""

    def load(self, domain: Domain, root: Path) -> DomainData:
        raise NotImplementedError


@dataclass
class Protocol:
    spec: ProtocolSpec
    reader: DatasetReader
    root: Path

    @classmethod
    def create(cls, spec: ProtocolSpec, root: Path) -> "Protocol":
        """The protocol of ``spec`` over data root ``root`` (which must exist, unless it is the default)."""
        return cls(spec, DATASETS.get(spec.dataset)(), existing_root(root))

    @property
    def name(self) -> str:
        return self.spec.name

    def domains(self, names: list[str] | None = None, severity: int | None = None) -> list[Domain]:
        """The domains to run, in order; validates names and severity."""
        chosen = list(names or self.spec.domains or self.reader.default_domains or self.reader.domains)
        unknown = [d for d in chosen if d not in self.reader.domains]
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], self.reader.domains, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"protocol {self.name!r} has no domain {unknown[0]!r}{hint}")
        if not self.reader.has_severity:
            return [Domain(d) for d in chosen]
        level = severity if severity is not None else self.spec.severity or 5
        if level not in (1, 2, 3, 4, 5):
            raise UserError(f"severity must be 1..5, got {level}")
        return [Domain(d, level) for d in chosen]

    def with_overrides(self, **changes) -> "Protocol":
        return replace(self, spec=replace(self.spec, **{k: v for k, v in changes.items() if v is not None}))
