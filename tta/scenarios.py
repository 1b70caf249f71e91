"""Scenarios: in which order a method sees the domains, and when it is reset.

A scenario turns the protocol's domains into *segments*; each segment is one result row
(one cell), streams its batches lazily, and says whether the method is reset before it.
Scenarios are orthogonal to methods: any method runs in any scenario.

* ``episodic``: each domain alone, reset before every domain (the usual CIFAR-10-C table).
* ``continual``: the domains one after another in canonical order, never reset.
* ``gradual``: continual, and every corruption runs through severities 1,2,3,4,5,4,3,2,1
  (the gradual setting of Wang et al., CoTTA, CVPR 2022, as in mariodoebler/
  test-time-adaptation); one segment per (corruption, severity) visit, keys ``fog-3`` on
  the way up (and at 5), ``fog-3-down`` on the way down.
* ``mixed``: every domain's examples shuffled together into one stream, one row ``mixed``
  with the per-domain errors in ``extra["domain_error"]`` (mixed-domain setting of the same
  repository).
* ``dirichlet``: episodic, with a non-i.i.d. class order per domain drawn with Dirichlet
  concentration ``delta`` (see :func:`dirichlet_order`).

Scenario parameters are declared like method hyperparameters (:class:`~tta.hparams.HParam`)
and given after the name: ``--scenario dirichlet:delta=0.01``. The row's ``scenario``
column is the canonical label with every parameter, e.g. ``dirichlet:delta=0.1``.

Every stream order is a pure function of ``(seed, domain key)`` via
:func:`tta.streams.rng_for`; batch sizes down to 1 are streamed as asked (whether a
method can use batch statistics of one example is the method's decision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator

import numpy as np
import torch

from tta.errors import UserError
from tta.hparams import HParam, parse_assignments, resolve
from tta.protocols.base import DomainData, Protocol
from tta.registry import SCENARIOS
from tta.streams import batches, rng_for, shuffled
from tta.types import Batch, Domain

GRADUAL_SEVERITIES = (1, 2, 3, 4, 5, 4, 3, 2, 1)


@dataclass
class StreamSettings:
    batch_size: int
    seed: int
    n_examples: int | None
    device: str


def _no_extra() -> dict[str, Any]:
    return {}


@dataclass
class Segment:
    key: str  # the ``domain`` of the result row
    severity: int | None
    reset_before: bool
    open: Callable[[], tuple[Iterable[Batch], str]]  # -> (batches, data_source); loads lazily
    #: called by the runner with every batch and the method's output (labels stay runner-side)
    observe: Callable[[Batch, torch.Tensor], None] | None = None
    #: what the segment adds to its row's ``extra`` once streamed
    extra: Callable[[], dict[str, Any]] = field(default=_no_extra)


class Scenario:
    """Base: segments over ``domains``. ``independent`` segments can be skipped when finished."""

    name: ClassVar[str] = ""
    independent: ClassVar[bool] = True
    hparams: ClassVar[dict[str, HParam]] = {}

    def __init__(self, **overrides: Any) -> None:
        self.hp: dict[str, Any] = resolve(f"scenario {self.name!r}", self.hparams, overrides)

    @property
    def label(self) -> str:
        """``name`` or ``name:key=value,...`` (every parameter, sorted): the row's ``scenario``."""
        if not self.hp:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.hp.items()))

    def segments(self, protocol: Protocol, domains: list[Domain], settings: StreamSettings) -> Iterator[Segment]:
        raise NotImplementedError


def register_scenario(name: str):
    """Register a :class:`Scenario` subclass under ``name`` (sets ``cls.name``)."""
    return SCENARIOS.register_class(name)


def create_scenario(text: str) -> Scenario:
    """``"dirichlet"`` or ``"dirichlet:delta=0.01,other=1"`` -> a configured scenario."""
    name, _, params = text.partition(":")
    pairs = [p for p in params.split(",") if p.strip()] if params else []
    return SCENARIOS.get(name.strip())(**parse_assignments(pairs))


def _stream(data: DomainData, order: np.ndarray, key: str, settings: StreamSettings):
    return batches(data.images, data.labels, order, settings.batch_size, key, settings.device, data.extras)


def domain_segment(protocol: Protocol, domain: Domain, settings: StreamSettings, reset_before: bool,
                   key: str | None = None,
                   order_of: Callable[[DomainData], np.ndarray] | None = None) -> Segment:
    """One domain as one segment; ``order_of(data)`` picks the order (default: seeded shuffle)."""

    def open_stream():
        data = protocol.reader.load(domain, protocol.root)
        if order_of is None:
            order = shuffled(len(data.labels), settings.seed, domain.key, settings.n_examples)
        else:
            order = order_of(data)
        return _stream(data, order, domain.key, settings), data.source

    return Segment(key or domain.key, domain.severity, reset_before, open_stream)


@register_scenario("episodic")
class Episodic(Scenario):
    """Reset before every domain: each domain is adapted from the source model."""

    independent = True

    def segments(self, protocol, domains, settings):
        for domain in domains:
            yield domain_segment(protocol, domain, settings, reset_before=True)


@register_scenario("continual")
class Continual(Scenario):
    """All domains in order, one stream, never reset (Wang et al. 2022, CoTTA's setting)."""

    independent = False

    def segments(self, protocol, domains, settings):
        for i, domain in enumerate(domains):
            yield domain_segment(protocol, domain, settings, reset_before=(i == 0))


