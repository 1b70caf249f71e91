"""Pretrained weights by name as ``--checkpoint``: ``torchvision:<WEIGHTS_ENUM>`` (or the short
``torchvision:<TAG>``), ``timm:<model>.<tag>`` and ``robustbench:[<dataset>/<threat_model>/]<name>``.

Each resolves to a local file through the library's own cache, so weights a user already
has (from torchvision, timm or RobustBench) are found where those libraries keep them:

* ``torchvision:ResNet50_Weights.IMAGENET1K_V1`` -> ``torch.hub.get_dir()/checkpoints/<file
  name of the weights' URL>`` (torchvision's ``load_state_dict_from_url`` cache; ``$TORCH_HOME``
  moves it), downloaded there when missing and online, sha256-prefix checked as torch.hub does.
  The short form ``torchvision:IMAGENET1K_V1`` (or ``torchvision:DEFAULT``) takes the enum of
  the architecture named by ``--model`` (else the protocol's model) through torchvision's
  ``get_model_weights``; :func:`qualify` writes it out in full (an alias such as ``DEFAULT``
  becomes the tag it stands for), so the stored row names the exact weights;
* ``timm:resnet50.a1_in1k`` -> the Hugging Face hub cache (``$HF_HUB_CACHE``, else
  ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``) ``models--timm--<model>.<tag>/snapshots/
  */model.safetensors`` (or ``pytorch_model.bin``), downloaded with ``huggingface_hub`` when
  missing and online; weights timm serves only by URL use the torch.hub cache as above;
* ``robustbench:Standard`` -> RobustBench's model-zoo layout, see :mod:`tta.models.robustbench`.

Offline and not cached: one :class:`UserError` line naming the file and where to place it.
The file is then loaded like any checkpoint (:func:`tta.models.checkpoint.load_into`),
into the model named with ``--model`` (a RobustBench entry names its own model, :func:`qualify`).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch

from tta.errors import UserError

#: torch.hub's convention: ``name-<sha256 prefix>.ext``
_HASH_PREFIX = re.compile(r"-([a-f0-9]*)\.")
HF_FILES = ("model.safetensors", "pytorch_model.bin")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def torch_hub_file(url: str, what: str) -> Path:
    """``url``'s file in torch.hub's checkpoint cache, downloaded there if missing."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if target.is_file():
        return target
    match = _HASH_PREFIX.search(target.name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), hash_prefix=match.group(1) if match else None,
                                       progress=False)
    except Exception as exc:  # noqa: BLE001 - offline, HTTP errors, hash mismatch: one line
        raise UserError(f"{what} are not cached and could not be downloaded ({_reason(exc)}); "
                        f"offline, place {url} at {target}") from None
    return target


def torchvision_weights(name: str) -> Path:
    """``ResNet50_Weights.IMAGENET1K_V1`` -> its file in torch.hub's cache."""
    from torchvision.models import get_weight

    if "." not in name:  # a bare tag: only :func:`qualify`, which knows the architecture, can complete it
        raise UserError(f"torchvision:{name} names weights without their architecture; tta.run takes it from --model "
                        f"(else the protocol's model), elsewhere name the enum in full, "
                        f"e.g. torchvision:ResNet50_Weights.{name}")
    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise UserError(f"unknown torchvision weights {name!r}; name the enum in full, "
                        f"e.g. torchvision:ResNet50_Weights.IMAGENET1K_V1") from None
    return torch_hub_file(weights.url, f"torchvision weights {name}")


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, from the environment as huggingface_hub reads it."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("HF_HOME", xdg / "huggingface")).expanduser() / "hub"


def cached_hf_file(repo_dir: Path, filename: str) -> Path | None:
    """``filename`` in a hub-cache repo folder: the snapshot ``refs/main`` names, else any snapshot."""
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        pinned = repo_dir / "snapshots" / ref.read_text().strip() / filename
        if pinned.is_file():
            return pinned
    found = sorted((repo_dir / "snapshots").glob(f"*/{filename}"))
    return found[0] if found else None


