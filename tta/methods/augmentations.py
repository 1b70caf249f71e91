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

import torch
import torch.nn.functional as F


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
