"""Noise corruptions (Hendrycks & Dietterich, ICLR 2019, Sec. 3 "Noise").

All act on x = image / 255 in [0, 1] and end with ``uint8(clip(y, 0, 1) * 255)``:

* gaussian_noise: ``y = x + N(0, c^2)`` (i.i.d. per pixel and channel)
* shot_noise:     ``y = Poisson(c x) / c`` (photon counting with c photons at full scale)
* impulse_noise:  salt-and-pepper (scikit-image ``random_noise(mode="s&p", amount=c)``): each
  pixel-channel is replaced with probability c, by 1 or 0 with equal probability
* speckle_noise:  ``y = x + x * N(0, c^2)`` (multiplicative)

Gaussian and speckle noise draw their normals by Box-Muller (:mod:`.normal`), in float32 as the
noise is added.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tta.data.corruptions._ops import to_float, to_uint8
from tta.data.corruptions.normal import standard_normal_float32
from tta.data.corruptions.registry import Context, register


@register("gaussian_noise", "noise",
          cifar=(0.04, 0.06, 0.08, 0.09, 0.10), imagenet=(0.08, 0.12, 0.18, 0.26, 0.38))
def gaussian_noise(images: np.ndarray, c: float, ctx: Context) -> np.ndarray:
    x = to_float(images, np.float32)
    noise = standard_normal_float32(ctx.rng, x.shape)
    noise *= np.float32(c)
    x += noise
    return to_uint8(x)


#: cells of the guide table of :func:`poisson_tables` (per uint8 level)
GUIDE_CELLS = 256


@lru_cache(maxsize=16)
def poisson_tables(c: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-CDF tables of ``Poisson(level * c / 255)`` for the 256 uint8 levels.

    ``cdf[l, k] = P(K <= k)`` for k up to ``lambda_max + 12 sqrt(lambda_max) + 30`` (the mass
    beyond is below 1e-20; the last entry is set to 1 so it absorbs it), and the guide table
    ``guide[l, j] = min{k : cdf[l, k] > j / GUIDE_CELLS}`` (Chen & Asau's indexed search).
    """
    from scipy.stats import poisson

    lam = np.arange(256) * (float(c) / 255.0)
    k = np.arange(int(lam[-1] + 12 * np.sqrt(lam[-1]) + 30))
    cdf = poisson.cdf(k[None, :], lam[:, None])
    cdf[:, -1] = 1.0
    cells = np.arange(GUIDE_CELLS) / GUIDE_CELLS
    guide = np.stack([np.searchsorted(row, cells, side="right") for row in cdf])
    return cdf, guide


#: draws per block of :func:`poisson_of_levels` (its index arrays stay in cache)
POISSON_BLOCK = 1 << 14


def poisson_of_levels(levels: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """``Poisson(levels * c / 255)`` draws for uint8 ``levels``, by inversion of one uniform each.

    ``K = min{k : u < P(K <= k)}``: the guide table gives a start at or below K; draws not
    settled within two more steps (the far tails) finish by bisection on their CDF row. Same
    law as ``rng.poisson(lam)`` (exact up to the float64 CDF) and several times faster, because
    ``lambda`` takes only 256 values.
    """
    cdf, guide = poisson_tables(float(c))
    u = rng.random(levels.size)
    flat_levels = levels.reshape(-1)
    k = np.empty(levels.size, dtype=np.intp)
    for start in range(0, levels.size, POISSON_BLOCK):
        block = slice(start, start + POISSON_BLOCK)
        k[block] = _invert_cdf(flat_levels[block].astype(np.intp), u[block], cdf, guide)
    return k.reshape(levels.shape)


def _invert_cdf(rows: np.ndarray, u: np.ndarray, cdf: np.ndarray, guide: np.ndarray) -> np.ndarray:
    """``min{k : u < cdf[row, k]}`` per draw (see :func:`poisson_of_levels`)."""
    k = np.take(guide, rows * GUIDE_CELLS + (u * GUIDE_CELLS).astype(np.intp))
    offsets = rows * cdf.shape[1]
    pending = np.flatnonzero(np.take(cdf, offsets + k) <= u)
    for _ in range(2):
        k[pending] += 1
        pending = pending[np.take(cdf, offsets[pending] + k[pending]) <= u[pending]]
    if len(pending):  # bisection: cdf[lo] <= u < cdf[hi]; the last CDF entry is 1
        lo, hi = k[pending], np.full(len(pending), cdf.shape[1] - 1)
        offsets, u_pending = offsets[pending], u[pending]
        while (hi - lo > 1).any():
            mid = (lo + hi) // 2
            below = np.take(cdf, offsets + mid) <= u_pending
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        k[pending] = hi
    return k


@register("shot_noise", "noise",
          cifar=(500, 250, 100, 75, 50), imagenet=(60, 25, 12, 5, 3))
def shot_noise(images: np.ndarray, c: float, ctx: Context) -> np.ndarray:
    """``y = Poisson(c x) / c``; the photon counts are drawn by :func:`poisson_of_levels`, and
    mapped to 8 bits through a table of ``uint8(clip(k / c, 0, 1) * 255)`` over every count k."""
    counts = np.arange(poisson_tables(float(c))[0].shape[1])
    return np.take(to_uint8(counts / float(c)), poisson_of_levels(images, c, ctx.rng))


@register("impulse_noise", "noise",
          cifar=(0.01, 0.02, 0.03, 0.05, 0.07), imagenet=(0.03, 0.06, 0.09, 0.17, 0.27))
def impulse_noise(images: np.ndarray, c: float, ctx: Context) -> np.ndarray:
    """One uniform ``u`` per value: ``u < c/2`` salt (255), ``c/2 <= u < c`` pepper (0), the
    rest kept; the same law as a replacement draw followed by a fair salt-or-pepper draw."""
    u = ctx.rng.random(images.shape, dtype=np.float32)
    out = np.where(u < np.float32(c), np.uint8(0), images)
    np.putmask(out, u < np.float32(c / 2), np.uint8(255))
    return out


@register("speckle_noise", "noise",
          cifar=(0.06, 0.10, 0.12, 0.16, 0.20), imagenet=(0.15, 0.20, 0.35, 0.45, 0.60))
def speckle_noise(images: np.ndarray, c: float, ctx: Context) -> np.ndarray:
    x = to_float(images, np.float32)
    noise = standard_normal_float32(ctx.rng, x.shape)
    noise *= np.float32(c)
    noise *= x
    x += noise
    return to_uint8(x)
