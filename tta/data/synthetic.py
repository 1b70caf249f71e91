"""Procedural 10-class 32x32 shape images: the data of the offline *smoke* benchmark.

Not CIFAR and not a stand-in for it: a small, fully reproducible classification task whose
images need no download, so the suite runs end to end on a fresh offline machine. Each
image is one shape (class) in a random colour, position and size on a random textured
background. Generation is vectorized and a pure function of ``(n, seed)``.
"""

from __future__ import annotations

import numpy as np

CLASSES: tuple[str, ...] = (
    "disk", "square", "triangle", "cross", "ring",
    "h_stripes", "v_stripes", "checker", "diamond", "x_mark",
)
SIZE = 32


def _masks(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of every class for offsets ``dx, dy`` (N,H,W) from centres, radius ``r`` (N,1,1)."""
    d = np.hypot(dx, dy)
    box = np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r
    bar = r / 4
    return {
        "disk": d <= r,
        "square": box,
        "triangle": (dy >= -0.8 * r) & (dy <= 0.8 * r) & (np.abs(dx) <= 0.6 * (dy + 0.8 * r)),
        "cross": ((np.abs(dx) <= bar) & (np.abs(dy) <= r)) | ((np.abs(dy) <= bar) & (np.abs(dx) <= r)),
        "ring": (d <= r) & (d >= 0.55 * r),
        "h_stripes": box & (np.floor((dy + r) / (0.4 * r)) % 2 == 0),
        "v_stripes": box & (np.floor((dx + r) / (0.4 * r)) % 2 == 0),
        "checker": box & ((np.floor(dx / (0.5 * r)) + np.floor(dy / (0.5 * r))) % 2 == 0),
        "diamond": np.abs(dx) + np.abs(dy) <= r,
        "x_mark": (np.abs(np.abs(dx) - np.abs(dy)) <= bar) & (np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r),
    }


def shape_masks(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Boolean N x 32 x 32 masks of each label's shape at a random centre (11..21) and radius (6..10)."""
    n = len(labels)
    grid = np.arange(SIZE, dtype=np.float32) + 0.5
    centre = rng.uniform(11, 21, size=(n, 2)).astype(np.float32)
    radius = rng.uniform(6, 10, size=(n, 1, 1)).astype(np.float32)
    dx = grid[None, None, :] - centre[:, 0, None, None]
    dy = grid[None, :, None] - centre[:, 1, None, None]
    masks = _masks(dx, dy, radius)
    mask = np.zeros((n, SIZE, SIZE), dtype=bool)
    for index, name in enumerate(CLASSES):
        chosen = labels == index
        mask[chosen] = masks[name][chosen]
    return mask


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8, N x 32 x 32 x 3) and labels (int64), balanced over the 10 classes."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    mask = shape_masks(rng, labels)
    background = rng.uniform(0, 255, size=(n, 1, 1, 3)).astype(np.float32)
    # foreground differs from background by at least 80 grey levels in some channel
    foreground = np.where(background > 127, background - rng.uniform(80, 127, size=(n, 1, 1, 3)),
                          background + rng.uniform(80, 127, size=(n, 1, 1, 3))).astype(np.float32)
    texture = rng.normal(0, 10, size=(n, SIZE, SIZE, 1)).astype(np.float32)
    images = np.where(mask[..., None], foreground, background + texture)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels
