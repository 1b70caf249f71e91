"""Augmentation set shared by methods that compare a prediction with that of a transformed view.

Every augmentation here is a pure function of the batch and an explicit :class:`torch.Generator`
(never torch's global one), so a method that owns its generator is reproducible and its
``reset`` can rewind the randomness bit for bit.

``patch_shuffle`` is DeYO's default view (Lee et al., "Entropy is not Enough for Test-Time
Adaptation: From the Perspective of Disentangled Factors", ICLR 2024, Sec. 3.2: shuffling
patches destroys the object's shape while keeping its local texture). Facts taken from the
authors' code (Jhyun17/DeYO 3d7d289, ``methods/deyo.py`` lines 120-128) and
mariodoebler/test-time-adaptation 8b2ed63 ``classification/methods/deyo.py`` lines 59-67,
which agree:

* ``patches`` is the number of patches per side (a ``patches x patches`` grid), not a size;
* the permutation of image ``b`` is ``argsort(u_b)`` for ``u = rand(B, patches**2)`` drawn on
  the CPU, one independent permutation per image, the same for all channels;
* an image whose side is not a multiple of ``patches`` is first resized (bilinear, antialiased,
  torchvision's tensor ``Resize``) to the largest multiple, shuffled, and resized back. Both
  references resize to a square made from the *width* only (``x.shape[-1]``); here height and
  width are handled separately (identical on square images, the only ones the references accept).
  A side that already is a multiple (CIFAR 32 and ImageNet 224 with 4 patches) is not resampled.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps


def patch_permutations(batch: int, patches: int, generator: torch.Generator) -> torch.Tensor:
    """``(batch, patches**2)`` int64 permutations, ``argsort`` of uniform draws from ``generator`` (CPU)."""
    return torch.argsort(torch.rand(batch, patches * patches, generator=generator), dim=-1)


def patch_shuffle(x: torch.Tensor, patches: int, generator: torch.Generator) -> torch.Tensor:
    """``x`` (B, C, H, W) cut into a ``patches x patches`` grid, each image's tiles in a random order.

    Tile ``k = row * patches + col`` of the output is tile ``perm[b, k]`` of the input.
    """
    b, c, h, w = x.shape
    side_h, side_w = (h // patches) * patches, (w // patches) * patches
    if side_h == 0 or side_w == 0:
        raise ValueError(f"patch_shuffle: a {h}x{w} image cannot be cut into {patches}x{patches} patches")
    resized = (side_h, side_w) != (h, w)
    if resized:
        x = F.interpolate(x, size=(side_h, side_w), mode="bilinear", align_corners=False, antialias=True)
    ph, pw = side_h // patches, side_w // patches
    tiles = x.reshape(b, c, patches, ph, patches, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, patches * patches, c, ph, pw)
    perm = patch_permutations(b, patches, generator).to(x.device)
    tiles = tiles[torch.arange(b, device=x.device).unsqueeze(1), perm]
    out = tiles.reshape(b, patches, patches, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, side_h, side_w)
    if resized:
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return out


# -- CoTTA's augmentation set ------------------------------------------------------------------------
#
# Wang, Fink, Van Gool & Dai, "Continual Test-Time Domain Adaptation" (CVPR 2022), Sec. 3.3; the set is
# that of mariodoebler/test-time-adaptation 8b2ed63 ``classification/augmentations/transforms_cotta.py``
# (``get_tta_transforms``, lines 133-166, after KATANA), used by ``cotta`` (teacher views) and ``rotta``
# (strong view of the memory). One view of a batch is, in this order, with ONE parameter draw for the
# whole batch (the reference applies torchvision transforms to the batch tensor):
#
#   clip to [0, 1]; colour jitter: brightness, contrast, saturation, hue, gamma in a random order
#   (``randperm(5)``), factors uniform in [0.6, 1.4], [0.7, 1.3], [0.5, 1.5], [-0.06, 0.06], [0.7, 1.3]
#   (gamma after clamping to [1e-8, 1]); edge padding by H/2; random affine (rotation uniform in
#   [-15, 15] degrees, translation round(uniform(+-W/16 of the padded size)) pixels, scale uniform in
#   [0.9, 1.1], bilinear); Gaussian blur (kernel 5, sigma uniform in [0.001, 0.5]); centre crop back
#   to H x W; horizontal flip with probability 1/2; additive Gaussian noise (std 0.005); clip.
#   ``soft=True`` is the reference's soft variant (narrower ranges).
#
# The draws come from ``generator`` in the reference's order per view (randperm, the five factors in
# the permuted order, angle, tx, ty, scale, sigma, flip, noise), so a generator seeded s draws the
# parameters that torchvision draws from the global generator after ``torch.manual_seed(s)``. The
# arithmetic is written for a batch of views at once and fuses padding, affine, blur and crop: only
# the centre (H + 4) x (W + 4) of the padded, transformed image reaches the crop through the 5x5 blur,
# and there the edge padding equals sampling the original image with border clamping; the flip is the
# mirrored sampling grid (the blur kernel is symmetric). Equal to the reference in exact arithmetic,
# not bit for bit in float.

#: (low, high) of each colour factor, in the reference's index order (brightness, contrast,
#: saturation, hue, gamma); hard then soft ranges (transforms_cotta.py lines 139-143)
COTTA_JITTER = ((0.6, 1.4), (0.7, 1.3), (0.5, 1.5), (-0.06, 0.06), (0.7, 1.3))
COTTA_JITTER_SOFT = ((0.8, 1.2), (0.85, 1.15), (0.75, 1.25), (-0.03, 0.03), (0.85, 1.15))
_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def _uniform(lo: float, hi: float, generator: torch.Generator) -> float:
    return float(torch.empty(1).uniform_(lo, hi, generator=generator).item())


def cotta_draws(views: int, shape: tuple[int, ...], generator: torch.Generator, soft: bool = False,
                noise_std: float = 0.005) -> list[dict]:
    """The random parameters of ``views`` CoTTA views of a batch of ``shape`` (B, C, H, W), drawn in order."""
    jitter = COTTA_JITTER_SOFT if soft else COTTA_JITTER
    degrees, scales, sigmas = ((8.0, (0.95, 1.05), 0.25) if soft else (15.0, (0.9, 1.1), 0.5))
    h, w = shape[-2:]
    pad_w, pad_h = w + 2 * int(w / 2), h + 2 * int(h / 2)  # reference pads by int(n_pixels / 2)
    out = []
    for _ in range(views):
        order = torch.randperm(5, generator=generator).tolist()
        factors = [0.0] * 5
        for op in order:
            factors[op] = _uniform(*jitter[op], generator)
        angle = _uniform(-degrees, degrees, generator)
        tx = int(round(_uniform(-pad_w / 16, pad_w / 16, generator)))
        ty = int(round(_uniform(-pad_h / 16, pad_h / 16, generator)))
        scale = _uniform(*scales, generator)
        sigma = _uniform(0.001, sigmas, generator)
        flip = bool(torch.rand(1, generator=generator) < 0.5)
        noise = torch.randn(shape, generator=generator) * noise_std
        out.append(dict(order=order, factors=factors, angle=angle, translate=(tx, ty), scale=scale, sigma=sigma,
                        flip=flip, noise=noise))
    return out


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    return (_GRAY[0] * x[:, 0] + _GRAY[1] * x[:, 1] + _GRAY[2] * x[:, 2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1.0 - factor) * other).clamp(0.0, 1.0)


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images in [0, 1] by ``shift`` turns (hexcone HSV model)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    span = maxc - minc
    flat = span == 0
    safe = torch.where(flat, torch.ones_like(span), span)
    sat = span / torch.where(flat, torch.ones_like(maxc), maxc)
    hue = torch.where(maxc == r, (g - b) / safe,
                      torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = torch.where(flat, torch.zeros_like(hue), hue)
    hue = torch.remainder(hue / 6.0 + shift.view(-1, 1, 1), 1.0)
    # back to RGB: channel k = v - v s max(0, min(m, 4 - m, 1)), m = (n_k + 6 h) mod 6, n = (5, 3, 1)
    channels = []
    for n in (5.0, 3.0, 1.0):
        m = torch.remainder(n + hue * 6.0, 6.0)
        channels.append(maxc - maxc * sat * torch.clamp(torch.minimum(m, 4.0 - m), 0.0, 1.0))
    return torch.stack(channels, 1)


def _colour_op(op: int, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    if op == 0:  # brightness: blend with black
        return (f * x).clamp(0.0, 1.0)
    if op == 1:  # contrast: blend with the image's mean grey level
        return _blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f)
    if op == 2:  # saturation: blend with the grey image
        return _blend(x, _grayscale(x), f)
    if op == 3:
        return _hue_shift(x, factor)
    return x.clamp(1e-8, 1.0).pow(f).clamp(0.0, 1.0)  # gamma (gain 1)


def cotta_augment(x: torch.Tensor, views: int, generator: torch.Generator, soft: bool = False,
                  noise_std: float = 0.005) -> torch.Tensor:
    """``views`` CoTTA views of the batch ``x`` (B, 3, H, W) in [0, 1], stacked view by view: (views * B, 3, H, W).

    Rows ``v * B : (v + 1) * B`` are view ``v`` (one parameter draw each, see the comment above).
    """
    b, c, h, w = x.shape
    if c != 3:
        raise ValueError(f"cotta_augment: RGB images expected, got {c} channels")
    draws = cotta_draws(views, tuple(x.shape), generator, soft, noise_std)
    dev = x.device
    y = x.clamp(0.0, 1.0).repeat(views, 1, 1, 1)  # a fresh (V * B, C, H, W) tensor, written in place below
    # colour jitter: at step k every view applies its k-th operation; views grouped by operation
    view_of_row = torch.arange(views, device=dev).repeat_interleave(b)
    factors = torch.tensor([d["factors"] for d in draws], dtype=x.dtype, device=dev)  # (V, 5)
    orders = torch.tensor([d["order"] for d in draws], device=dev)  # (V, 5)
    for step in range(5):
        row_ops = orders[view_of_row, step]
        for op in range(5):
            rows = torch.nonzero(row_ops == op).squeeze(1)
            if rows.numel():
                y[rows] = _colour_op(op, y[rows], factors[view_of_row[rows], op])
    # affine + blur + crop + flip: sample the centre (h + 4) x (w + 4) of the transformed padded image
    k = 2  # half the blur kernel
    theta = []
    for d in draws:
        rot, s = math.radians(d["angle"]), d["scale"]
        tx, ty = d["translate"]
        m = [math.cos(rot) / s, math.sin(rot) / s, -math.sin(rot) / s, math.cos(rot) / s]  # inverse rotation-scale
        theta.append([m[0], m[1], m[0] * -tx + m[1] * -ty, m[2], m[3], m[2] * -tx + m[3] * -ty])
    theta = torch.tensor(theta, dtype=x.dtype, device=dev).view(views, 2, 3)
    xs = torch.arange(w + 2 * k, dtype=x.dtype, device=dev) - (w + 2 * k - 1) / 2  # output x, centred pixels
    ys = torch.arange(h + 2 * k, dtype=x.dtype, device=dev) - (h + 2 * k - 1) / 2
    flips = torch.tensor([d["flip"] for d in draws], device=dev)
    xs_v = torch.where(flips.view(-1, 1), -xs.view(1, -1), xs.view(1, -1))  # (V, w + 4)
    base = torch.stack(torch.broadcast_tensors(xs_v.view(views, 1, -1), ys.view(1, -1, 1)), -1)  # (V, h+4, w+4, 2)
    src = base @ theta[:, :, :2].transpose(1, 2).unsqueeze(1) + theta[:, :, 2].view(views, 1, 1, 2)
    grid = src / torch.tensor([w / 2, h / 2], dtype=x.dtype, device=dev)  # align_corners=False normalization
    y = F.grid_sample(y.view(views, b * c, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False)
    # separable 5-tap Gaussian blur, valid part only -> (h, w)
    taps = torch.arange(-k, k + 1, dtype=x.dtype, device=dev)
    sig = torch.tensor([d["sigma"] for d in draws], dtype=x.dtype, device=dev).view(-1, 1)
    kern = torch.exp(-0.5 * (taps.view(1, -1) / sig) ** 2)
    kern = kern / kern.sum(1, keepdim=True)  # (V, 5)
    # the blur as banded matrices (valid part): out = R y C, R (h, h + 4) and C (w + 4, w) per view
    def band(n: int) -> torch.Tensor:
        mat = torch.zeros(views, n, n + 2 * k, dtype=x.dtype, device=dev)
        for i in range(2 * k + 1):
            mat.diagonal(offset=i, dim1=1, dim2=2).copy_(kern[:, i:i + 1].expand(views, n))
        return mat
    y = band(h).unsqueeze(1) @ (y @ band(w).transpose(1, 2).unsqueeze(1))
    noise = torch.stack([d["noise"] for d in draws]).to(dev)
    return (y.view(views, b, c, h, w) + noise).clamp(0.0, 1.0).view(views * b, c, h, w)


# -- AugMix (MEMO's views) ---------------------------------------------------------------------------
#
# Hendrycks et al., "AugMix" (ICLR 2020), Eq. 1 and Algorithm 1, as MEMO uses it (Zhang, Levine & Finn,
# NeurIPS 2022, Sec. 3) and as mariodoebler/test-time-adaptation 8b2ed63 ("MD") makes its views for CIFAR
# (``classification/augmentations/transforms_augmix.py`` lines 10-40, operations in ``augmix_ops.py``; the
# set without colour/contrast/brightness/sharpness, which overlap the test corruptions). One view of an
# RGB uint8 image (PIL), in MD's order of draws:
#
#   pre-augmentation: zero-pad by 4, random crop back to H x W (top, left = randint(0, 9) twice, torch),
#                     horizontal flip with probability 1/2 (torch rand(1) < 0.5);
#   w ~ Dirichlet(1, 1, 1), m ~ Beta(1, 1)                           (numpy, both rounded to float32)
#   chain k = 1..3: depth ~ randint(1, 4); depth times an operation ~ uniform over the 9 below (numpy)
#   view = m * x + (1 - m) * sum_k w_k chain_k(x)                    (x: the pre-augmented image in [0, 1])
#
# An operation draws its level u ~ uniform(0.1, severity) (severity 1: MD's default) and, where it has a
# direction, a sign (uniform() > 0.5: negative). torchvision's ``AugMix`` is a different recipe (tensor
# operations incl. colour ops, per-chain severities, no pre-augmentation, torch draws only), hence this one.
# The torch draws come from a :class:`torch.Generator` and the numpy draws from a legacy
# :class:`numpy.random.RandomState`, both owned by the caller: seeded ``s`` they draw what MD draws from the
# global generators after ``torch.manual_seed(s)`` and ``np.random.seed(s)``.

def _level(rng: np.random.RandomState, severity: float) -> float:
    return rng.uniform(0.1, severity)


def _signed(value, rng: np.random.RandomState):
    return -value if rng.uniform() > 0.5 else value


def _affine(img: Image.Image, coefficients: tuple) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, coefficients, resample=Image.BILINEAR)


def _autocontrast(img, severity, rng):
    return ImageOps.autocontrast(img)


def _equalize(img, severity, rng):
    return ImageOps.equalize(img)


def _posterize(img, severity, rng):
    return ImageOps.posterize(img, 4 - int(_level(rng, severity) * 4 / 10))


def _rotate(img, severity, rng):
    return img.rotate(_signed(int(_level(rng, severity) * 30 / 10), rng), resample=Image.BILINEAR)


def _solarize(img, severity, rng):
    return ImageOps.solarize(img, 256 - int(_level(rng, severity) * 256 / 10))


def _shear_x(img, severity, rng):
    return _affine(img, (1, _signed(float(_level(rng, severity)) * 0.3 / 10, rng), 0, 0, 1, 0))


def _shear_y(img, severity, rng):
    return _affine(img, (1, 0, 0, _signed(float(_level(rng, severity)) * 0.3 / 10, rng), 1, 0))


def _translate_x(img, severity, rng):
    return _affine(img, (1, 0, _signed(int(_level(rng, severity) * (img.size[0] / 3) / 10), rng), 0, 1, 0))


def _translate_y(img, severity, rng):
    return _affine(img, (1, 0, 0, 0, 1, _signed(int(_level(rng, severity) * (img.size[1] / 3) / 10), rng)))


#: AugMix's operations in MD's list order (``augmix_ops.augmentations``); the index drawn picks one
AUGMIX_OPS = (_autocontrast, _equalize, _posterize, _rotate, _solarize, _shear_x, _shear_y, _translate_x,
              _translate_y)


def _pil_to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)


def augmix_view(image: np.ndarray, generator: torch.Generator, rng: np.random.RandomState,
                severity: float = 1.0, pad: int = 4) -> torch.Tensor:
    """One AugMix view (3, H, W) float32 in [0, 1] of ``image`` (H, W, 3) uint8, drawn as the comment above."""
    h, w = image.shape[:2]
    top = int(torch.randint(0, 2 * pad + 1, (1,), generator=generator))
    left = int(torch.randint(0, 2 * pad + 1, (1,), generator=generator))
    padded = np.zeros((h + 2 * pad, w + 2 * pad, 3), dtype=np.uint8)
    padded[pad:pad + h, pad:pad + w] = image
    crop = padded[top:top + h, left:left + w]
    if bool(torch.rand(1, generator=generator) < 0.5):
        crop = crop[:, ::-1]
    crop = np.ascontiguousarray(crop)
    weights = np.float32(rng.dirichlet([1.0, 1.0, 1.0]))
    m = np.float32(rng.beta(1.0, 1.0))
    x = _pil_to_tensor(Image.fromarray(crop))
    mix = torch.zeros_like(x)
    for k in range(3):
        img = Image.fromarray(crop)
        for _ in range(rng.randint(1, 4)):
            img = AUGMIX_OPS[rng.randint(len(AUGMIX_OPS))](img, severity, rng)
        mix += weights[k] * _pil_to_tensor(img)
    return m * x + (1 - m) * mix


def augmix_views(image: torch.Tensor, views: int, generator: torch.Generator, rng: np.random.RandomState,
                 severity: float = 1.0) -> torch.Tensor:
    """``views`` AugMix views (views, 3, H, W) of one image (3, H, W) in [0, 1], view after view.

    The image is quantized to uint8 (``round(255 x)``: exact for images read from 8-bit files, as every
    tta stream), since the operations are PIL's 8-bit ones.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"augmix_views: one RGB image (3, H, W) expected, got {tuple(image.shape)}")
    pixels = (image.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    pixels = np.ascontiguousarray(pixels)
    return torch.stack([augmix_view(pixels, generator, rng, severity) for _ in range(views)]).to(image.device)
