"""Batched building blocks shared by the corruption families (images are N x H x W [x C]).

The helpers reproduce the primitive operations the reference scripts apply one image at a time
(scikit-image ``gaussian``, SciPy ``zoom``, the shift-and-add motion blur, the diamond-square
plasma fractal) as operations over a whole batch.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from scipy import ndimage


def to_float(images: np.ndarray, dtype=np.float64) -> np.ndarray:
    """uint8 in [0, 255] -> float in [0, 1], as the recipes' ``np.array(x) / 255.``."""
    return images.astype(dtype) / 255.0


def to_uint8(x01: np.ndarray) -> np.ndarray:
    """``np.uint8(np.clip(x, 0, 1) * 255)``: the recipes truncate toward zero, they do not round."""
    return (np.clip(x01, 0.0, 1.0) * 255.0).astype(np.uint8)


def gaussian_spatial(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image ``gaussian(img, sigma, channel_axis=-1)`` on every image of a batch.

    Blurs axes 1 and 2 (height, width) only, with SciPy's sampled Gaussian kernel of radius
    ``int(truncate * sigma + 0.5)``; the batch and channel axes get sigma 0 (untouched).
    """
    sigmas = (0.0, float(sigma), float(sigma)) + (0.0,) * (x.ndim - 3)
    return ndimage.gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def gaussian_radius(sigma: float, truncate: float) -> int:
    """SciPy's kernel radius: ``int(truncate * sigma + 0.5)``."""
    return int(truncate * float(sigma) + 0.5)


#: per-image separable filtering pays from this image side on ...
SEPARABLE_MIN_SIDE = 64


def separable_pays(h: int, w: int, radius: int) -> bool:
    """... when the kernel spans at most a quarter of the smaller side. Measured, one thread,
    float32 224x224 fields: sigma 2.44 (15 taps) 0.17 ms separable against 0.98 ms as matrices,
    sigma 19.5 (119 taps) 1.72 against 0.97; 32x32 fields, 7 taps: 10 us against 3 us."""
    return min(h, w) >= SEPARABLE_MIN_SIDE and 2 * radius + 1 <= min(h, w) // 4


#: SciPy's boundary modes as OpenCV border types ("reflect" repeats the edge sample: d c b a | a b c d)
OPENCV_BORDERS = {"reflect": cv2.BORDER_REFLECT, "nearest": cv2.BORDER_REPLICATE}


def gaussian_spatial_separable(x: np.ndarray, sigma: float, truncate: float, mode: str) -> np.ndarray:
    """:func:`gaussian_spatial` on an (N, H, W) batch, one OpenCV separable filter per image,
    with SciPy's kernel ``exp(-t^2 / 2 sigma^2)``, t = -r..r, normalized, and SciPy's boundary
    ``mode`` ("reflect" or "nearest"). The sums run in another order than SciPy's, so results
    differ in the last bits: use it for random fields, not where a result is truncated to
    8 bits (a flat region would flip between two levels)."""
    radius = gaussian_radius(sigma, truncate)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 / float(sigma) ** 2 * t * t)
    kernel = (kernel / kernel.sum()).astype(x.dtype)
    out = np.empty_like(x)
    for i in range(len(x)):
        cv2.sepFilter2D(x[i], -1, kernel, kernel, dst=out[i], borderType=OPENCV_BORDERS[mode])
    return out


@lru_cache(maxsize=64)
def gaussian_operator(n: int, sigma: float, mode: str, truncate: float) -> np.ndarray:
    """The n x n matrix G with ``gaussian_filter1d(v, sigma) == G @ v`` (SciPy's own filter on e_j)."""
    return ndimage.gaussian_filter1d(np.eye(n), sigma, axis=0, mode=mode, truncate=truncate)


def gaussian_spatial_matrix(x: np.ndarray, sigma: float, mode: str, truncate: float) -> np.ndarray:
    """Same result as :func:`gaussian_spatial` on an (N, H, W) batch, as two matrix products.

    ``out[n] = G_H x[n] G_W^T``, computed in the dtype of x (float32 or float64); the column
    product is one (N H, W) x (W, W) GEMM. Used where the kernel is wider than the image
    (ImageNet elastic: sigma 170 px on 224 px), where direct convolution would cost ~1000 taps
    per pixel, and for batches of small images. Large images with a narrow reflected kernel
    take :func:`gaussian_spatial_separable` instead.
    """
    if sigma <= 1e-15:
        return x.copy()
    n, h, w = x.shape
    if mode == "reflect" and separable_pays(h, w, gaussian_radius(sigma, truncate)):
        return gaussian_spatial_separable(x, sigma, truncate, mode)
    gh = gaussian_operator(h, float(sigma), mode, float(truncate)).astype(x.dtype, copy=False)
    gw = gaussian_operator(w, float(sigma), mode, float(truncate)).astype(x.dtype, copy=False)
    rows = (x.reshape(n * h, w) @ gw.T).reshape(n, h, w)
    return np.matmul(gh, rows)


@lru_cache(maxsize=256)
def clipped_zoom_operator(n: int, factor: float) -> np.ndarray:
    """n x n matrix R of the recipes' ``clipped_zoom`` along one axis.

    ``clipped_zoom``: crop the central ``ch = ceil(n / factor)`` pixels, enlarge them with
    ``scipy.ndimage.zoom(order=1)`` to ``round(ch * factor)`` pixels, keep the central ``n``.
    Linear interpolation is separable, so the 2-D zoom of an image X is ``R X R^T``; R is built
    by zooming the identity with SciPy itself, so it carries SciPy's exact sample positions.
    """
    ch = int(np.ceil(n / factor))
    top = (n - ch) // 2
    zoomed = ndimage.zoom(np.eye(ch), (factor, 1.0), order=1)  # rows: round(ch * factor)
    trim = (zoomed.shape[0] - n) // 2
    op = np.zeros((n, n))
    op[:, top:top + ch] = zoomed[trim:trim + n]
    return op


