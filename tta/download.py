"""Download a file once, verify its sha256, fail offline with one clear message."""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tta.errors import UserError


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None, what: str, timeout: float = 30.0,
             algorithm: str = "sha256") -> Path:
    """Fetch ``url`` to ``dest`` (atomically, with a progress line on stderr) unless it is there.

    ``sha256`` is the expected hex digest (of ``algorithm``, sha256 unless told otherwise), or
    a prefix of it of at least 8 digits (torchvision names its weights with one).

    A present file with the wrong checksum is downloaded again; a failed download raises a
    :class:`UserError` naming what is missing, where it was looked for and where to get it.
    """
    if sha256 is not None and len(sha256) < 8:
        raise UserError(f"checksum of {what} must have at least 8 hex digits, got {sha256!r}")
    if dest.is_file() and (sha256 is None or sha256_of(dest, algorithm=algorithm).startswith(sha256)):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            _copy_with_progress(response, out, total, what)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise UserError(f"{what} not found at {dest} and its download from {url} failed ({reason}); "
                        f"place the file there by hand") from None
    if sha256 is not None and not (actual := sha256_of(partial, algorithm=algorithm)).startswith(sha256):
        partial.unlink(missing_ok=True)
        raise UserError(f"{what} downloaded from {url} has {algorithm} {actual}, expected {sha256}; not used")
    os.replace(partial, dest)
    return dest


def _copy_with_progress(source, out, total: int, what: str) -> None:
    done = 0
    interactive = sys.stderr.isatty()
    while block := source.read(1 << 20):
        out.write(block)
        done += len(block)
        if interactive:
            shown = f"{done / total:6.1%}" if total else f"{done >> 20} MiB"
            print(f"\rdownloading {what}: {shown}", end="", file=sys.stderr, flush=True)
    if interactive:
        print(file=sys.stderr)
