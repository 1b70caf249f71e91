"""Load weights into a created model from a path, a URL (sha256-checked, cached) or ``builtin:NAME``.

Files are read with ``torch.load(weights_only=True)``: tensors and plain containers only,
no pickled code runs. Accepted layouts: a bare state dict, or a dict holding it under
``state_dict`` / ``model_state_dict`` / ``model``; a DataParallel ``module.`` prefix is
stripped. ``builtin:NAME`` asks a registered weight provider (e.g. the smoke benchmark's
model, trained once and cached).
"""

from __future__ import annotations

import pickle
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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {str(path)!r} is not a readable weights-only PyTorch file ({first})") from None
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
