"""Frost textures: the six photographs of the reference recipe, found on disk, never substituted.

Where they are looked for, in order:

1. ``$TTA_FROST_DIR`` (a folder holding ``frost1.png`` ... ``frost6.jpg``), when set;
2. the files of the installed ``imagecorruptions`` distribution (``pip install imagecorruptions``),
   read through ``importlib.metadata`` without importing its module (which needs
   ``pkg_resources``).

Missing textures raise :class:`tta.errors.UserError` saying where we looked and how to get them.
"""

from __future__ import annotations

import importlib.metadata
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from tta.errors import UserError

FROST_FILES: tuple[str, ...] = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
ENV_VAR = "TTA_FROST_DIR"


def _from_distribution() -> tuple[Path | None, str]:
    try:
        dist = importlib.metadata.distribution("imagecorruptions")
    except importlib.metadata.PackageNotFoundError:
        return None, "the imagecorruptions distribution (not installed)"
    found = {Path(str(f)).name: Path(dist.locate_file(f)) for f in (dist.files or [])
             if Path(str(f)).name in FROST_FILES}
    folder = found[FROST_FILES[0]].parent if FROST_FILES[0] in found else None
    return folder, f"the imagecorruptions distribution ({folder or dist.locate_file('')})"


def frost_dir() -> Path:
    """The folder holding all six frost textures, or a UserError naming where we looked."""
    env = os.environ.get(ENV_VAR)
    if env:
        folder, where = Path(env).expanduser(), f"${ENV_VAR}={env}"
    else:
        folder, where = _from_distribution()
    missing = list(FROST_FILES) if folder is None else [f for f in FROST_FILES if not (folder / f).is_file()]
    if missing:
        raise UserError(f"frost textures missing ({', '.join(missing)}); looked in {where}; "
                        f"run `pip install imagecorruptions` or set {ENV_VAR} to a folder with "
                        f"{', '.join(FROST_FILES)}")
    return folder


@lru_cache(maxsize=4)
def load_frost_textures(folder: str) -> tuple[np.ndarray, ...]:
    """The textures as RGB uint8 arrays (alpha dropped, as OpenCV ``imread`` does)."""
    out = []
    for name in FROST_FILES:
        with Image.open(Path(folder) / name) as im:
            out.append(np.asarray(im.convert("RGB")).copy())
    return tuple(out)


def frost_textures() -> tuple[np.ndarray, ...]:
    return load_frost_textures(str(frost_dir()))
