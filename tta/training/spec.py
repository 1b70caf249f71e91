"""Training recipes: ``protocols/train/<protocol>.toml``, one per DG protocol.

A recipe says how ``python -m tta.train --protocol NAME`` trains a source model; the
protocol spec (``protocols/NAME.toml``) still says what the data and classes are.

| key | meaning |
| --- | --- |
| `model` | network (registered or timm name; default: the protocol's model) |
| `pretrained` | `none` (random init), `timm` (timm's ImageNet weights, online) or a weights file |
| `bn` | `frozen`: BatchNorm layers stay in eval mode, keeping the pretrained (ImageNet) running statistics, as DomainBed's ResNet does; `train`: running statistics are re-estimated on the source domains. With `pretrained = none` a recipe's `frozen` becomes `train` (with a notice) and `--bn frozen` is refused: see `tta/training/model.py` |
| `steps`, `batch_size` | optimization steps; examples per source domain per step |
| `checkpoint_every` | steps between validation (model selection) and resumable checkpoints |
| `holdout_fraction` | share of every source domain kept for validation (DomainBed: 0.2) |
| `augment` | training augmentation (`none`, `domainbed`) |
| `[hparams]` | recipe defaults for the training method's hyperparameters (`--hp` overrides) |
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tta.errors import UserError

RECIPE_DIR = Path(__file__).resolve().parents[1] / "protocols" / "specs" / "train"
BN_MODES = ("frozen", "train")


@dataclass(frozen=True)
class TrainRecipe:
    name: str
    model: str | None = None
    pretrained: str = "none"
    bn: str = "train"
    steps: int = 1000
    batch_size: int = 32
    checkpoint_every: int = 100
    holdout_fraction: float = 0.2
    augment: str = "none"
    hparams: dict[str, Any] = field(default_factory=dict)


def find_recipe(protocol: str) -> TrainRecipe:
    """The recipe of a protocol name, or of ``path/to/spec.toml`` (``path/to/train/spec.toml``)."""
    if protocol.endswith(".toml"):
        path = Path(protocol).expanduser().parent / "train" / Path(protocol).name
    else:
        path = RECIPE_DIR / f"{protocol}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPE_DIR.glob("*.toml")))
        raise UserError(f"protocol {protocol!r} has no training recipe ({path} not found; recipes: {known})")
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"training recipe {str(path)!r} is not readable TOML ({exc})") from None
    known_keys = {f.name for f in fields(TrainRecipe)} - {"name"}
    unknown = sorted(set(raw) - known_keys)
    if unknown:
        raise UserError(f"training recipe {str(path)!r} has unknown key {unknown[0]!r} (known: {', '.join(sorted(known_keys))})")
    recipe = TrainRecipe(name=path.stem, **raw)
    if recipe.bn not in BN_MODES:
        raise UserError(f"training recipe {str(path)!r}: bn must be one of {', '.join(BN_MODES)}, got {recipe.bn!r}")
    return recipe
