"""Where tta looks for data and keeps its cache. Never relative to the working directory.

* data root: ``--data-root``, else ``$TTA_DATA``, else the checkout's ``datasets/`` folder
  (next to the ``tta`` package).
* cache (downloaded checkpoints; the built-in weights ship with the package): ``$TTA_CACHE``, else
  ``$XDG_CACHE_HOME/tta``, else ``~/.cache/tta``.
* a user's results (the default result store, the rendered leaderboard): ``$TTA_HOME``, else
  ``$XDG_DATA_HOME/tta``, else ``~/.local/share/tta``. Never the checkout's tracked
  ``leaderboard/`` folder: that is the committed leaderboard, built only by
  ``benchmarks/make_leaderboard.py`` from its own store.
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


def user_home() -> Path:
    """Where a user's own results live (``$TTA_HOME``, else ``$XDG_DATA_HOME/tta``, else ``~/.local/share/tta``)."""
    if os.environ.get("TTA_HOME"):
        root = Path(os.environ["TTA_HOME"])
    elif os.environ.get("XDG_DATA_HOME"):
        root = Path(os.environ["XDG_DATA_HOME"]) / "tta"
    else:
        root = Path.home() / ".local" / "share" / "tta"
    return root.expanduser().resolve()


def user_store() -> Path:
    """The default result store of ``tta.run``, ``tta.sweep`` and ``tta.leaderboard``."""
    return user_home() / "results.sqlite"


def user_leaderboard_dir() -> Path:
    """The default output folder of ``tta.leaderboard``."""
    return user_home() / "leaderboard"

