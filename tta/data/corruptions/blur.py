"""Blur corruptions (Hendrycks & Dietterich, ICLR 2019, Sec. 3 "Blur"; extra: gaussian_blur).

x = image / 255; every result ends with ``uint8(clip(y, 0, 1) * 255)`` (truncation).

* defocus_blur: ``y = x * D_{r, s}`` per channel, D = disk of radius r on the grid [-8, 8]^2
  (or [-r, r]^2 when r > 8), normalised, then anti-aliased by an OpenCV Gaussian (3x3, or 5x5
  when r > 8) of sigma s; OpenCV ``filter2D`` with reflect-101 borders.
* glass_blur: Gaussian blur (sigma s, scikit-image ``gaussian``), quantise to uint8, then
  ``k`` sweeps from the bottom-right corner: pixel (h, w) takes the value at (h + dy, w + dx),
  dx, dy ~ U{-d, ..., d - 1}; then blur again. (The reference's tuple "swap" on NumPy views
  copies rather than swaps; that is what produced the published data, and it is reproduced.)
* motion_blur: one-sided Gaussian streak of radius r, sigma s at angle U(-45, 45) degrees
  (see :func:`tta.data.corruptions._ops.motion_blur`), computed on 0..255 values.
* zoom_blur: ``y = (x + sum_z Z_z(x)) / (1 + |zooms|)``, Z_z = central crop of 1/z of the image
  enlarged z times (bilinear, SciPy ``zoom(order=1)``), for z in ``arange(1, stop, step)``;
  applied as one precomposed sparse float32 operator (see :func:`zoom_blur_operator`).
* gaussian_blur: scikit-image ``gaussian(x, sigma=c)`` (mode "nearest", truncate 4).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from scipy import sparse

from tta.data.corruptions import _ops
from tta.data.corruptions._ops import to_float, to_uint8
from tta.data.corruptions.registry import Context, register


@lru_cache(maxsize=32)
def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The recipes' anti-aliased disk, with its all-zero outer rows and columns cropped away."""
    half = 8 if radius <= 8 else int(radius)
    ksize = 3 if radius <= 8 else 5
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    kernel = cv2.GaussianBlur(disk, (ksize, ksize), sigmaX=alias_blur)
    nonzero = np.argwhere(kernel != 0)
    reach = int(np.abs(nonzero - half).max()) if len(nonzero) else 0
    return np.ascontiguousarray(kernel[half - reach:half + reach + 1, half - reach:half + reach + 1])


