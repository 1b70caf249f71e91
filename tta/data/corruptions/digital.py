"""Digital corruptions (Hendrycks & Dietterich, ICLR 2019, Sec. 3 "Digital"; extra: saturate).

x = image / 255; results end with ``uint8(clip(y, 0, 1) * 255)`` (truncation) unless noted.

* brightness: in HSV, ``V' = clip(V + c, 0, 1)`` (hue and saturation kept); the round trip
  RGB -> HSV -> RGB uses scikit-image's formulas, whose rounding the published data carries.
* contrast: ``y = (x - mean) c + mean``, mean per image and channel.
* saturate: in HSV, ``S' = clip(S a + b, 0, 1)`` (hue and value kept); a grey pixel has hue 0
  (red), so ``b > 0`` tints grey pixels red, as in the published data.
* pixelate: PIL box downscale to ``int(c H) x int(c W)``, then box upscale back.
* jpeg_compression: PIL JPEG encode at quality c, decode.
* elastic_transform: random affine warp (three control points moved by U(-a, a), OpenCV bilinear,
  reflect-101 borders), then displacement ``u = alpha * G_sigma * U(-1, 1)`` per axis (Gaussian
  of SciPy, mode reflect, truncate 3), sampled bilinearly with half-sample-symmetric borders
  (SciPy ``map_coordinates(order=1, mode="reflect")``).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from tta.data.corruptions import _ops
from tta.data.corruptions._ops import to_float, to_uint8
from tta.data.corruptions.registry import Context, register


def hsv_of_planes(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HSV planes of float RGB planes in [0, 1], with scikit-image's formulas and tie order.

    ``V = max``, ``S = (max - min) / V`` (0 for grey), hue sector from the maximal channel (blue
    over green over red on ties), ``H = (sector + ratio) / 6 mod 1`` (0 for grey), i.e.
    ``(g - b) / delta``, ``2 + (b - r) / delta`` or ``4 + (r - g) / delta``, over 6. Only the
    red sector can be negative (above -1/6), so ``mod 1`` is ``+1`` there, as in NumPy's mod.
    """
    v = np.maximum(np.maximum(r, g), b)
    delta = v - np.minimum(np.minimum(r, g), b)
    grey = delta == 0
    safe = np.where(grey, 1.0, delta)
    s = np.where(grey, 0.0, delta / np.where(v == 0, 1.0, v))
    blue, green = b == v, g == v
    green &= ~blue
    h = g - b
    np.subtract(b, r, out=h, where=green)
    np.subtract(r, g, out=h, where=blue)
    h /= safe
    np.add(h, 2.0, out=h, where=green)
    np.add(h, 4.0, out=h, where=blue)
    h /= 6.0
    np.add(h, 1.0, out=h, where=h < 0)
    h[grey] = 0.0
    return h, s, v


