"""tta.run's progress line (terminal only) and ``--verbose`` time to first batch; the start-up
import budget (no torchvision, matplotlib, pandas or ray on the run path)."""

from __future__ import annotations

import io
import subprocess
import sys

from helpers import run_cli
from tta.status_line import CLEAR, RunProgress


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_status_line_counts_images_per_second_and_eta_from_finished_segments():
    clock, out = _Clock(), io.StringIO()
    progress = RunProgress(out, interval=0.0, enabled=True, clock=clock)
    progress(0, 3, "fog-5", 1, 200, 200)              # t = 0: first batch, no rate, no ETA yet
    assert out.getvalue().endswith("[1/3] fog-5  batch 1  200 img  ? img/s  ETA ?")
    clock.now = 2.0
    progress(0, 3, "fog-5", 2, 400, 200)              # 400 images in 2 s since the first batch
    assert out.getvalue().endswith("[1/3] fog-5  batch 2  400 img  200 img/s  ETA ?")
    clock.now = 10.0
    progress(1, 3, "snow-5", 1, 200, 200)             # segment 0 took 10 s; 2 left (this one just started)
    assert out.getvalue().endswith("[2/3] snow-5  batch 1  200 img  60 img/s  ETA 20s")
    clock.now = 14.0
    progress(1, 3, "snow-5", 2, 400, 200)             # 4 s into segment 1: 2 x 10 - 4 = 16 s left
    assert out.getvalue().endswith("ETA 16s")
    progress.clear()
    assert out.getvalue().endswith(CLEAR)


def test_status_line_is_silent_off_a_terminal_and_throttled_on_one():
    clock, out = _Clock(), io.StringIO()
    RunProgress(out, clock=clock)(0, 1, "fog-5", 1, 200, 200)  # StringIO is not a terminal
    assert out.getvalue() == ""
    throttled = RunProgress(out, interval=1.0, enabled=True, clock=clock)
    for step in range(5):                               # five batches within the same second: one line
        throttled(0, 1, "fog-5", step + 1, 200 * (step + 1), 200)
    assert out.getvalue().count(CLEAR) == 1


def test_verbose_prints_time_to_first_batch_and_a_pipe_gets_no_status_line(tmp_path):
    result = run_cli("tta.run", "--method", "bn_adapt", "--protocol", "smoke", "--domains", "fog",
                     "--n-examples", "400", "--no-store", "--verbose", env={"TTA_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("time to first batch")]
    assert len(lines) == 1, result.stderr
    total = float(lines[0].split()[4])
    parts = [float(p.split()[-2]) for p in lines[0].split(": ", 1)[1].split("; ")]
    assert abs(sum(parts) - total) < 0.02 and all(p >= 0 for p in parts)
    assert "\r" not in result.stderr and "\x1b" not in result.stderr


def test_the_run_path_does_not_import_what_a_run_does_not_use():
    code = ("import sys, tta.run, tta.runner; "
            "print(' '.join(m for m in ('torchvision', 'matplotlib', 'pandas', 'ray', 'timm') if m in sys.modules))")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert imported == []