def timm_normalization(ref: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` the weights ``timm:<model>.<tag>`` were trained with (timm's pretrained config of
    that tag: tags of one architecture differ, e.g. ``convnext_base.clip_laion2b`` uses CLIP's mean
    and std, ``convnext_base.fb_in1k`` ImageNet's); ``None`` for any other reference or unknown tag."""
    if not ref.startswith("timm:"):
        return None
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(ref[len("timm:"):])
    except RuntimeError:
        return None
    if cfg is None or cfg.mean is None or cfg.std is None:
        return None
    return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)


def timm_weights(name: str) -> Path:
    """``resnet50.a1_in1k`` -> timm's weights file, from the hub cache (or torch.hub's for URL-only weights)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # timm: "Invalid pretrained tag (...) for <model>."
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise UserError(f"unknown timm pretrained weights {name!r}; write <model>.<tag>, e.g. timm:resnet50.a1_in1k "
                        f"(timm.list_pretrained() lists them)")
    if not cfg.hf_hub_id:
        return torch_hub_file(cfg.url, f"timm weights {name}")
    repo_id = cfg.hf_hub_id
    cache = hf_hub_cache()
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    for filename in HF_FILES:
        found = cached_hf_file(repo_dir, filename)
        if found is not None:
            return found
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    # huggingface_hub retries an unreachable host for ~20 s per file: ask the network once first
    reasons = [unreachable(endpoint)]
    if reasons[0] is None:
        from huggingface_hub import hf_hub_download

        reasons.clear()
        for filename in HF_FILES:  # timm's own order: safetensors first
            try:
                return Path(hf_hub_download(repo_id, filename, cache_dir=str(cache)))
            except Exception as exc:  # noqa: BLE001 - missing file, hub errors
                reasons.append(_reason(exc))
    raise UserError(f"timm weights {name} are not cached and could not be downloaded ({reasons[0]}); "
                    f"offline, place {HF_FILES[0]} from {endpoint}/{repo_id} at "
                    f"{repo_dir / 'snapshots' / 'local' / HF_FILES[0]}")


def unreachable(url: str, timeout: float = 5.0, offline_env: str | None = "HF_HUB_OFFLINE") -> str | None:
    """Why ``url``'s host cannot be reached (``None`` when it can; ``offline_env=1`` counts as offline)."""
    if offline_env and os.environ.get(offline_env, "").lower() in ("1", "true", "yes", "on"):
        return f"{offline_env} is set"
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname or "", parsed.port or 443), timeout=timeout).close()
    except OSError as exc:
        return f"no connection to {parsed.hostname}: {exc.strerror or exc}"
    return None


def robustbench_weights(name: str) -> Path:
    """``cifar10/corruptions/Standard`` (or ``Standard``) -> its file in RobustBench's layout
    (:mod:`tta.models.robustbench`)."""
    from tta.models.robustbench import resolve

    return resolve(name)


#: ``--checkpoint`` prefix -> resolver of the name after it
SCHEMES: dict[str, Callable[[str], Path]] = {"torchvision:": torchvision_weights, "timm:": timm_weights,
                                             "robustbench:": robustbench_weights}
TORCHVISION, ROBUSTBENCH = "torchvision:", "robustbench:"


def torchvision_enum_ref(tag: str, architecture: str) -> str:
    """``torchvision:<Enum>.<TAG>`` of weights ``tag`` of torchvision model ``architecture``
    (``IMAGENET1K_V1``, ``resnet50`` -> ``torchvision:ResNet50_Weights.IMAGENET1K_V1``)."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(architecture)
    except ValueError:
        raise UserError(f"--checkpoint torchvision:{tag} names weights of the model's architecture ({architecture!r}: "
                        f"--model, else the protocol's), and torchvision has no model {architecture!r}; name the "
                        f"weights in full, torchvision:<Enum>.<TAG>") from None
    if tag not in enum.__members__:
        raise UserError(f"torchvision has no weights {tag!r} for {architecture} "
                        f"(its weights: {', '.join(enum.__members__)})")
    member = enum[tag]
    return f"{TORCHVISION}{type(member).__name__}.{member.name}"


def qualify(checkpoint: str | None, model: str | None,
            default_model: Callable[[], str]) -> tuple[str | None, str | None]:
    """``(model, checkpoint)`` with what a ``--checkpoint`` form leaves implicit written out.

    * ``torchvision:<TAG>``: the enum of ``model`` (else ``default_model()``, the protocol's);
    * ``robustbench:...``: the entry's canonical reference and the model it is built on here
      (a different ``--model`` is refused: the entry's architecture and input normalization are
      what RobustBench evaluated);
    * anything else passes unchanged.
    """
    if checkpoint is None:
        return model, checkpoint
    if checkpoint.startswith(ROBUSTBENCH):
        from tta.models.robustbench import lookup

        entry = lookup(checkpoint[len(ROBUSTBENCH):])
        if model is not None and model != entry.model:
            raise UserError(f"{entry.ref} is a {entry.architecture} ({entry.normalization()}), built here as model "
                            f"{entry.model!r}, not {model!r}; drop --model or give --model {entry.model}")
        return entry.model, entry.ref
    tag = checkpoint[len(TORCHVISION):]
    if checkpoint.startswith(TORCHVISION) and tag and "." not in tag:
        return model, torchvision_enum_ref(tag, model or default_model())
    return model, checkpoint


def resolve_named(ref: str) -> Path | None:
    """The local file for a ``torchvision:`` / ``timm:`` reference; ``None`` for any other ``ref``."""
    scheme = next((s for s in SCHEMES if ref.startswith(s)), None)
    if scheme is None:
        return None
    name = ref[len(scheme):]
    if not name:
        raise UserError(f"--checkpoint {ref!r} names no weights; e.g. torchvision:ResNet50_Weights.IMAGENET1K_V1 "
                        f"or timm:resnet50.a1_in1k")
    return SCHEMES[scheme](name)
