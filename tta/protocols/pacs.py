"""PACS reader (Li et al., ICCV 2017): one domain = every image of one style, no severities.

Images stay on disk and are decoded on indexing (:class:`tta.data.pacs.LazyImages`,
resized to 224 x 224), so streaming a domain never holds it all in memory.
"""

from __future__ import annotations

from pathlib import Path

from tta.data.pacs import DOMAINS, IMAGE_SIZE, LazyImages, check_layout, list_domain
from tta.errors import UserError
from tta.protocols.base import DatasetReader, DomainData
from tta.registry import DATASETS
from tta.types import Domain


@DATASETS.register("pacs")
class Pacs(DatasetReader):
    """PACS, layout <root>/PACS/{art_painting,cartoon,photo,sketch}/<class>/*.jpg (7 classes)."""

    domains = DOMAINS
    has_severity = False
    image_size = (IMAGE_SIZE, IMAGE_SIZE)  # decoded images are resized to it

    def check(self, domains: list[Domain], root: Path) -> None:
        check_layout(root, [d.name for d in domains])

    def data_files(self, domains: list[Domain], root: Path) -> list[Path]:
        return [f for d in domains for f in sorted((root / "PACS" / d.name).rglob("*")) if f.is_file()]

    def load(self, domain: Domain, root: Path) -> DomainData:
        paths, labels = list_domain(root, domain.name)
        if not paths:
            raise UserError(f"PACS domain {domain.name!r} has no images under {root / 'PACS' / domain.name}")
        return DomainData(LazyImages(paths), labels, "official",  # type: ignore[arg-type]
                          origin=str(root / "PACS" / domain.name))
