"""The offline smoke benchmark's data: procedural shapes streamed through the corruptions.

A *smoke* benchmark, not CIFAR: 2,000 test images per domain from
:func:`tta.data.synthetic.generate` (seed 1; the source model trained on seed 0), each
domain one corruption of :mod:`tta.data.corruptions` at the protocol's severity: the 14
benchmark corruptions that need no external files (``frost`` needs the frost photographs
of the optional ``imagecorruptions`` package, so the offline default leaves it out).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tta.data.corruption_names import BENCHMARK_CORRUPTIONS
from tta.data.synthetic import SIZE, generate
from tta.protocols.base import DatasetReader, DomainData, SourceImages
from tta.registry import DATASETS
from tta.types import Domain

TEST_EXAMPLES = 2_000
TEST_SEED = 1
#: generator seed of the source model's training images (:func:`tta.models.smoke_cnn.train_smoke_cnn`)
SOURCE_SEED = 0


@lru_cache(maxsize=1)
def _clean_test_set():
    return generate(TEST_EXAMPLES, seed=TEST_SEED)


@lru_cache(maxsize=16)
def _corrupted(name: str, severity: int):
    """One corrupted test domain, kept for the process (a sweep or a test suite reuses it)."""
    from tta.data.corruptions import corrupt

    images, labels = _clean_test_set()
    corrupted = corrupt(images, name, severity, seed=TEST_SEED)
    corrupted.setflags(write=False)
    return corrupted


@DATASETS.register("smoke")
class Smoke(DatasetReader):
    """Procedural 10-class shapes (not CIFAR), corrupted on the fly; no files needed."""

    domains = tuple(name for name in BENCHMARK_CORRUPTIONS if name != "frost")
    image_size = (SIZE, SIZE)

    def check(self, domains: list[Domain], root: Path) -> None:
        from tta.data.corruptions import ENGINE_VERSION

        self.corruption_engine = ENGINE_VERSION

    def data_files(self, domains: list[Domain], root: Path) -> list[Path]:
        return []  # procedural: made from seeds (the engine version is in the identity)

    def load(self, domain: Domain, root: Path) -> DomainData:
        return DomainData(_corrupted(domain.name, domain.severity), _clean_test_set()[1], "procedural")

    def source_images(self, root: Path, n: int) -> SourceImages:
        """``n`` clean procedural images of the source model's training distribution (generator seed 0)."""
        return SourceImages(lambda: generate(n, seed=SOURCE_SEED)[0],
                            f"procedural smoke training images (generator seed {SOURCE_SEED})")
