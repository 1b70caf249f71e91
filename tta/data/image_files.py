"""Folders of image files seen as one uint8 N x H x W x 3 array, decoded on indexing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tta.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def decode(path: Path, size: int, crop: bool = True) -> np.ndarray:
    """One image as uint8 ``size x size x 3`` RGB, bilinear: with ``crop`` the shorter side is
    resized to ``size`` and the centre cropped (ImageNet style); without, the image is
    stretched to ``size x size`` (DomainBed's ``Resize((size, size))``)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            if rgb.size != (size, size) and not crop:
                rgb = rgb.resize((size, size), Image.BILINEAR)
            elif rgb.size != (size, size):
                scale = size / min(rgb.size)
                rgb = rgb.resize((max(size, round(rgb.width * scale)), max(size, round(rgb.height * scale))),
                                 Image.BILINEAR)
                left, top = (rgb.width - size) // 2, (rgb.height - size) // 2
                rgb = rgb.crop((left, top, left + size, top + size))
    except OSError as exc:
        raise UserError(f"cannot decode image {path}: {exc}") from None
    return np.asarray(rgb, dtype=np.uint8)


class ImageFiles:
    """A read-only uint8 ``N x size x size x 3`` "array": ``len()`` and ``images[idx_array]``."""

    def __init__(self, paths: list[Path], size: int, crop: bool = True) -> None:
        self.paths = list(paths)
        self.size = size
        self.crop = crop
        self.dtype = np.dtype(np.uint8)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.size, self.size, 3)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index) -> np.ndarray:
        rows = np.arange(len(self.paths))[index]
        if np.ndim(rows) == 0:
            return decode(self.paths[int(rows)], self.size, self.crop)
        out = np.empty((len(rows), self.size, self.size, 3), dtype=np.uint8)
        for i, row in enumerate(rows):
            out[i] = decode(self.paths[int(row)], self.size, self.crop)
        return out
