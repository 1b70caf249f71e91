"""PACS (Li et al., "Deeper, Broader and Artier Domain Generalization", ICCV 2017) on disk.

Layout (as DomainBed's download script leaves it)::

    <root>/PACS/{art_painting,cartoon,photo,sketch}/<class>/<image>.{jpg,jpeg,png}

with the 7 classes dog, elephant, giraffe, guitar, horse, house, person (label = index in
that sorted order). Files are listed in sorted order, so indices are stable.

Images are decoded lazily (:class:`tta.data.image_files.ImageFiles`): a uint8 N x H x W x 3
"array" for ``len()`` and fancy indexing, decoding and resizing only the rows asked for
(DomainBed's test transform: ``Resize((224, 224))``, bilinear).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tta.data.image_files import ImageFiles
from tta.errors import UserError

DOMAINS: tuple[str, ...] = ("art_painting", "cartoon", "photo", "sketch")
CLASSES: tuple[str, ...] = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGE_SIZE = 224


def list_domain(root: Path, domain: str) -> tuple[list[Path], np.ndarray]:
    """Sorted image paths of one domain and their labels (int64)."""
    directory = root / "PACS" / domain
    paths, labels = [], []
    for label, name in enumerate(CLASSES):
        files = sorted(p for p in (directory / name).glob("*") if p.suffix.lower() in EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def check_layout(root: Path, domains: list[str]) -> None:
    """One clear error naming the first missing folder of the expected layout."""
    for domain in domains:
        for name in CLASSES:
            folder = root / "PACS" / domain / name
            if not folder.is_dir():
                raise UserError(f"PACS data missing: {folder} not found; expected layout "
                                f"<root>/PACS/{{{','.join(DOMAINS)}}}/<class>/*.jpg with classes "
                                f"{', '.join(CLASSES)} under data root {root} (--data-root or $TTA_DATA); "
                                "see datasets/README.md for the download")


def LazyImages(paths: list[Path], size: int = IMAGE_SIZE) -> ImageFiles:  # noqa: N802 - reads as a type
    """PACS images as a lazily decoded uint8 array, stretched to ``size x size`` as DomainBed."""
    return ImageFiles(paths, size, crop=False)
