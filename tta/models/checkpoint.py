"""Load weights into a created model from a path, a URL (sha256-checked, cached), ``builtin:NAME``,
or pretrained weights by name (``torchvision:<WEIGHTS_ENUM>``, ``timm:<model>.<tag>``, see
:mod:`tta.models.pretrained`).

Files are read with ``torch.load(weights_only=True)``: tensors and plain containers only,
no pickled code runs (``.safetensors`` files with safetensors). ``builtin:NAME`` asks a
registered weight provider (e.g. the smoke benchmark's model, a file shipped with the package).

Checkpoint adaptors, applied by :func:`load_into` in this order:

1. wrappers: a dict holding the state dict under ``state_dict`` / ``model_state_dict`` /
   ``model`` / ``net`` (nested ones too, e.g. mmseg's ``{"meta": ..., "state_dict": ...}``);
2. prefixes: ``module.`` (DataParallel / DDP) and ``model.`` (Lightning-style wrappers) are
   removed only when every key has the prefix and the unprefixed keys match more of the
   model's keys (a model whose own submodule is called ``model`` keeps its keys);
3. the model's ``remap_keys`` hook (``register_model(..., remap_keys=...)``);
4. the model's declared auxiliary heads (``register_model(..., drop_keys=("aux_classifier.",))``).

What still does not fit is one line naming counts and a few of the file's own key names
next to the model's; a file in mmseg's layout that does not fit says so instead
(:func:`mmseg_refusal`): no mmseg architecture is registered here, and a plugin model that
builds one declares the key mapping with ``remap_keys``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlparse

import torch
from torch import nn

from tta.download import download, sha256_of
from tta.errors import UserError
from tta.paths import cache_dir
from tta.registry import WEIGHTS

BUILTIN = "builtin:"
#: container keys a state dict is found under, outermost first (torch/Lightning/mmseg/timm training scripts)
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
#: whole-model prefixes a saving wrapper adds: DataParallel/DDP, Lightning modules holding ``self.model``
WRAPPER_PREFIXES = ("module.", "model.")


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    sha256: str


def resolve(ref: str, sha256: str | None = None) -> Path:
    """A local file for ``ref`` (path, http(s) URL, or ``builtin:NAME``)."""
    if ref.startswith(BUILTIN):
        return WEIGHTS.get(ref[len(BUILTIN):])()
    from tta.models.pretrained import resolve_named

    named = resolve_named(ref)
    if named is not None:
        return named
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
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
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


def unwrap(obj: object) -> object:
    """The state dict inside the containers of :data:`WRAPPER_KEYS` (nested ones too)."""
    for _ in range(len(WRAPPER_KEYS)):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    return obj


def read_state_dict(path: Path, strip_module: bool = True) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (unwrapped, :func:`unwrap`); any failure to read it is one
    :class:`UserError` line. ``strip_module``: remove a ``module.`` prefix every key has
    (callers without a model to compare against; :func:`load_into` decides with its model)."""
    obj = unwrap(load_weights_only(path))
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {str(path)!r} holds no state dict of tensors")
    if strip_module and obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def strip_prefixes(state: dict[str, torch.Tensor], own: Iterable[str],
                   finish: Callable[[dict], dict] = lambda state: state,
                   prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> dict[str, torch.Tensor]:
    """``finish(state)`` without wrapper prefixes that every key carries (``module.``, ``model.``,
    stacked as in ``module.model.``), where that matches more of ``own`` after ``finish`` (the
    model's remap hook and dropped keys); of equally good candidates the least stripped."""
    own = set(own)
    best, candidates = finish(state), [state]
    while candidates:
        current = candidates.pop(0)
        for prefix in prefixes:
            if current and all(k.startswith(prefix) for k in current):
                stripped = {k[len(prefix):]: v for k, v in current.items()}
                candidates.append(stripped)
                finished = finish(stripped)
                if len(own & set(finished)) > len(own & set(best)):
                    best = finished
    return best


def drop_prefixed(state: dict[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    """``state`` without the tensors under any of ``prefixes`` (declared auxiliary heads)."""
    prefixes = tuple(prefixes)
    return {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}


def adapt_state(state: dict[str, torch.Tensor], own: Iterable[str], drop_keys: Iterable[str] = (),
                remap_keys: Callable[[dict], dict] | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint adaptors of the module docstring, steps 2-4, for a model with keys ``own``."""

    def finish(candidate: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mapped = candidate if remap_keys is None else remap_keys(dict(candidate))
        if not isinstance(mapped, dict):
            raise UserError(f"the model's remap_keys hook returned {type(mapped).__name__}, not a dict")
        return drop_prefixed(mapped, drop_keys)

    return strip_prefixes(state, own, finish)


def _examples(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def mismatch_message(path: Path, net: nn.Module, state: dict[str, torch.Tensor],
                     own: dict[str, torch.Tensor]) -> str | None:
    """One line on how ``state`` does not fit ``own`` (``None`` when it fits)."""
    # checkpoints saved before PyTorch 0.4.1 carry no BatchNorm step counters: keep the model's
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if not (missing or unexpected or wrong):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
    keys = f"the file's keys: {_examples(list(state))}; the model's: {_examples(list(own))}"
    return f"checkpoint {str(path)!r} does not fit model {type(net).__name__}: {'; '.join(parts)} ({keys})"


#: top-level modules of an mmseg ``EncoderDecoder`` (mmseg/models/segmentors/encoder_decoder.py: ``backbone``,
#: ``decode_head``, optional ``neck`` and ``auxiliary_head``), the key prefixes of its checkpoints' ``state_dict``
MMSEG_MODULES = ("backbone.", "neck.", "decode_head.", "auxiliary_head.")


def mmseg_refusal(path: Path, net: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """The one-line reason an mmseg-layout ``state`` (``backbone.*`` and ``decode_head.*`` keys,
    also under ``module.``) does not load into ``net``; ``None`` for any other layout.

    No registered model builds an mmseg network (see :mod:`tta.models.deeplab` for why mmseg's
    DeepLabV3 differs from torchvision's), so such a file fits only a plugin model that builds
    the network as mmseg does and renames its keys with ``remap_keys``.
    """
    keys = [k[len("module."):] if k.startswith("module.") else k for k in state]
    if not (any(k.startswith("backbone.") for k in keys) and any(k.startswith("decode_head.") for k in keys)):
        return None
    present = " / ".join(f"{m}*" for m in MMSEG_MODULES if any(k.startswith(m) for k in keys))
    return (f"checkpoint {str(path)!r} is in mmseg's layout ({present} keys) and does not fit model "
            f"{type(net).__name__}: no mmseg architecture is registered here; register the network as a plugin "
            f"model (register_model in a --plugin file) built as mmseg builds it, with remap_keys renaming mmseg's "
            f"keys to its modules (e.g. backbone. -> encoder., decode_head. -> decoder.) and "
            f"drop_keys=('auxiliary_head.',); see methods/README.md, Model plugins")


def load_into(net: nn.Module, ref: str, sha256: str | None = None, *, drop_keys: Iterable[str] | None = None,
              remap_keys: Callable[[dict], dict] | None = None) -> LoadedCheckpoint:
    """Load ``ref`` into ``net`` strictly, after the checkpoint adaptors (module docstring); a
    mismatch is a one-line :class:`UserError`. ``drop_keys`` / ``remap_keys`` default to what
    ``net``'s registration declares (:func:`tta.models.registry.entry_of`)."""
    from tta.models.registry import entry_of

    entry = entry_of(net)
    drop_keys = (entry.drop_keys if entry else ()) if drop_keys is None else tuple(drop_keys)
    remap_keys = (entry.remap_keys if entry else None) if remap_keys is None else remap_keys
    path = resolve(ref, sha256)
    own = net.state_dict()
    raw = read_state_dict(path, strip_module=False)
    state = adapt_state(raw, own, drop_keys, remap_keys)
    message = mismatch_message(path, net, state, own)
    if message:
        raise UserError(mmseg_refusal(path, net, raw) or message)
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


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file (timm's and Hugging Face's format; no code can run from it)."""
    try:
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - a malformed file: one line
        raise UserError(f"checkpoint {str(path)!r} is not a readable safetensors file ({load_failure(exc)})") from None


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
