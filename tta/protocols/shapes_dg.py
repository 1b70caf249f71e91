"""The offline DG default's data: four rendering styles of the procedural shapes, no files.

Each domain is :func:`tta.data.synthetic_domains.generate_domain` of one style, 1,000
images (100 per class, seed 0) rendered at 32 x 32 and block-averaged to 16 x 16, so that
the whole leave-one-domain-out grid trains in minutes on two CPU cores. Training (:mod:`tta.training`) splits every source domain
80/20 into train and validation; test-time runs stream the whole held-out domain.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tta.data.synthetic import SIZE
from tta.data.synthetic_domains import STYLES, generate_domain
from tta.protocols.base import DatasetReader, DomainData
from tta.registry import DATASETS
from tta.types import Domain

EXAMPLES_PER_DOMAIN = 1_000
DOMAIN_SEED = 0
DOWNSAMPLE = 2


@lru_cache(maxsize=len(STYLES))
def _domain(style: str):
    return generate_domain(style, EXAMPLES_PER_DOMAIN, DOMAIN_SEED, DOWNSAMPLE)


@DATASETS.register("shapes_dg")
class ShapesDG(DatasetReader):
    """Procedural 10-class 16x16 shapes in 4 styles (solid, outline, textured, inverted); no files needed."""

    domains = STYLES
    has_severity = False
    image_size = (SIZE // DOWNSAMPLE, SIZE // DOWNSAMPLE)

    def data_files(self, domains: list[Domain], root: Path) -> list[Path]:
        return []  # procedural: made from seeds

    def load(self, domain: Domain, root: Path) -> DomainData:
        images, labels = _domain(domain.name)
        return DomainData(images, labels, "procedural")
