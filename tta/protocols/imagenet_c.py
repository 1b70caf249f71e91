"""ImageNet-C reader (Hendrycks & Dietterich, ICLR 2019), official folder layout.

    <root>/ImageNet-C/<corruption>/<severity>/<wnid>/<image>.JPEG

50,000 validation images per corruption and severity, already 224 x 224. The label of a
``<wnid>`` folder is its index in the standard 1000-class ImageNet order (the sorted
synsets, as torchvision's and timm's checkpoints use; list from ``timm.data.ImageNetInfo``),
so a partial copy (a few classes) still gets the right labels. Images are decoded per
batch, never all at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tta.data.corruption_names import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS
from tta.data.image_files import IMAGE_SUFFIXES, ImageFiles
from tta.errors import UserError
from tta.protocols.base import DatasetReader, DomainData
from tta.registry import DATASETS
from tta.types import Domain

FOLDER = "ImageNet-C"
URL = "https://zenodo.org/record/2235448"
SIZE = 224


def imagenet_wnids() -> list[str]:
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


@DATASETS.register("imagenetc")
class ImageNetC(DatasetReader):
    """ImageNet-C, official layout <root>/ImageNet-C/<corruption>/<severity>/<wnid>/*.JPEG."""

    domains = ALL_CORRUPTIONS
    default_domains = BENCHMARK_CORRUPTIONS
    image_size = (SIZE, SIZE)  # decoded images are centre-cropped to it

    def check(self, domains: list[Domain], root: Path) -> None:
        for domain in domains:
            folder = root / FOLDER / domain.name / str(domain.severity)
            if not folder.is_dir() or not any(folder.iterdir()):
                raise UserError(f"ImageNet-C data missing: {folder} not found or empty; expected "
                                f"<root>/{FOLDER}/<corruption>/<severity>/<wnid>/*.JPEG under data root {root} "
                                f"(--data-root or $TTA_DATA); download the tar files from {URL} and extract them "
                                f"there, or build them from ImageNet val with "
                                f"`python -m tta.data.make_c --images VAL_FOLDER --out {root / FOLDER}`")

    def data_files(self, domains: list[Domain], root: Path) -> list[Path]:
        return [f for d in domains for f in sorted((root / FOLDER / d.name / str(d.severity)).rglob("*")) if f.is_file()]

    def load(self, domain: Domain, root: Path) -> DomainData:
        folder = root / FOLDER / domain.name / str(domain.severity)
        index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
        paths, labels = [], []
        for class_folder in sorted(p for p in folder.iterdir() if p.is_dir()):
            if class_folder.name not in index:
                raise UserError(f"{class_folder} is not an ImageNet synset folder (expected names like n01440764)")
            files = sorted(f for f in class_folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            paths += files
            labels += [index[class_folder.name]] * len(files)
        return DomainData(ImageFiles(paths, SIZE), np.asarray(labels, dtype=np.int64), "official", origin=str(folder))
