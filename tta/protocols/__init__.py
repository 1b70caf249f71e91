"""Protocols: TOML specs plus dataset readers; importing this package registers the readers."""

from tta.protocols import cifar_c, imagenet_c, pacs, segmentation, shapes_dg, smoke, streets  # noqa: F401
from tta.protocols.base import DatasetReader, DomainData, Protocol
from tta.protocols.spec import ProtocolSpec, available_specs, find_spec

__all__ = ["DatasetReader", "DomainData", "Protocol", "ProtocolSpec", "available_specs", "find_spec"]
