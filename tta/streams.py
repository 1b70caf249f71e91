"""Turn a domain's uint8 array into a seeded stream of batches.

The order is a function of ``(seed, domain key)`` only (``numpy`` PCG64 seeded with
``[seed, crc32(key)]``), so a run is reproducible on any machine and no order file is
ever read. Images stay uint8 until their batch is converted: ``x = uint8 / 255``, NCHW.
"""

from __future__ import annotations

import queue
import threading
import zlib
from typing import Iterable, Iterator, TypeVar

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


class BatchStream:
    """Batches of ``images[order]`` in that order (the last batch may be smaller); iterable once
    or more, and it knows its size (``n_images``) before the first batch is read.

    ``extras``: side image arrays indexed like ``images`` (uint8 NHWC), converted like ``x``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, order: np.ndarray, batch_size: int, domain: str,
                 device: torch.device | str = "cpu", extras: dict[str, np.ndarray] | None = None) -> None:
        self.images, self.labels, self.order, self.batch_size = images, labels, order, batch_size
        self.domain, self.device, self.extras = domain, device, extras or {}
        self.n_images = len(order)

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, len(self.order), self.batch_size):
            idx = self.order[start:start + self.batch_size]
            side = {name: to_tensor(array[idx], self.device) for name, array in self.extras.items()}
            yield Batch(to_tensor(self.images[idx], self.device), torch.from_numpy(self.labels[idx]).to(self.device),
                        self.domain, torch.from_numpy(idx), side)


def batches(images: np.ndarray, labels: np.ndarray, order: np.ndarray, batch_size: int, domain: str,
            device: torch.device | str = "cpu", extras: dict[str, np.ndarray] | None = None) -> BatchStream:
    """The :class:`BatchStream` of ``images[order]``."""
    return BatchStream(images, labels, order, batch_size, domain, device, extras)


def shuffled(n: int, seed: int, key: str, limit: int | None = None) -> np.ndarray:
    """A seeded permutation of ``range(n)``, cut to ``limit`` examples."""
    order = rng_for(seed, key).permutation(n)
    return order[:limit] if limit else order


T = TypeVar("T")
_DONE = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """``items`` in the same order, produced up to ``depth`` ahead on a background thread.

    The next batch is read and converted (memory-mapped slice, uint8 to float, on-the-fly
    corruption of procedural sets) while the model runs the current one: numpy and torch
    release the GIL in both. The producer draws no random numbers from a global generator
    (streams are seeded per domain, :func:`rng_for`), so the values are those of the plain
    loop. An exception in the producer is raised here, unchanged, at the point the item it
    failed on would have come; leaving the loop early stops the producer. ``depth`` 0: no thread.
    """
    if depth <= 0:
        yield from items
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry: tuple) -> bool:
        """Put ``entry`` once there is room; ``False`` when the consumer has left."""
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((_DONE, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer as it is
            offer((_DONE, exc))

    thread = threading.Thread(target=produce, name="tta-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()
