"""Declarative protocol specs (TOML) and where they are found.

A spec names the dataset reader, domain order (default: the reader's), severity,
scenario, batch size, number of classes, the source model with its checkpoint, and for
readers that resize (segmentation) the network ``input_size`` (``[H, W]`` or ``"HxW"``;
default: the reader's per-domain size) and, for readers with splits, the ``split``.
Built-in specs live in the checkout's top-level ``protocols/`` folder (shipped inside the
package as ``tta/protocols/specs``); more folders can be listed in ``$TTA_PROTOCOLS``;
``--protocol path/to/spec.toml`` loads one file directly.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from tta.errors import UserError

BUILTIN_SPEC_DIR = Path(__file__).resolve().parent / "specs"


@dataclass(frozen=True)
class ProtocolSpec:
    name: str
    dataset: str
    description: str
    num_classes: int
    model: str
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    domains: tuple[str, ...] | None = None
    severity: int | None = None
    scenario: str = "episodic"
    batch_size: int = 200
    n_examples: int | None = None
    task: str = "classification"
    #: ``(height, width)`` the reader resizes images to (segmentation); ``None``: the reader's default
    input_size: tuple[int, int] | None = None
    #: the dataset split read (``train`` / ``val`` / ``test``, readers that have splits); ``None``: the reader's default
    split: str | None = None


def parse_size(value, what: str = "input size") -> tuple[int, int]:
    """``"HxW"``, ``[H, W]`` or ``(H, W)`` -> ``(H, W)`` of positive ints, else one :class:`UserError` line."""
    parts = value.lower().split("x") if isinstance(value, str) else value
    try:
        height, width = (int(str(p).strip()) for p in parts)
    except (TypeError, ValueError):
        raise UserError(f"{what} {value!r} is not HxW (e.g. 540x960)") from None
    if height < 1 or width < 1:
        raise UserError(f"{what} {value!r} must be positive, e.g. 540x960")
    return height, width


def load_spec(path: Path) -> ProtocolSpec:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"protocol spec {str(path)!r} is not readable TOML ({exc})") from None
    known = {f.name for f in fields(ProtocolSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"protocol spec {str(path)!r} has unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    raw.setdefault("name", path.stem)
    if "domains" in raw:
        raw["domains"] = tuple(raw["domains"])
    if "input_size" in raw:
        raw["input_size"] = parse_size(raw["input_size"], f"protocol spec {str(path)!r}: input_size")
    try:
        return ProtocolSpec(**raw)
    except TypeError as exc:
        raise UserError(f"protocol spec {str(path)!r} is incomplete ({exc})") from None


def spec_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("TTA_PROTOCOLS", "").split(os.pathsep) if p]
    return [*extra, BUILTIN_SPEC_DIR]


def available_specs() -> dict[str, Path]:
    """Protocol name -> spec file; earlier folders in :func:`spec_dirs` win."""
    found: dict[str, Path] = {}
    for directory in reversed(spec_dirs()):
        for file in sorted(directory.glob("*.toml")):
            found[file.stem] = file
    return dict(sorted(found.items()))


def find_spec(name: str) -> ProtocolSpec:
    if name.endswith(".toml"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"protocol spec file {name!r} does not exist")
        return load_spec(path)
    specs = available_specs()
    if name not in specs:
        import difflib

        close = difflib.get_close_matches(name, list(specs), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown protocol {name!r}{hint} (see `python -m tta.run --list`)")
    return load_spec(specs[name])