def _support(op: np.ndarray) -> slice:
    """The range of columns of ``op`` holding all its nonzeros (the crop ``clipped_zoom`` reads)."""
    used = np.flatnonzero(op.any(axis=0))
    return slice(int(used[0]), int(used[-1]) + 1) if len(used) else slice(0, 0)


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Apply :func:`clipped_zoom_operator` to an (N, H, W) or (N, H, W, C) float batch.

    Only the central crop is read, so the products run over its ``H / factor`` rows and
    ``W / factor`` columns: ``out[n] = R[:, crop] x[n][crop, crop] C[:, crop]^T``.
    """
    rh = clipped_zoom_operator(x.shape[1], float(factor)).astype(x.dtype)
    rw = clipped_zoom_operator(x.shape[2], float(factor)).astype(x.dtype)
    rows, cols = _support(rh), _support(rw)
    crop = x[:, rows, cols]
    # rows: out[n, i, w, c] = sum_h rh[i, h] x[n, h, w, c]; columns likewise with rw.
    y = np.tensordot(rh[:, rows], crop, axes=([1], [1]))   # (H, N, w, ...)
    y = np.tensordot(rw[:, cols], y, axes=([1], [2]))      # (W, H, N, ...)
    return np.moveaxis(np.moveaxis(y, 2, 0), 1, 2)          # (N, W, H) -> (N, H, W)


def motion_kernel(radius: int, sigma: float) -> np.ndarray:
    """ImageMagick-style one-sided motion kernel: width ``2 r + 1``, ``k_i ~ exp(-i^2 / 2 sigma^2)``."""
    width = 2 * int(radius) + 1
    i = np.arange(width, dtype=np.float64)
    k = np.exp(-(i ** 2) / (2.0 * sigma ** 2)) / (np.sqrt(2.0 * np.pi) * sigma)
    return k / k.sum()


def motion_blur(x: np.ndarray, radius: int, sigma: float, angles_deg: np.ndarray,
                block_bytes: int = 1 << 20, image_bytes: int = 1 << 18) -> np.ndarray:
    """Batched wand-free motion blur (the ``imagecorruptions`` 1.1 reproduction of ImageMagick's).

    For image n with angle a_n: ``out = sum_i k_i * x[clip(r + dy_i), clip(c + dx_i)]`` over
    ``i = 0 .. 2 radius``, where ``dy_i = -ceil(i sin a - 1/2)``, ``dx_i = -ceil(i cos a - 1/2)``
    and the clip replicates the border pixels; a tap whose shift leaves the image ends the sum.
    Accumulated in float64 in tap order (any input dtype), over blocks of images sorted by angle,
    each about ``block_bytes`` of output, so that a block stays in cache for all its taps.
    Images of ``image_bytes`` of output or more are blurred one by one by
    :func:`_motion_blur_image` instead (224x224: 2.5 against 3.9 ms per RGB image, 2.4 against
    3.1 ms per snow layer).
    """
    n = x.shape[0]
    k = motion_kernel(radius, sigma)
    rad = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    result = np.empty(x.shape, dtype=np.float64)
    if x[0].size * 8 >= image_bytes:
        for i in range(n):
            result[i] = _motion_blur_image(x[i], k, rad[i])
        return result
    order = np.argsort(rad, kind="stable")  # sorted by angle, equal shifts form contiguous runs
    step = max(1, block_bytes // (x[0].size * 8))
    for a in range(0, n, step):
        images = order[a:a + step]
        result[images] = _motion_blur_block(x[images], k, rad[images])
    return result


def tap_shift(i: int, rad):
    """Shift ``(dy, dx)`` of motion-blur tap ``i`` at angle ``rad`` (radians; scalar or array):
    ``dy = -ceil(i sin a - 1/2)``, ``dx = -ceil(i cos a - 1/2)``."""
    return (-np.ceil(i * np.sin(rad) - 0.5).astype(np.int64), -np.ceil(i * np.cos(rad) - 0.5).astype(np.int64))


def _motion_blur_block(x: np.ndarray, k: np.ndarray, rad: np.ndarray) -> np.ndarray:
    """:func:`motion_blur` of a block of images with kernel k and sorted angles rad (radians)."""
    n, h, w = x.shape[:3]
    out = np.zeros(x.shape, dtype=np.float64)
    term = np.empty(x.shape, dtype=np.float64)
    pad = min(len(k), max(h, w))  # shifts never exceed the kernel width (or the tap is dropped)
    padded = np.pad(x, [(0, 0), (pad, pad), (pad, pad)] + [(0, 0)] * (x.ndim - 3), mode="edge")
    alive = np.ones(n, dtype=bool)
    for i, weight in enumerate(k):
        dy, dx = tap_shift(i, rad)
        alive &= (np.abs(dy) < h) & (np.abs(dx) < w)
        # shifted[r, c] = x[clip(r - dy), clip(c - dx)]: a window of the edge-padded images,
        # taken as a view for each run of images that share this tap's shift
        keys = np.where(alive, (dy + h) * (2 * w + 1) + (dx + w), -1)
        cuts = np.concatenate([[0], np.flatnonzero(np.diff(keys)) + 1, [n]])
        for a, b in zip(cuts[:-1], cuts[1:]):
            if keys[a] < 0:
                continue
            top, left = pad - dy[a], pad - dx[a]
            np.multiply(padded[a:b, top:top + h, left:left + w], weight, out=term[a:b])
            out[a:b] += term[a:b]
    return out


def _motion_blur_image(x: np.ndarray, k: np.ndarray, rad: float) -> np.ndarray:
    """:func:`motion_blur` of one (H, W[, C]) image, every tap a contiguous slice.

    The image is edge-padded by its largest shifts (plus one row above and below) and the sum
    runs over whole padded rows, ``acc[J] += k_i * flat[J + offset_i]``: the shift of a tap is
    one offset in the flattened padding, so both operands are contiguous (a strided window reads
    at half the speed). The padding columns of ``acc`` are cut off at the end; the sums of the
    image's own pixels are those of :func:`_motion_blur_block`, term for term.
    """
    h, w = x.shape[:2]
    shifts = []
    for i in range(len(k)):
        dy, dx = (int(v) for v in tap_shift(i, rad))
        if abs(dy) >= h or abs(dx) >= w:
            break
        shifts.append((dy, dx))
    dys, dxs = [s[0] for s in shifts], [s[1] for s in shifts]
    top, bottom = max(0, max(dys)) + 1, max(0, -min(dys)) + 1
    left, right = max(0, max(dxs)), max(0, -min(dxs))
    padded = np.pad(x.astype(np.float64), [(top, bottom), (left, right)] + [(0, 0)] * (x.ndim - 2), mode="edge")
    row = padded[0].size
    column = row // padded.shape[1]
    flat = padded.reshape(-1)
    acc = np.zeros(h * row)
    term = np.empty_like(acc)
    for weight, (dy, dx) in zip(k, shifts):
        start = (top - dy) * row - dx * column
        np.multiply(flat[start:start + h * row], weight, out=term)
        acc += term
    return acc.reshape((h, padded.shape[1]) + x.shape[2:])[:, left:left + w]


def plasma_fractal(n: int, mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height maps in [0, 1], one per image, shape (n, mapsize, mapsize).

    The recipes' fog texture: at each level the new midpoints are the mean of their four
    neighbours (with wrap-around) plus ``wibble * U(-wibble, wibble)``; wibble starts at 100 and
    is divided by ``wibbledecay`` per level; the map is finally rescaled to [0, 1].
    """
    if mapsize & (mapsize - 1):
        raise ValueError("mapsize must be a power of two")
    a = np.zeros((n, mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled_mean(total):
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = a[:, 0:mapsize:step, 0:mapsize:step]
        squares = corners + np.roll(corners, -1, axis=1)
        squares = squares + np.roll(squares, -1, axis=2)
        a[:, half:mapsize:step, half:mapsize:step] = wibbled_mean(squares)
        dr = a[:, half:mapsize:step, half:mapsize:step]
        ul = a[:, 0:mapsize:step, 0:mapsize:step]
        a[:, 0:mapsize:step, half:mapsize:step] = wibbled_mean(
            dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2))
        a[:, half:mapsize:step, 0:mapsize:step] = wibbled_mean(
            dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1))
        step //= 2
        wibble /= wibbledecay
    a -= a.min(axis=(1, 2), keepdims=True)
    return a / a.max(axis=(1, 2), keepdims=True)


def next_power_of_2(v: int) -> int:
    return 1 if v <= 1 else 2 ** (int(v) - 1).bit_length()


def filter2d_batch(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``cv2.filter2D(img, -1, kernel)`` (BORDER_REFLECT_101) on every image, in one OpenCV call.

    Each image is padded by the kernel radius with reflect-101 (``np.pad(mode="reflect")``), the
    padded images are stacked into one tall image and filtered once; the rows that would mix two
    images are exactly the padding, which is cropped away.
    """
    n, h, w = x.shape[:3]
    ky, kx = kernel.shape[0] // 2, kernel.shape[1] // 2
    pad = [(0, 0), (ky, ky), (kx, kx)] + [(0, 0)] * (x.ndim - 3)
    padded = np.pad(x, pad, mode="reflect")
    hp, wp = h + 2 * ky, w + 2 * kx
    tall = np.ascontiguousarray(padded.reshape((n * hp, wp) + x.shape[3:]))
    out = cv2.filter2D(tall, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    return out.reshape((n, hp, wp) + x.shape[3:])[:, ky:ky + h, kx:kx + w]


def rgb_to_gray(x: np.ndarray) -> np.ndarray:
    """OpenCV ``COLOR_RGB2GRAY``: ``0.299 R + 0.587 G + 0.114 B`` (float images)."""
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


