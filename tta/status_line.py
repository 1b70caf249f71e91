"""One status line on a terminal, rewritten in place: the shared pieces of ``tta.run``'s and
``tta.train``'s progress (``CLEAR``, :func:`duration`) and ``tta.run``'s :class:`RunProgress`.

A status line is shown only when its stream is a terminal (a log file or a pipe gets the
result lines only) and at most every ``interval`` seconds.
"""

from __future__ import annotations

import math
import time
from typing import Callable, TextIO

CLEAR = "\r\x1b[K"


def duration(seconds: float) -> str:
    """``1h02m``, ``3m07s``, ``42s``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class RunProgress:
    """``tta.run``'s status: ``[segment i/N] domain  batch b  images  img/s  ETA``.

    The runner calls it after every batch (its ``on_batch``) with the segment's position, key
    and the batches and images of the segment so far. img/s counts the wall time of the whole run since its first batch
    (data loading included: what the user waits for). ETA: the mean wall time of the finished
    segments times the segments left (and "?" during the first one, whose length the lazy
    stream does not know).
    """

    def __init__(self, stream: TextIO, interval: float = 1.0, enabled: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.stream, self.interval, self.clock = 0, stream, interval, clock
        self.enabled = stream.isatty() if enabled is None else enabled
        self.started: float | None = None
        self.images = 0
        self.segment_started: dict[int, float] = {}
        self.segment_seconds: list[float] = []
        self.last_print = -math.inf
        self.showing = False

    def __call__(self, index: int, total: int, key: str, batches: int, images: int, delta: int) -> None:
        """The runner's ``on_batch``: segment ``index`` of ``total`` (``key``), its batches and images so far."""
        now, self.total = self.clock(), total
        if self.started is None:
            self.started = now
        if index not in self.segment_started:
            if self.segment_started:
                self.segment_seconds.append(now - max(self.segment_started.values()))
            self.segment_started[index] = now
        self.images += delta
        if self.enabled and now - self.last_print >= self.interval:
            self.stream.write(CLEAR + self.status(index, key, batches, images, now))
            self.stream.flush()
            self.showing, self.last_print = True, now

    def status(self, index: int, key: str, batches: int, images: int, now: float) -> str:
        elapsed = now - (self.started if self.started is not None else now)
        rate = f"{self.images / elapsed:.0f} img/s" if elapsed > 0 else "? img/s"
        left = self.total - len(self.segment_seconds)
        eta = (sum(self.segment_seconds) / len(self.segment_seconds) * left - (now - self.segment_started[index])
               if self.segment_seconds else math.inf)
        return (f"[{index + 1}/{self.total}] {key}  batch {batches}  {images} img  {rate}  "
                f"ETA {duration(max(eta, 0.0))}")

    def clear(self) -> None:
        if self.showing:
            self.stream.write(CLEAR)
            self.stream.flush()
            self.showing = False
