"""Where tta looks for data and keeps its cache. Never relative to the working directory.

* data root: ``--data-root``, else ``$TTA_DATA``, else the checkout's ``datasets/`` folder
  (next to the ``tta`` package).
* cache (downloaded checkpoints, built-in trained weights): ``$TTA_CACHE``, else
  ``$XDG_CACHE_HOME/tta``, else ``~/.cache/tta``.
"""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT_ROOT = Path(__file__).resolve().parents[1]


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser().resolve()
    if os.environ.get("TTA_DATA"):
        return Path(os.environ["TTA_DATA"]).expanduser().resolve()
    return CHECKOUT_ROOT / "datasets"


def cache_dir() -> Path:
    if os.environ.get("TTA_CACHE"):
        root = Path(os.environ["TTA_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "tta"
    else:
        root = Path.home() / ".cache" / "tta"
    return root.expanduser().resolve()
