"""A killed training resumes at its last checkpoint and ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from tta.training.loop import TrainConfig, Training, epoch_positions

SMALL = dict(steps=12, checkpoint_every=4, batch_size=8)


def config(out, method="sam"):
    return TrainConfig("shapes_dg", method, "outline", seed=1, out=str(out), hparams={"lr": 0.005}, **SMALL)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def final_state(out):
    last = torch.load(out / "last.pt", weights_only=True)
    return last, torch.load(out / "best.pt", weights_only=True)["state_dict"]


def test_stopped_run_resumes_bit_for_bit(tmp_path):
    reference = Training(config(tmp_path / "whole", "ridg")).run()
    interrupted = Training(config(tmp_path / "cut", "ridg"))
    assert interrupted.run(stop_after=4) is None
    assert not (tmp_path / "cut" / "summary.json").exists()
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == 4
    resumed = Training(config(tmp_path / "cut", "ridg")).run()
    (last_a, best_a), (last_b, best_b) = final_state(tmp_path / "whole"), final_state(tmp_path / "cut")
    assert_same_tensors(last_a["model"], last_b["model"])
    assert_same_tensors(best_a, best_b)
    assert_same_tensors(last_a["method"]["extra"], last_b["method"]["extra"])  # the RIDG bank
    assert resumed["val_acc"] == reference["val_acc"] and resumed["step"] == reference["step"]
    assert (tmp_path / "whole" / "log.jsonl").read_text() == (tmp_path / "cut" / "log.jsonl").read_text()


CHILD = """
import sys, time
from tta.training.loop import TrainConfig, Training
out = sys.argv[1]
cfg = TrainConfig("shapes_dg", "sam", "outline", seed=1, out=out, hparams={"lr": 0.005},
                  steps=12, checkpoint_every=4, batch_size=8)
Training(cfg).run(on_line=lambda line: time.sleep(0.3))
"""


def test_sigkilled_run_resumes_at_last_checkpoint(tmp_path):
    out = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], env={**os.environ})
    log = out / "log.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        lines = log.read_text().splitlines() if log.is_file() else []
        if any(json.loads(line)["step"] >= 6 for line in lines if line.endswith("}")):
            break
        time.sleep(0.05)
    assert child.poll() is None, "the child finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 4
    assert not (out / "summary.json").exists()
    Training(config(out)).run()
    Training(config(tmp_path / "whole")).run()
    (last_a, best_a), (last_b, best_b) = final_state(tmp_path / "whole"), final_state(out)
    assert_same_tensors(last_a["model"], last_b["model"])
    assert_same_tensors(best_a, best_b)
    assert (tmp_path / "whole" / "log.jsonl").read_text() == log.read_text()


def test_finished_run_is_not_retrained_and_a_different_run_is_refused(tmp_path):
    import pytest

    from tta.errors import UserError

    first = Training(config(tmp_path / "run", "erm")).run()
    mtime = (tmp_path / "run" / "last.pt").stat().st_mtime_ns
    assert Training(config(tmp_path / "run", "erm")).run() == first
    assert (tmp_path / "run" / "last.pt").stat().st_mtime_ns == mtime
    with pytest.raises(UserError, match="different training run"):
        Training(config(tmp_path / "run", "sam")).run()


def test_minibatches_cover_every_example_once_per_epoch():
    n, batch = 10, 4
    seen = [epoch_positions(n, batch, step, seed=0, key="d") for step in range(5)]  # 20 positions = 2 epochs
    flat = list(map(int, [i for s in seen for i in s]))
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]
