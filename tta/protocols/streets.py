"""The offline segmentation benchmark's data: procedural street scenes, no files needed.

Domains are the target styles of :mod:`tta.data.street_scenes`: ``normal`` daytime (the
synthetic-to-real shift alone, the analogue of GTA5 -> Cityscapes) and the adverse
conditions ``night``, ``fog``, ``rain``, ``snow`` (the analogue of ACDC). 120 scenes per
domain (seed 1; the source model trained on seed 0 ``synthetic`` scenes), each with its
normal-condition ``reference`` side input for methods such as CMA.
"""

from __future__ import annotations

from pathlib import Path

from tta.data.street_scenes import CLASSES, CONDITIONS, HEIGHT, WIDTH, generate
from tta.protocols.base import DatasetReader, DomainData
from tta.registry import DATASETS
from tta.types import Domain

TEST_EXAMPLES = 120
TEST_SEED = 1


@DATASETS.register("streets")
class Streets(DatasetReader):
    """Procedural street scenes (not GTA5/Cityscapes/ACDC): normal + 4 adverse conditions, with references."""

    domains = ("normal", *CONDITIONS)
    has_severity = False
    side_inputs = ("reference",)
    classes = CLASSES
    image_size = (HEIGHT, WIDTH)

    def data_files(self, domains: list[Domain], root: Path) -> list[Path]:
        return []  # procedural: made from seeds (the engine version is in the identity)

    def load(self, domain: Domain, root: Path) -> DomainData:
        images, labels, references = generate(TEST_EXAMPLES, seed=TEST_SEED, style=domain.name)
        return DomainData(images, labels, "procedural", {"reference": references})
