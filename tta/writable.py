"""Check an output path before any work, without creating anything.

A CLI calls these on its arguments first, so a bad ``--out`` or ``--store`` is one
``error:`` line (:class:`~tta.errors.UserError`) before the first row is read or computed,
and a failed start leaves no folder behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from tta.errors import UserError


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of ``path`` that exists (``path`` itself if it does)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _creatable(path: Path, what: str) -> None:
    """``path`` does not exist: its nearest existing ancestor must be a writable folder."""
    ancestor = _existing_ancestor(path.parent)
    if not ancestor.is_dir():
        raise UserError(f"{what} {str(path)!r}: {str(ancestor)!r} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{what} {str(path)!r}: folder {str(ancestor)!r} is not writable")


def output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """``path`` is, or can be created as, a writable folder; returns it (expanded, absolute)."""
    path = Path(path).expanduser().absolute()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{what} {str(path)!r} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{what} {str(path)!r} is not writable")
        return path
    _creatable(path, what)
    return path


def output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """``path`` is a writable file, or can be created as one; returns it (expanded, absolute)."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a folder, not a file")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UserError(f"{what} {str(path)!r} is not writable")
        return path
    _creatable(path, what)
    return path


def existing_file(path: str | os.PathLike, what: str, hint: str = "") -> Path:
    """``path`` is an existing file (for inputs such as a result store to read); returns it."""
    path = Path(path).expanduser().absolute()
    if path.is_file():
        return path
    ancestor = _existing_ancestor(path.parent)
    if not ancestor.is_dir():
        raise UserError(f"{what} {str(path)!r}: {str(ancestor)!r} is a file, not a folder")
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a folder, not a file")
    raise UserError(f"{what} {str(path)!r} does not exist" + (f" ({hint})" if hint else ""))