@register("defocus_blur", "blur",
          cifar=((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
          imagenet=((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)))
def defocus_blur(images: np.ndarray, c: tuple, ctx: Context) -> np.ndarray:
    kernel = disk_kernel(float(c[0]), float(c[1]))
    return to_uint8(_ops.filter2d_batch(to_float(images), kernel))


def _glass_sweep(x: np.ndarray, d: int, offsets: np.ndarray) -> None:
    """One in-place sweep of the glass-blur pixel walk over a uint8 (N, H, W, C) batch.

    The reference visits h = H-d .. d+1 and, inside each row, w = W-d .. d+1 (descending) and
    sets ``x[h, w] = x[h + dy, w + dx]``. Reads from other rows see that row's current state,
    so rows are processed in order; inside a row a read of an already visited pixel
    (dy == 0, dx > 0) resolves to that pixel's new value, which pointer doubling finds for the
    whole row at once. ``offsets``: (rows, cols, N, 2) int, last axis (dx, dy), visiting order.
    """
    n, h_size, w_size = x.shape[:3]
    cols = np.arange(w_size - d, d, -1)            # visiting order inside a row
    batch = np.arange(n)[:, None]
    steps = max(1, int(np.ceil(np.log2(len(cols) + 1))))
    for row_i, h in enumerate(range(h_size - d, d, -1)):
        dx = offsets[row_i, :, :, 0].T            # (N, P), P in visiting order
        dy = offsets[row_i, :, :, 1].T
        src_w = cols[None, :] + dx
        base = x[batch, h + dy, src_w]             # (N, P, C): values as they are now
        chained = (dy == 0) & (dx > 0) & (src_w <= w_size - d)
        # position of a column in the visiting order: p = (W - d) - w
        ptr = np.where(chained, (w_size - d) - src_w, np.arange(len(cols))[None, :])
        for _ in range(steps):
            ptr = np.take_along_axis(ptr, ptr, axis=1)
        final = np.take_along_axis(base, ptr[..., None], axis=1)
        x[:, h, cols] = final


@register("glass_blur", "blur",
          cifar=((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
          imagenet=((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)))
def glass_blur(images: np.ndarray, c: tuple, ctx: Context) -> np.ndarray:
    sigma, d, iterations = c
    n, h, w = images.shape[:3]
    x = (_ops.gaussian_spatial(to_float(images), sigma) * 255).astype(np.uint8)
    rows, cols = len(range(h - d, d, -1)), len(range(w - d, d, -1))
    offsets = ctx.rng.integers(-d, d, size=(iterations, rows, cols, n, 2))
    for it in range(iterations):
        _glass_sweep(x, d, offsets[it])
    return to_uint8(_ops.gaussian_spatial(to_float(x), sigma))


@register("motion_blur", "blur",
          cifar=((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
          imagenet=((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)))
def motion_blur(images: np.ndarray, c: tuple, ctx: Context) -> np.ndarray:
    angles = ctx.rng.uniform(-45, 45, size=len(images))
    y = _ops.motion_blur(images, c[0], c[1], angles)
    return np.clip(y, 0, 255).astype(np.uint8)


def zoom_factors(spec: tuple) -> np.ndarray:
    return np.arange(*spec)


@lru_cache(maxsize=16)
def zoom_blur_operator(h: int, w: int, spec: tuple) -> sparse.csr_matrix:
    """The whole zoom blur of an h x w channel as one sparse (h w) x (h w) matrix, float32.

    ``vec(R X C^T) = kron(R, C) vec(X)`` for row-major vec, so the average over the zooms and the
    identity is ``M = (I + sum_z kron(R_z, C_z)) / (1 + |zooms|)``. R_z and C_z interpolate
    linearly (at most 2 nonzeros per row), so each Kronecker product has at most 4 per row and
    M about ``4 |zooms|``: applying it costs a few multiply-adds per pixel and zoom.
    """
    factors = zoom_factors(spec)
    m = sparse.identity(h * w, format="csr")
    for z in factors:
        rows = sparse.csr_matrix(_ops.clipped_zoom_operator(h, float(z)))
        cols = sparse.csr_matrix(_ops.clipped_zoom_operator(w, float(z)))
        m = m + sparse.kron(rows, cols, format="csr")
    return (m / (len(factors) + 1)).astype(np.float32).tocsr()


@register("zoom_blur", "blur",
          cifar=((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
          imagenet=((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)))
def zoom_blur(images: np.ndarray, c: tuple, ctx: Context) -> np.ndarray:
    """One sparse product, pixels as rows and (image, channel) as columns, at every image size.

    SciPy's CSR product sums each output value over its operator row's nonzeros in the stored
    order, one float32 multiply and add at a time, whatever the number of columns: an image's
    bytes do not depend on the batch it comes in, nor on the machine's BLAS. (A dense GEMM,
    used for CIFAR up to engine version 2, blocks its sums by the matrix sizes: with OpenBLAS
    0.3.31, 33 of 12,288 values of 4 images differed by one level between one call and four.)
    """
    n, h, w, ch = images.shape
    flat = to_float(np.ascontiguousarray(images.transpose(1, 2, 0, 3)), np.float32).reshape(h * w, n * ch)
    out = to_uint8(zoom_blur_operator(h, w, tuple(c)) @ flat).reshape(h, w, n, ch)
    return np.ascontiguousarray(out.transpose(2, 0, 1, 3))


@register("gaussian_blur", "blur",
          cifar=(0.4, 0.6, 0.7, 0.8, 1.0), imagenet=(1, 2, 3, 4, 6))
def gaussian_blur(images: np.ndarray, c: float, ctx: Context) -> np.ndarray:
    return to_uint8(_ops.gaussian_spatial(to_float(images), c))
