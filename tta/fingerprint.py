"""A cheap fingerprint of the data a run reads: part of every run's identity and row.

A stored result is served only for the same data. The fingerprint is the sha256 of one
line per file the reader reads (:meth:`tta.protocols.base.DatasetReader.data_files`):
its path relative to the data root, its size in bytes and its modification time in
nanoseconds, sorted. Nothing is read but the file system's metadata, so it costs one
``stat`` per file (about 1 s per 100,000 files); a changed, added or removed file, or
another folder, gives another fingerprint. Copying the same data elsewhere (new mtimes)
also does: such a run is computed again, never served from a row of other data.

Procedural data (no files) has the fingerprint ``procedural``; its generator's version
is a separate part of the identity (``corruption_engine``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PROCEDURAL = "procedural"


def fingerprint(files: list[Path] | None, root: Path) -> str:
    """``sha256:<16 hex>`` of the files' (relative name, size, mtime) lines; every file under
    ``root`` when ``files`` is ``None``; ``procedural`` when there are none."""
    if files is None:
        files = [p for p in Path(root).rglob("*") if p.is_file()] if Path(root).is_dir() else []
    if not files:
        return PROCEDURAL
    lines = []
    for path in files:
        info = path.stat()
        try:
            name = str(path.resolve().relative_to(Path(root).resolve()))
        except ValueError:  # a reader may read outside its root (e.g. a generated cache folder)
            name = str(path.resolve())
        lines.append(f"{name}\t{info.st_size}\t{info.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
    return f"sha256:{digest[:16]}"