def hsv_to_planes(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB planes from HSV planes, with scikit-image's sector formulas.

    Every channel is one of ``V, p = V (1 - S), q = V (1 - f S), t = V (1 - (1 - f) S)``,
    computed with the same floating-point operations as scikit-image (so the same rounding);
    the hue sector ``floor(6 H) mod 6`` picks which (red: V q p p t V over sectors 0..5; green
    and blue the same list rotated by 2 and 4 sectors), by masks rather than a gather.
    """
    h6 = h * 6
    hi = np.floor(h6)
    f = h6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    # floor(6 H) is 6 where 6 H rounds up to 6.0: that is sector 0
    sector = [(hi == 0) | (hi == 6)] + [hi == k for k in range(1, 6)]

    def pick(k):  # the channel whose value is V in sectors k and k - 1, q in k + 1, t in k - 2
        return np.where(sector[k] | sector[k - 1], v,
                        np.where(sector[(k + 1) % 6], q, np.where(sector[k - 2], t, p)))

    return pick(0), pick(2), pick(4)


#: pixels per block of :func:`hsv_adjust`: its float64 planes (64 KiB) and temporaries stay in
#: cache, and stay below the allocator's mmap threshold (128 KiB planes page-fault anew each time)
HSV_BLOCK = 1 << 13


def hsv_adjust(images: np.ndarray, adjust) -> np.ndarray:
    """``uint8(clip(hsv_to_planes(*adjust(*hsv_of_planes(x))), 0, 1) * 255)`` for x = images / 255,
    block by block over the pixels, on colour planes (several times faster than whole 224x224
    batches)."""
    flat = images.reshape(-1, 3)
    out = np.empty_like(flat)
    for start in range(0, len(flat), HSV_BLOCK):
        block = flat[start:start + HSV_BLOCK]
        planes = hsv_to_planes(*adjust(*hsv_of_planes(*(block[:, k] / 255.0 for k in range(3)))))
        for k, plane in enumerate(planes):
            out[start:start + HSV_BLOCK, k] = to_uint8(plane)
    return out.reshape(images.shape)


@register("brightness", "digital",
          cifar=(0.05, 0.1, 0.15, 0.2, 0.3), imagenet=(0.1, 0.2, 0.3, 0.4, 0.5))
def brightness(images: np.ndarray, c: float, ctx: Context) -> np.ndarray:
    return hsv_adjust(images, lambda h, s, v: (h, s, np.clip(v + c, 0, 1)))


@register("contrast", "digital",
          cifar=(0.75, 0.5, 0.4, 0.3, 0.15), imagenet=(0.4, 0.3, 0.2, 0.1, 0.05))
def contrast(images: np.ndarray, c: float, ctx: Context) -> np.ndarray:
    """``y = (x - m) c + m``, m the mean of x per image and channel (from exact integer sums).

    y depends only on the uint8 level once m is known, so it is tabulated for the 256 levels of
    every image and channel and applied with OpenCV's per-channel ``LUT``.
    """
    n, h, w, ch = images.shape
    # cv2.sumElems: float64 sums of integers below 2^53, so exact (and far faster than NumPy's)
    means = np.array([cv2.sumElems(img)[:ch] for img in images]) / (255.0 * h * w)
    levels = np.arange(256)[None, :, None] / 255.0
    tables = to_uint8((levels - means[:, None, :]) * c + means[:, None, :])  # (N, 256, C)
    out = np.empty_like(images)
    for i in range(n):
        out[i] = cv2.LUT(images[i], tables[i, :, None, :])
    return out


@register("saturate", "digital",
          cifar=((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
          imagenet=((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)))
def saturate(images: np.ndarray, c: tuple, ctx: Context) -> np.ndarray:
    return hsv_adjust(images, lambda h, s, v: (h, np.clip(s * c[0] + c[1], 0, 1), v))


def _pil_each(images: np.ndarray, op) -> np.ndarray:
    out = np.empty_like(images)
    for i, img in enumerate(images):
        out[i] = np.asarray(op(Image.fromarray(img)))
    return out


@register("pixelate", "digital",
          cifar=(0.95, 0.9, 0.85, 0.75, 0.65), imagenet=(0.6, 0.5, 0.4, 0.3, 0.25))
def pixelate(images: np.ndarray, c: float, ctx: Context) -> np.ndarray:
    h, w = images.shape[1:3]
    small = (int(w * c), int(h * c))
    return _pil_each(images, lambda im: im.resize(small, Image.BOX).resize((w, h), Image.BOX))


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


@register("jpeg_compression", "digital",
          cifar=(80, 65, 58, 50, 40), imagenet=(25, 18, 15, 10, 7))
def jpeg_compression(images: np.ndarray, c: int, ctx: Context) -> np.ndarray:
    return _pil_each(images, lambda im: _jpeg(im, int(c)))


def reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """Half-sample-symmetric extension (d c b a | a b c d | d c b a), period 2n."""
    i = np.mod(i, 2 * n)
    return np.where(i >= n, 2 * n - 1 - i, i)


def lerp(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> np.ndarray:
    """``a + f (b - a)``, overwriting a and b."""
    b -= a
    b *= f
    a += b
    return a


def bilinear_reflect(planes: np.ndarray, dy: np.ndarray, dx: np.ndarray, block_px: int = 1 << 15) -> np.ndarray:
    """Displace planar (C, N, H, W) float32 images: sample image n at ``(i + dy[n, i, j], j + dx[n, i, j])``.

    SciPy ``map_coordinates(order=1, mode="reflect")``: with ``r0 = floor(r)``, ``fr = r - r0``
    (columns likewise), ``out = lerp(lerp(x[ra, ca], x[ra, cb], fc), lerp(x[rb, ca], x[rb, cb], fc), fr)``
    where ``ra, rb = reflect(r0), reflect(r0 + 1)`` (half-sample symmetric). Coordinates are formed
    in float64, the weights and lerps are float32. The reflected taps come from small tables over
    the reachable range; rows are processed in blocks of about ``block_px`` pixels so that the
    gathered taps and temporaries stay in cache.
    """
    ch, n, h, w = planes.shape
    flat = planes.reshape(ch, n * h * w)
    dy, dx = dy.reshape(n * h, w), dx.reshape(n * h, w)
    rlo, clo = int(np.floor(dy.min())), int(np.floor(dx.min()))
    row_start = reflect_index(np.arange(rlo, h + int(np.floor(dy.max())) + 1), h) * w  # flat offset of a row
    col = reflect_index(np.arange(clo, w + int(np.floor(dx.max())) + 1), w)
    out = np.empty_like(flat)
    step = max(1, block_px // w)
    for a in range(0, n * h, step):
        tall = np.arange(a, min(a + step, n * h))[:, None]    # rows of the stacked (N H, W) images
        image_start = tall // h * (h * w)
        rows = (tall % h) + dy[tall[:, 0]].astype(np.float64)
        cols = np.arange(w) + dx[tall[:, 0]].astype(np.float64)
        r0, c0 = np.floor(rows), np.floor(cols)
        fr, fc = (rows - r0).astype(np.float32).reshape(-1), (cols - c0).astype(np.float32).reshape(-1)
        ri, ci = r0.astype(np.intp) - rlo, c0.astype(np.intp) - clo
        ra, rb = image_start + np.take(row_start, ri), image_start + np.take(row_start, ri + 1)
        ca, cb = np.take(col, ci), np.take(col, ci + 1)

        def tap(r, c):
            return np.take(flat, (r + c).reshape(-1), axis=1)

        top = lerp(tap(ra, ca), tap(ra, cb), fc)
        bottom = lerp(tap(rb, ca), tap(rb, cb), fc)
        out[:, a * w:a * w + top.shape[1]] = lerp(top, bottom, fr)
    return out.reshape(planes.shape)


def _s(f):  # the ImageNet table is written in units of 244 px ("should have been 224", per its author)
    return tuple(v * 244 for v in f)


@register("elastic_transform", "digital",
          cifar=tuple(tuple(v * 32 for v in f) for f in
                      ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))),
          imagenet=(_s((2, 0.7, 0.1)), _s((2, 0.08, 0.2)), _s((0.05, 0.01, 0.02)),
                    _s((0.07, 0.01, 0.02)), _s((0.12, 0.01, 0.02))))
def elastic_transform(images: np.ndarray, c: tuple, ctx: Context) -> np.ndarray:
    alpha, sigma, affine = c
    n, h, w = images.shape[:3]
    x = to_float(images, np.float32)
    center = np.float32([h, w]) // 2
    square = min(h, w) // 3
    src = np.float32([center + square, [center[0] + square, center[1] - square], center - square])
    moves = ctx.rng.uniform(-affine, affine, size=(n, 3, 2)).astype(np.float32)
    warped = np.empty((x.shape[3], n, h, w), dtype=np.float32)  # colour planes
    for i in range(n):
        m = cv2.getAffineTransform(src, src + moves[i])
        warped[:, i] = cv2.warpAffine(x[i], m, (w, h), borderMode=cv2.BORDER_REFLECT_101).transpose(2, 0, 1)
    fields = ctx.rng.random((2 * n, h, w), dtype=np.float32)  # U(-1, 1) fields (exact in float32): dx for all images, then dy
    fields *= 2
    fields -= 1
    dx, dy = _ops.gaussian_spatial_matrix(fields, sigma, "reflect", 3.0).reshape(2, n, h, w) * np.float32(alpha)
    return np.ascontiguousarray(to_uint8(bilinear_reflect(warped, dy, dx)).transpose(1, 2, 3, 0))
