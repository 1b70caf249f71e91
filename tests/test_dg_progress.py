"""``tta.train``'s status line: step, loss, images/s and ETA on a terminal; nothing on a pipe."""

from __future__ import annotations

import io

from tta.training.progress import CLEAR, Progress, duration


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def feed(progress: Progress, clock: Clock, steps, seconds_per_step: float) -> None:
    for step in steps:
        clock.now += seconds_per_step
        progress({"step": step, "loss": float(step)})


def test_status_line_reports_step_mean_loss_rate_and_eta():
    stream, clock = Terminal(), Clock()
    progress = Progress(total_steps=100, images_per_step=96, stream=stream, interval=2.0, clock=clock)
    feed(progress, clock, range(11, 16), 0.5)  # a resumed run: its clock starts at step 11
    # printed at step 11 (first line: no rate yet) and at step 15 (2 s later)
    writes = stream.getvalue().split(CLEAR)[1:]
    assert writes[0] == "step 11/100  loss 11.0000"
    # 4 steps in 2 s after step 11: 192 img/s; 85 steps left at 0.5 s = 42 s; mean loss of steps 12-15
    assert writes[1] == "step 15/100  loss 13.5000  192.0 img/s  ETA 42s"
    assert len(writes) == 2


def test_evaluation_lines_clear_the_status_and_the_last_step_always_shows():
    stream, clock = Terminal(), Clock()
    progress = Progress(total_steps=3, images_per_step=10, stream=stream, interval=60.0, clock=clock,
                        on_eval=lambda line: f"eval at {line['step']}")
    feed(progress, clock, [1, 2, 3], 1.0)
    progress({"step": 3, "eval": True})
    progress.close()
    assert stream.getvalue() == (f"{CLEAR}step 1/3  loss 1.0000{CLEAR}step 3/3  loss 2.5000  10.0 img/s  ETA 0s"
                                 f"{CLEAR}eval at 3\n")


def test_no_status_on_a_pipe_or_when_quiet_but_evaluations_still_print():
    for stream, enabled in ((io.StringIO(), None), (Terminal(), False)):
        clock = Clock()
        progress = Progress(total_steps=5, images_per_step=4, stream=stream, interval=0.0, clock=clock,
                            enabled=enabled, on_eval=lambda line: "eval")
        feed(progress, clock, range(1, 6), 1.0)
        progress({"step": 5, "eval": True})
        progress.close()
        assert stream.getvalue() == "eval\n"


def test_duration_format():
    assert [duration(s) for s in (0, 42.4, 187, 3720, float("inf"))] == ["0s", "42s", "3m07s", "1h02m", "?"]
