"""Turn a domain's uint8 array into a seeded stream of batches.

The order is a function of ``(seed, domain key)`` only (``numpy`` PCG64 seeded with
``[seed, crc32(key)]``), so a run is reproducible on any machine and no order file is
ever read. Images stay uint8 until their batch is converted: ``x = uint8 / 255``, NCHW.
"""

from __future__ import annotations

import zlib
from typing import Iterator

import numpy as np
import torch

from tta.types import Batch


def rng_for(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 N x H x W x C -> float N x C x H x W in [0, 1] (converted on the target device).

    The result keeps the NHWC memory order (a channels-last tensor) on purpose: CPU
    convolutions take it directly and ran ResNet-20 about 1.5x faster than on a
    ``.contiguous()`` NCHW copy (benchmarks/bench_speed.py).
    """
    return torch.from_numpy(images).to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)


def batches(images: np.ndarray, labels: np.ndarray, order: np.ndarray, batch_size: int, domain: str,
            device: torch.device | str = "cpu", extras: dict[str, np.ndarray] | None = None) -> Iterator[Batch]:
    """Batches of ``images[order]`` in that order (the last batch may be smaller).

    ``extras``: side image arrays indexed like ``images`` (uint8 NHWC), converted like ``x``.
    """
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        side = {name: to_tensor(array[idx], device) for name, array in (extras or {}).items()}
        yield Batch(to_tensor(images[idx], device), torch.from_numpy(labels[idx]).to(device), domain,
                    torch.from_numpy(idx), side)


def shuffled(n: int, seed: int, key: str, limit: int | None = None) -> np.ndarray:
    """A seeded permutation of ``range(n)``, cut to ``limit`` examples."""
    order = rng_for(seed, key).permutation(n)
    return order[:limit] if limit else order