@register_scenario("gradual")
class Gradual(Scenario):
    """Continual; each corruption at severities 1,2,3,4,5,4,3,2,1 (CoTTA's gradual setting)."""

    independent = False

    def segments(self, protocol, domains, settings):
        if not protocol.reader.has_severity:
            raise UserError(f"scenario 'gradual' needs domains with severities; protocol {protocol.name!r} has none")
        first = True
        for domain in domains:
            for position, severity in enumerate(GRADUAL_SEVERITIES):
                visit = Domain(domain.name, severity)
                down = position > GRADUAL_SEVERITIES.index(5)
                key = f"{visit.key}-down" if down else visit.key
                yield domain_segment(protocol, visit, settings, reset_before=first, key=key)
                first = False


@register_scenario("mixed")
class Mixed(Scenario):
    """All domains shuffled together into one stream, one row ``mixed`` (per-domain error in extra)."""

    independent = True

    def segments(self, protocol, domains, settings):
        severities = {d.severity for d in domains}
        yield MixedStream(protocol, domains, settings).segment(severities.pop() if len(severities) == 1 else None)


class MixedStream:
    """The examples of every domain (each capped at ``n_examples`` by its own seeded shuffle),
    concatenated and permuted with ``rng_for(seed, "mixed")``; tracks the error per domain."""

    def __init__(self, protocol: Protocol, domains: list[Domain], settings: StreamSettings) -> None:
        self.protocol, self.domains, self.settings = protocol, domains, settings
        self.domain_of = np.zeros(0, dtype=np.int64)
        self.correct = np.zeros(len(domains))
        self.seen = np.zeros(len(domains))

    def segment(self, severity: int | None) -> Segment:
        return Segment("mixed", severity, True, self.open, self.observe, self.extra)

    def open(self):
        parts, owners, sources = [], [], set()
        for i, domain in enumerate(self.domains):
            data = self.protocol.reader.load(domain, self.protocol.root)
            keep = shuffled(len(data.labels), self.settings.seed, domain.key, self.settings.n_examples)
            parts.append((data.images[keep], data.labels[keep], {k: v[keep] for k, v in data.extras.items()}))
            owners.append(np.full(len(keep), i, dtype=np.int64))
            sources.add(data.source)
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        extras = {k: np.concatenate([p[2][k] for p in parts]) for k in parts[0][2]}
        self.domain_of = np.concatenate(owners)
        self.correct[:] = 0
        self.seen[:] = 0
        order = rng_for(self.settings.seed, "mixed").permutation(len(labels))
        data = DomainData(images, labels, "+".join(sorted(sources)), extras)
        return _stream(data, order, "mixed", self.settings), data.source

    def observe(self, batch: Batch, logits: torch.Tensor) -> None:
        owner = self.domain_of[batch.index.numpy()]
        right = (logits.detach().argmax(1) == batch.y).cpu().numpy()
        np.add.at(self.correct, owner, right)
        np.add.at(self.seen, owner, 1)

    def extra(self) -> dict[str, Any]:
        error = {d.key: 100.0 * (1.0 - c / n) for d, c, n in zip(self.domains, self.correct, self.seen) if n}
        return {"domain_error": error}


def dirichlet_order(labels: np.ndarray, delta: float, rng: np.random.Generator, num_slots: int | None = None) -> np.ndarray:
    """A non-i.i.d. class order over ``labels`` (Yuan et al., RoTTA, CVPR 2023; Gong et al., NOTE, NeurIPS 2022).

    RoTTA's ``LabelDirichletDomainSequence``: with ``K`` classes and ``K`` time slots (at most
    100), every class ``c`` draws slot proportions ``q_c ~ Dir(delta * 1_K)`` and its examples
    (here: in a seeded random order) are cut into ``K`` consecutive chunks of sizes
    ``q_c * n_c``; slot ``s`` is the chunks of slot ``s`` of all classes, the classes in a random
    order; the stream is slot 1, slot 2, ... . Small ``delta`` puts each class in few slots:
    long runs of one class; ``delta -> inf`` approaches class-balanced slots.
    """
    classes = np.unique(labels)
    slots = num_slots or min(len(classes), 100)
    proportions = rng.dirichlet(np.full(slots, delta), size=len(classes))
    chunks: list[list[np.ndarray]] = [[] for _ in range(slots)]
    for c, share in zip(classes, proportions):
        members = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(share)[:-1] * len(members)).astype(int)
        for s, part in enumerate(np.split(members, cuts)):
            chunks[s].append(part)
    return np.concatenate([np.concatenate([slot[i] for i in rng.permutation(len(slot))]) for slot in chunks])


@register_scenario("dirichlet")
class Dirichlet(Scenario):
    """Episodic with a Dirichlet(delta) non-i.i.d. class order per domain (RoTTA / NOTE)."""

    independent = True
    hparams = {"delta": HParam(0.1, "Dirichlet concentration (small = long single-class runs)", 1e-6, 1e6,
                               search=(0.01, 0.1, 1.0))}

    def segments(self, protocol, domains, settings):
        delta = self.hp["delta"]

        def order_for(domain: Domain) -> Callable[[DomainData], np.ndarray]:
            def order_of(data: DomainData) -> np.ndarray:
                subset = shuffled(len(data.labels), settings.seed, domain.key, settings.n_examples)
                rng = rng_for(settings.seed, f"{domain.key}/dirichlet")
                return subset[dirichlet_order(data.labels[subset], delta, rng)]

            return order_of

        for domain in domains:
            yield domain_segment(protocol, domain, settings, reset_before=True, order_of=order_for(domain))
