"""Scenarios: in which order a method sees the domains, and when it is reset.

A scenario turns the protocol's domains into *segments*; each segment is one result row
(one cell), streams its batches lazily, and says whether the method is reset before it.

* ``episodic``: each domain alone, reset before every domain (the usual CIFAR-10-C table).
* ``continual``: the domains one after another in canonical order, never reset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from tta.protocols.base import Protocol
from tta.registry import SCENARIOS
from tta.streams import batches, shuffled
from tta.types import Batch, Domain


@dataclass
class StreamSettings:
    batch_size: int
    seed: int
    n_examples: int | None
    device: str


@dataclass
class Segment:
    key: str  # the ``domain`` of the result row
    severity: int | None
    reset_before: bool
    open: Callable[[], tuple[Iterable[Batch], str]]  # -> (batches, data_source); loads lazily


class Scenario:
    """Base: segments over ``domains``. ``independent`` segments can be skipped when finished."""

    independent: bool = True

    def segments(self, protocol: Protocol, domains: list[Domain], settings: StreamSettings) -> Iterator[Segment]:
        raise NotImplementedError


def domain_segment(protocol: Protocol, domain: Domain, settings: StreamSettings, reset_before: bool) -> Segment:
    def open_stream():
        data = protocol.reader.load(domain, protocol.root)
        order = shuffled(len(data.labels), settings.seed, domain.key, settings.n_examples)
        stream = batches(data.images, data.labels, order, settings.batch_size, domain.key, settings.device, data.extras)
        return stream, data.source

    return Segment(domain.key, domain.severity, reset_before, open_stream)


@SCENARIOS.register("episodic")
class Episodic(Scenario):
    """Reset before every domain: each domain is adapted from the source model."""

    independent = True

    def segments(self, protocol, domains, settings):
        for domain in domains:
            yield domain_segment(protocol, domain, settings, reset_before=True)


@SCENARIOS.register("continual")
class Continual(Scenario):
    """All domains in order, one stream, never reset (Wang et al. 2022, CoTTA's setting)."""

    independent = False

    def segments(self, protocol, domains, settings):
        for i, domain in enumerate(domains):
            yield domain_segment(protocol, domain, settings, reset_before=(i == 0))
