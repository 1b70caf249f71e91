"""Load weights into a created model from a path, a URL (sha256-checked, cached) or ``builtin:NAME``.

Files are read with ``torch.load(weights_only=True)``: tensors and plain containers only,
no pickled code runs. Accepted layouts: a bare state dict, or a dict holding it under
``state_dict`` / ``model_state_dict`` / ``model``; a DataParallel ``module.`` prefix is
stripped. ``builtin:NAME`` asks a registered weight provider (e.g. the smoke benchmark's
model, a file shipped with the package).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from tta.download import download, sha256_of
from tta.errors import UserError
from tta.paths import cache_dir
from tta.registry import WEIGHTS

BUILTIN = "builtin:"


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    sha256: str


def resolve(ref: str, sha256: str | None = None) -> Path:
    """A local file for ``ref`` (path, http(s) URL, or ``builtin:NAME``)."""
    if ref.startswith(BUILTIN):
        return WEIGHTS.get(ref[len(BUILTIN):])()
    if urlparse(ref).scheme in ("http", "https"):
        name = Path(urlparse(ref).path).name or "checkpoint.pt"
        prefix = f"{sha256[:12]}-" if sha256 else ""
        return download(ref, cache_dir() / "checkpoints" / f"{prefix}{name}", sha256, f"checkpoint {name}")
    path = Path(ref).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint file {str(path)!r} does not exist")
    return path


#: terminal escape sequences (PyTorch colours parts of its weights-only message)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_FORMATS = {b"PK\x03\x04": "zip", b"\x80": "pickle"}  # torch.save's archive; the legacy pickle format


def load_failure(exc: BaseException, limit: int = 240) -> str:
    """``Type: reason`` of a failed ``torch.load`` on one plain-text line: escape sequences
    removed, PyTorch's advice to load with ``weights_only=False`` dropped (never good advice for
    a file of unknown origin), only the reason of its weights-only refusal kept."""
    text = _ANSI.sub("", str(exc))
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0].split(" Please use", 1)[0]
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_weights_only(path: Path, mmap: bool = False) -> object:
    """``torch.load(path, weights_only=True)``; any failure to read it is one :class:`UserError`
    line naming the file's format (``mmap``: map the tensors instead of reading them, where
    the format allows)."""
    head = _read_head(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy format: no mmap
    except Exception as exc:  # noqa: BLE001 - whatever a malformed file makes torch raise, one line
        kind = next((name for magic, name in _FORMATS.items() if head.startswith(magic)), None)
        what = "" if kind else f"; it is neither a zip archive nor a pickle (starts with {head!r})"
        raise UserError(f"checkpoint {str(path)!r} is not a readable weights-only PyTorch file "
                        f"({load_failure(exc)}){what}") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``; any failure to read it is one :class:`UserError` line."""
    obj = load_weights_only(path)
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {str(path)!r} holds no state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_into(net: nn.Module, ref: str, sha256: str | None = None) -> LoadedCheckpoint:
    """Load ``ref`` into ``net`` strictly; a mismatch is a one-line :class:`UserError`."""
    path = resolve(ref, sha256)
    state = read_state_dict(path)
    own = net.state_dict()
    # checkpoints saved before PyTorch 0.4.1 carry no BatchNorm step counters: keep the model's
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise UserError(f"checkpoint {str(path)!r} does not fit model {type(net).__name__}: {'; '.join(parts)}")
    net.load_state_dict({**own, **state}, strict=True)
    return LoadedCheckpoint(path, sha256_of(path))


#: key of the plain-data metadata a training run stores next to the state dict
META_KEY = "tta_meta"


def checkpoint_meta(path: str | Path) -> dict[str, str | int | float]:
    """The metadata a checkpoint carries (``{}`` for a file without it).

    ``tta.train`` saves ``{"state_dict": ..., "tta_meta": {...}}``: model, num_classes,
    training_method, recipe, pretrained (+ pretrained_sha256), bn, seed, protocol, target,
    sources, hparams (a JSON string), key, step; plain str/int/float values only, so a
    weights-only load reads it. Read with ``torch.load(weights_only=True)`` (memory-mapped
    where the format allows, so the tensors are not read); an unreadable file is the same
    one-line :class:`UserError` as :func:`read_state_dict`.
    """
    obj = load_weights_only(Path(path), mmap=True)
    meta = obj.get(META_KEY) if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return {}
    return {str(k): v for k, v in meta.items() if isinstance(v, (str, int, float))}


def _read_head(path: Path) -> bytes:
    """The first 4 bytes of ``path`` (to name its format in an error); unreadable or empty -> :class:`UserError`."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise UserError(f"checkpoint {str(path)!r} cannot be read ({exc.strerror})") from None
    if not head:
        raise UserError(f"checkpoint {str(path)!r} is an empty file")
    return head
