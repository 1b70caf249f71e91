"""Noise corruptions (Hendrycks & Dietterich, ICLR 2019, Sec. 3 "Noise").

All act on x = image / 255 in [0, 1] and end with ``uint8(clip(y, 0, 1) * 255)``:

* gaussian_noise: ``y = x + N(0, c^2)`` (i.i.d. per pixel and channel)
* shot_noise:     ``y = Poisson(c x) / c`` (photon counting with c photons at full scale)
* impulse_noise:  salt-and-pepper (scikit-image ``random_noise(mode="s&p", amount=c)``): each
  pixel-channel is replaced with probability c, by 1 or 0 with equal probability
* speckle_noise:  ``y = x + x * N(0, c^2)`` (multiplicative)
"""

from __future__ import annotations

import numpy as np

from tta.data.corruptions._ops import to_float, to_uint8
from tta.data.corruptions.registry import Context, register


@register("gaussian_noise", "noise",
          cifar=(0.04, 0.06, 0.08, 0.09, 0.10), imagenet=(0.08, 0.12, 0.18, 0.26, 0.38))
def gaussian_noise(images: np.ndarray, c: float, ctx: Context) -> np.ndarray:
    x = to_float(images, np.float32)
    x += np.float32(c) * ctx.rng.standard_normal(x.shape, dtype=np.float32)
    return to_uint8(x)


@register("shot_noise", "noise",
          cifar=(500, 250, 100, 75, 50), imagenet=(60, 25, 12, 5, 3))
def shot_noise(images: np.ndarray, c: float, ctx: Context) -> np.ndarray:
    lam = images.astype(np.float64) * (c / 255.0)
    return to_uint8(ctx.rng.poisson(lam) / float(c))


@register("impulse_noise", "noise",
          cifar=(0.01, 0.02, 0.03, 0.05, 0.07), imagenet=(0.03, 0.06, 0.09, 0.17, 0.27))
def impulse_noise(images: np.ndarray, c: float, ctx: Context) -> np.ndarray:
    out = images.copy()
    flipped = ctx.rng.random(images.shape, dtype=np.float32) < c
    salted = ctx.rng.random(images.shape, dtype=np.float32) < 0.5
    out[flipped & salted] = 255
    out[flipped & ~salted] = 0
    return out


@register("speckle_noise", "noise",
          cifar=(0.06, 0.10, 0.12, 0.16, 0.20), imagenet=(0.15, 0.20, 0.35, 0.45, 0.60))
def speckle_noise(images: np.ndarray, c: float, ctx: Context) -> np.ndarray:
    x = to_float(images, np.float32)
    x += x * (np.float32(c) * ctx.rng.standard_normal(x.shape, dtype=np.float32))
    return to_uint8(x)
