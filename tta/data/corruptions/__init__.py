"""The corruption engine: the 19 corruptions of Hendrycks & Dietterich, batched and seeded.

Dan Hendrycks and Thomas Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019 (CIFAR-10-C, CIFAR-100-C, ImageNet-C).

    corrupt(images, name, severity, seed=0, recipe=None) -> images

* ``images``: uint8 array (N, H, W, 3), RGB. The result has the same shape and dtype, and is
  C-contiguous (streams turn NHWC memory into channels-last tensors; another order would
  give one domain another convolution layout, and another speed).
* ``name``: one of :data:`tta.data.corruption_names.ALL_CORRUPTIONS`; ``severity``: 1..5.
* ``recipe``: ``"cifar"`` (the 32x32 parameters of ``make_cifar_c.py``) or ``"imagenet"``
  (the 224x224 parameters of ``make_imagenet_c.py``); by default chosen from the image size:
  32x32 -> ``"cifar"``, anything else -> ``"imagenet"``.
* ``seed``: the random stream is ``numpy.random.default_rng([seed, index of name, severity])``,
  so the same (images, name, severity, seed, recipe) gives the same bytes, and different
  corruptions or severities never share noise. A ``numpy.random.Generator`` may be passed as
  ``rng`` instead.

The families live in small modules (``noise``, ``blur``, ``weather``, ``digital``), each
registering its functions and both parameter tables in :data:`REGISTRY`.
"""

from __future__ import annotations

import numpy as np

from tta.data.corruption_names import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES
from tta.data.corruptions import blur, digital, noise, weather  # noqa: F401  (they register themselves)
from tta.data.corruptions.registry import RECIPES, REGISTRY, Context, Corruption
from tta.data.corruptions.textures import frost_dir
from tta.errors import UserError

if set(REGISTRY) != set(ALL_CORRUPTIONS):  # pragma: no cover - a programming error, caught at import
    raise ImportError(f"corruption registry out of sync: {sorted(set(REGISTRY) ^ set(ALL_CORRUPTIONS))}")

__all__ = ["corrupt", "recipe_for", "parameter", "REGISTRY", "RECIPES", "Corruption", "frost_dir", "ENGINE_VERSION",
           "ALL_CORRUPTIONS", "BENCHMARK_CORRUPTIONS", "EXTRA_CORRUPTIONS", "SEVERITIES"]

#: The bytes a seed gives: raised whenever any corruption's output for the same (images, name,
#: severity, seed, recipe) changes, and recorded with generated data, so that files of two
#: versions are never mixed. 1: up to 2026-11-26. 2: normal draws by Box-Muller (gaussian,
#: speckle, snow, spatter), one uniform per value for impulse noise, float32 elastic fields.
#: 3: zoom_blur of 32x32 images by the sparse operator, as at other sizes (the dense GEMM's sums
#: depended on the batch size and the BLAS build; about 0.2% of CIFAR values move one level).
ENGINE_VERSION = 3


def recipe_for(height: int, width: int) -> str:
    """32x32 images get the CIFAR recipe, every other size the ImageNet one."""
    return "cifar" if (height, width) == (32, 32) else "imagenet"


def _check(name: str, severity: int, recipe: str | None) -> None:
    if name not in REGISTRY:
        raise UserError(f"unknown corruption {name!r}; choose one of: {', '.join(ALL_CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise UserError(f"severity must be an integer from 1 to 5, got {severity!r}")
    if recipe is not None and recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")


def parameter(name: str, severity: int, recipe: str):
    """The published parameter of ``name`` at ``severity`` in ``recipe``."""
    _check(name, severity, recipe)
    return REGISTRY[name].param(recipe, int(severity))


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0, recipe: str | None = None,
            rng: np.random.Generator | None = None) -> np.ndarray:
    """Corrupt a batch of uint8 RGB images (N, H, W, 3) with ``name`` at ``severity`` (1..5)."""
    _check(name, severity, recipe)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"images must be a uint8 array of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    if images.shape[1] < 32 or images.shape[2] < 32:
        raise UserError(f"images must be at least 32x32 pixels, got {images.shape[1]}x{images.shape[2]}")
    recipe = recipe or recipe_for(images.shape[1], images.shape[2])
    if rng is None:
        rng = np.random.default_rng([int(seed), ALL_CORRUPTIONS.index(name), int(severity)])
    if len(images) == 0:
        return images.copy()
    entry = REGISTRY[name]
    out = entry.fn(np.ascontiguousarray(images), entry.param(recipe, int(severity)), Context(rng, recipe))
    assert out.shape == images.shape and out.dtype == np.uint8
    return np.ascontiguousarray(out)
