"""The corruption registry: name -> (batched function, per-recipe severity parameters).

Every corruption of Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations" (ICLR 2019) registers itself here with the decorator
:func:`register`, giving its five severity parameters for both published recipes:

* ``"cifar"``: the 32x32 recipe (``make_cifar_c.py`` of github.com/hendrycks/robustness),
* ``"imagenet"``: the 224x224 recipe (``make_imagenet_c.py``, as also shipped by the
  ``imagecorruptions`` package).

Dispatch is a dictionary lookup, never a chain of name comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

RECIPES: tuple[str, ...] = ("cifar", "imagenet")


@dataclass(frozen=True)
class Context:
    """What a corruption function may use besides the images and its parameter."""

    rng: np.random.Generator
    recipe: str


@dataclass(frozen=True)
class Corruption:
    name: str
    family: str
    fn: Callable[[np.ndarray, Any, Context], np.ndarray]
    params: dict[str, tuple]

    def param(self, recipe: str, severity: int) -> Any:
        return self.params[recipe][severity - 1]


REGISTRY: dict[str, Corruption] = {}


def register(name: str, family: str, *, cifar: tuple, imagenet: tuple):
    """Decorator: ``fn(images_uint8_nhwc, param, ctx) -> uint8 nhwc`` becomes corruption ``name``."""
    if len(cifar) != 5 or len(imagenet) != 5:
        raise ValueError(f"{name}: need five severity parameters per recipe")

    def wrap(fn):
        if name in REGISTRY:
            raise ValueError(f"corruption {name!r} registered twice")
        REGISTRY[name] = Corruption(name, family, fn, {"cifar": tuple(cifar), "imagenet": tuple(imagenet)})
        return fn

    return wrap
