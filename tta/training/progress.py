"""A periodic one-line status of a training run on stderr: step, loss, images/s, ETA.

``tta.train`` prints a header and then one line per evaluation; between evaluations
(minutes on PACS) this status line says the run is alive and how long it will take. It
is rewritten in place (carriage return) at most every ``interval`` seconds, and only when
the stream is a terminal: a log file or a pipe gets the evaluation lines only.

Rates count the steps of this session after its first one (a resumed run starts its
clock at the resume point; start-up is not a step) over wall time, evaluations included,
so the ETA is what the user will wait.
"""

from __future__ import annotations

import math
import time
from typing import Callable, TextIO

from tta.status_line import CLEAR, duration

class Progress:
    """Feed it every log line (``on_line``); it prints the status and the evaluation lines."""

    def __init__(self, total_steps: int, images_per_step: int, stream: TextIO, interval: float = 2.0,
                 enabled: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 on_eval: Callable[[dict], str] | None = None) -> None:
        self.total, self.images_per_step, self.stream = total_steps, images_per_step, stream
        self.interval, self.clock, self.on_eval = interval, clock, on_eval
        self.enabled = stream.isatty() if enabled is None else enabled
        self.first_step: int | None = None
        self.started = self.last_print = 0.0
        self.losses: list[float] = []
        self.showing = False

    def __call__(self, line: dict) -> None:
        if line.get("eval"):
            self._clear()
            if self.on_eval is not None:
                print(self.on_eval(line), file=self.stream, flush=True)
            return
        now = self.clock()
        if self.first_step is None:
            self.first_step, self.started, self.last_print = line["step"], now, -math.inf  # show it at once
        if isinstance(line.get("loss"), (int, float)):
            self.losses.append(float(line["loss"]))
        if self.enabled and (now - self.last_print >= self.interval or line["step"] == self.total):
            self.stream.write(CLEAR + self.status(line["step"], now))
            self.stream.flush()
            self.showing, self.last_print, self.losses = True, now, []

    def status(self, step: int, now: float) -> str:
        done = step - (self.first_step if self.first_step is not None else step)
        elapsed = now - self.started
        loss = f"loss {sum(self.losses) / len(self.losses):.4f}" if self.losses else "loss ?"
        if done < 1 or elapsed <= 0:
            return f"step {step}/{self.total}  {loss}"
        rate = f"{done * self.images_per_step / elapsed:.1f} img/s"
        return f"step {step}/{self.total}  {loss}  {rate}  ETA {duration(elapsed / done * (self.total - step))}"

    def close(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self.showing:
            self.stream.write(CLEAR)
            self.stream.flush()
            self.showing = False
