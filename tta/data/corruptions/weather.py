"""Weather corruptions (Hendrycks & Dietterich, ICLR 2019, Sec. 3 "Weather"; extra: spatter).

x = image / 255; results end with ``uint8(clip(y, 0, 1) * 255)`` (truncation).

* snow: layer L ~ N(mu, s^2) per pixel, zoomed z times (``clipped_zoom``), zeroed below t,
  motion-blurred (radius r, sigma b, angle U(-135, -45) degrees) and rounded to 8 bits;
  ``x' = a x + (1 - a) max(x, 1.5 gray(x) + 0.5)``; ``y = x' + L + rot180(L)``.
* frost: ``y = a * image + b * F`` in 0..255, F = random crop of one of the first five frost
  photographs (chosen uniformly), downscaled by 0.2 (bilinear) in the 32x32 recipe.
* fog: ``y = (x + a P) * max(x) / (max(x) + a)``, P = diamond-square plasma fractal with
  roughness decay ``d`` (:func:`tta.data.corruptions._ops.plasma_fractal`).
* spatter: liquid layer L = Gaussian-blurred N(mu, s^2) noise, zeroed below t. Water
  (mode 0): edge-distance texture of L (Canny, distance transform, histogram equalisation,
  emboss) gives ``m = L dist / max * k`` and ``y = x + m * (175, 238, 238) / 255``. Mud (mode
  1): ``m = gaussian(L > t, k)``, zeroed below 0.8, ``y = x (1 - m) + m * (63, 42, 20) / 255``.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from tta.data.corruptions import _ops
from tta.data.corruptions._ops import to_float, to_uint8
from tta.data.corruptions.normal import normal_layer
from tta.data.corruptions.registry import Context, register
from tta.data.corruptions.textures import frost_textures

FROST_CHOICES = 5  # the reference draws randint(5): frost6.jpg is never used


@register("snow", "weather",
          cifar=((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                 (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                 (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
          imagenet=((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                    (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)))
def snow(images: np.ndarray, c: tuple, ctx: Context) -> np.ndarray:
    mu, s, zoom, threshold, radius, blur_sigma, keep = c
    n, h, w = images.shape[:3]
    layer = normal_layer(ctx.rng, mu, s, (n, h, w))
    layer = _ops.clipped_zoom(layer, float(zoom))
    layer[layer < threshold] = 0
    layer = np.clip(layer, 0, 1)
    angles = ctx.rng.uniform(-135, -45, size=n)
    layer = _ops.motion_blur(layer, radius, blur_sigma, angles)
    return snow_blend(images, np.round(layer * 255).astype(np.uint8), keep)


#: pixels per block of :func:`snow_blend` (its float planes stay in cache)
SNOW_BLOCK = 1 << 14


def snow_blend(images: np.ndarray, flakes: np.ndarray, keep: float) -> np.ndarray:
    """``uint8(clip(x' + L + rot180(L), 0, 1) * 255)`` with ``L = flakes / 255`` (float64) and
    ``x' = keep x + (1 - keep) max(x, 1.5 gray(x) + 0.5)`` in float32, x = images / 255.

    Computed over blocks of about ``SNOW_BLOCK`` pixels (whole small images, or rows of one
    image with the rotated layer read from the mirrored rows), in place where possible; the
    lower clip is left out as every term is >= 0.
    """
    n, h, w = images.shape[:3]
    out = np.empty_like(images)
    group = max(1, SNOW_BLOCK // (h * w))  # whole small images per block, else blocks of rows
    step = h if group > 1 else max(1, SNOW_BLOCK // w)
    for a in range(0, n, group):
        for top in range(0, h, step):
            rows, mirrored = slice(top, min(top + step, h)), slice(h - min(top + step, h), h - top)
            x = to_float(images[a:a + group, rows], np.float32)
            gray = _ops.rgb_to_gray(x)
            gray *= 1.5
            gray += 0.5
            y = np.maximum(x, gray[..., None])
            y *= 1 - keep
            x *= keep
            y += x
            y = y + flakes[a:a + group, rows, :, None] / 255.0
            y += flakes[a:a + group, mirrored, ::-1, None][:, ::-1] / 255.0
            np.minimum(y, 1.0, out=y)
            y *= 255.0
            out[a:a + group, rows] = y
    return out


def _fitted_textures(recipe: str, h: int, w: int) -> list[np.ndarray]:
    textures = frost_textures()[:FROST_CHOICES]
    if recipe == "cifar":
        textures = [cv2.resize(t, (0, 0), fx=0.2, fy=0.2, interpolation=cv2.INTER_LINEAR) for t in textures]
    fitted = []
    for t in textures:
        if t.shape[0] <= h or t.shape[1] <= w:  # too small to crop: enlarge as imagecorruptions does
            scale = 1.1 * max(h / t.shape[0], w / t.shape[1], 1.0)
            size = (int(np.ceil(t.shape[1] * scale)), int(np.ceil(t.shape[0] * scale)))
            t = cv2.resize(t, size, interpolation=cv2.INTER_CUBIC)
        fitted.append(t)
    return fitted


@register("frost", "weather",
          cifar=((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
          imagenet=((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)))
def frost(images: np.ndarray, c: tuple, ctx: Context) -> np.ndarray:
    n, h, w = images.shape[:3]
    textures = _fitted_textures(ctx.recipe, h, w)
    idx = ctx.rng.integers(FROST_CHOICES, size=n)
    tops = ctx.rng.integers(0, np.array([textures[i].shape[0] - h for i in idx]))
    lefts = ctx.rng.integers(0, np.array([textures[i].shape[1] - w for i in idx]))
    crops = np.empty_like(images)
    for i, (t, top, left) in enumerate(zip(idx, tops, lefts)):  # slices: 75x faster than one fancy gather at 224 px
        crops[i] = textures[t][top:top + h, left:left + w]
    pairs = images.astype(np.uint16)
    pairs <<= 8
    pairs |= crops
    return np.take(frost_blend_table(*c), pairs)


@lru_cache(maxsize=16)
def frost_blend_table(a: float, b: float) -> np.ndarray:
    """``uint8(clip(a * i + b * j, 0, 255))`` in float64, as the recipe blends, for every image
    level i and frost level j, flat at ``256 i + j``: the blend becomes one table lookup per value."""
    levels = np.arange(256, dtype=np.float64)
    return np.clip(a * levels[:, None] + b * levels[None, :], 0, 255).astype(np.uint8).reshape(-1)


@register("fog", "weather",
          cifar=((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
          imagenet=((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)))
def fog(images: np.ndarray, c: tuple, ctx: Context) -> np.ndarray:
    n, h, w = images.shape[:3]
    x = to_float(images)
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    plasma = _ops.plasma_fractal(n, _ops.next_power_of_2(max(h, w)), c[1], ctx.rng)
    x += c[0] * plasma[:, :h, :w, None]
    return to_uint8(x * max_val / (max_val + c[0]))


_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)
_WATER = np.array([175, 238, 238], dtype=np.float32) / 255
_MUD = np.array([63, 42, 20], dtype=np.float64) / 255


def _water_texture(liquid8: np.ndarray) -> np.ndarray:
    """Per image (OpenCV): emboss of the equalised, truncated distance to Canny edges."""
    edges = cv2.Canny(liquid8, 50, 150)
    dist = cv2.distanceTransform(255 - edges, cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
    dist = cv2.filter2D(dist, cv2.CV_8U, _EMBOSS)
    return cv2.blur(dist, (3, 3)).astype(np.float32)


@register("spatter", "weather",
          cifar=((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                 (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
          imagenet=((0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
                    (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1)))
def spatter(images: np.ndarray, c: tuple, ctx: Context) -> np.ndarray:
    mu, s, sigma, threshold, strength, mud = c
    n, h, w = images.shape[:3]
    liquid = normal_layer(ctx.rng, mu, s, (n, h, w))
    if _ops.separable_pays(h, w, _ops.gaussian_radius(sigma, 4.0)):  # a random field: summation order is immaterial
        liquid = _ops.gaussian_spatial_separable(liquid, sigma, 4.0, "nearest")
    else:
        liquid = _ops.gaussian_spatial(liquid, sigma)
    liquid[liquid < threshold] = 0
    if mud:
        m = _ops.gaussian_spatial((liquid > threshold).astype(np.float32), strength)
        m[m < 0.8] = 0
        m = m[..., None].astype(np.float64)
        x = to_float(images, np.float32)
        return to_uint8(x * (1 - m) + m * _MUD)
    # values above 1 wrap around modulo 256, as NumPy's float -> uint8 cast did for the published data
    liquid8 = (liquid * 255).astype(np.int64).astype(np.uint8)
    m = np.empty((n, h, w), dtype=np.float32)
    for i in range(n):
        m[i] = liquid8[i] * _water_texture(liquid8[i])
    peak = m.max(axis=(1, 2), keepdims=True)
    m /= np.where(peak > 0, peak, np.float32(1))  # m >= 0, so an image without water stays 0
    m *= np.float32(strength)
    y = m[..., None] * _WATER
    y += to_float(images, np.float32)
    return to_uint8(y)
