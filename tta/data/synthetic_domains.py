"""Procedural multi-domain shapes: the offline domain-generalization (DG) default.

The 10 shape classes of :mod:`tta.data.synthetic` (same masks, same class order), each
rendered in four distinct *styles*, one style per domain, as PACS renders the same seven
classes as art, cartoon, photo and sketch:

* ``solid``    - the shape filled with one flat colour on a flat background of another;
* ``outline``  - a dark one-pixel contour of the shape on light, slightly noisy grey paper
  (sketch-like, no colour);
* ``textured`` - the shape filled with oriented two-colour stripes on a strongly noisy
  colour background (texture competes with shape);
* ``inverted`` - a bright, low-saturation shape with a vertical shading ramp on a dark
  background (negative-like contrast).

A pure function of ``(style, n, seed)``: the generator is numpy PCG64 seeded with
``[seed, crc32(style)]``, so every domain has its own stream and every machine builds
the same images. Not a stand-in for PACS: a small, fully reproducible DG task whose
domains differ in low-level statistics (what BatchNorm-statistics methods see) while
sharing the class-defining shapes.
"""

from __future__ import annotations

import zlib
from typing import Callable

import numpy as np

from tta.data.synthetic import CLASSES, SIZE, shape_masks

STYLES: tuple[str, ...] = ("solid", "outline", "textured", "inverted")


def _colours(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    return rng.uniform(low, high, size=(n, 1, 1, 3)).astype(np.float32)


def _solid(rng, mask):
    n = len(mask)
    background = _colours(rng, n, 0, 255)
    foreground = np.where(background > 127, background - _colours(rng, n, 80, 127),
                          background + _colours(rng, n, 80, 127))
    return np.where(mask[..., None], foreground, background)


def _outline(rng, mask):
    n = len(mask)
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    eroded = mask & padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    contour = mask & ~eroded
    paper = rng.uniform(200, 250, size=(n, 1, 1, 1)).astype(np.float32)
    grain = rng.normal(0, 6, size=(n, SIZE, SIZE, 1)).astype(np.float32)
    ink = rng.uniform(10, 70, size=(n, 1, 1, 1)).astype(np.float32)
    grey = np.where(contour[..., None], ink, paper + grain)
    return np.repeat(grey, 3, axis=3)


def _textured(rng, mask):
    n = len(mask)
    angle = rng.uniform(0, np.pi, size=(n, 1, 1)).astype(np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    phase = (xx[None] * np.cos(angle) + yy[None] * np.sin(angle)) / 2.5
    stripes = (np.floor(phase) % 2 == 0)[..., None]
    first, second = _colours(rng, n, 0, 255), _colours(rng, n, 0, 255)
    fill = np.where(stripes, first, second)
    background = _colours(rng, n, 60, 200) + rng.normal(0, 45, size=(n, SIZE, SIZE, 3)).astype(np.float32)
    return np.where(mask[..., None], fill, background)


def _inverted(rng, mask):
    n = len(mask)
    base = rng.uniform(170, 235, size=(n, 1, 1, 1)).astype(np.float32)
    tint = rng.uniform(-20, 20, size=(n, 1, 1, 3)).astype(np.float32)
    ramp = np.linspace(-35, 35, SIZE, dtype=np.float32)[None, :, None, None]
    foreground = base + tint + ramp
    background = rng.uniform(0, 45, size=(n, 1, 1, 3)).astype(np.float32)
    return np.where(mask[..., None], foreground, background)


RENDERERS: dict[str, Callable[[np.random.Generator, np.ndarray], np.ndarray]] = {
    "solid": _solid, "outline": _outline, "textured": _textured, "inverted": _inverted,
}


def generate_domain(style: str, n: int, seed: int = 0, downsample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of one style and their labels (int64), balanced over the classes.

    Images are uint8 N x S x S x 3 with ``S = 32 // downsample``: rendered at 32 x 32, then
    averaged over ``downsample x downsample`` blocks (anti-aliased, 4x cheaper to train on at 2).
    """
    render = RENDERERS[style]
    rng = np.random.default_rng([seed, zlib.crc32(style.encode())])
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    images = np.clip(render(rng, shape_masks(rng, labels)), 0, 255)
    if downsample > 1:
        k = downsample
        images = images.reshape(n, SIZE // k, k, SIZE // k, k, 3).mean(axis=(2, 4))
    return np.rint(images).astype(np.uint8), labels
