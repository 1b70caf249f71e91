"""The data root must exist when the user names it: a typo in ``--data-root`` or ``$TTA_DATA``
is refused in one line before any work, instead of a folder being created as a side effect
(a download used to ``mkdir`` it) and the run failing later on missing files.

The checkout's default ``datasets/`` folder is exempt: downloads may create it.
"""

from __future__ import annotations

from pathlib import Path

from tta.errors import UserError
from tta.paths import CHECKOUT_ROOT

DEFAULT_ROOT = CHECKOUT_ROOT / "datasets"


def existing_root(root: Path) -> Path:
    """``root`` itself, if it is a folder (or the default root); else one :class:`UserError` line."""
    root = Path(root)
    if root.is_dir() or root == DEFAULT_ROOT:
        return root
    if root.exists():
        raise UserError(f"data root {root} is not a folder (named by --data-root or $TTA_DATA)")
    raise UserError(f"data root {root} does not exist (named by --data-root or $TTA_DATA); create it, "
                    f"or name the folder that holds the datasets")
