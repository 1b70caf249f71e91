"""Sweeps: grid expansion, validation before work, Ray execution, and resuming a killed sweep."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tta import grid, sweep
from tta.runner import Run, RunConfig
from tta.store import ResultStore

DOMAINS = "gaussian_noise,contrast"
FAST = ["--n-examples", "64", "--batch-size", "32", "--domains", DOMAINS]


def _rows(path) -> list[tuple]:
    with sqlite3.connect(path) as con:
        query = "SELECT id, run_key, method, seed, domain, created_at, error FROM results ORDER BY id"
        return con.execute(query).fetchall()


def test_grid_expands_hparams_only_for_methods_that_declare_them():
    cells = grid.expand(["source", "alpha_bn"], ["smoke"], [0, 1], hp=["alpha=0.1,0.3"])
    assert sorted((c.method, c.hparams, c.seed) for c in cells) == sorted(
        [("source", (), 0), ("source", (), 1)]
        + [("alpha_bn", (("alpha", a),), s) for a in ("0.1", "0.3") for s in (0, 1)])


def test_bad_cell_stops_the_sweep_before_any_work(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    code = sweep.main(["--methods", "source", "--protocols", "smoke,smok", "--seeds", "0", "--store", str(store),
                       *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: cell smok / source / seed 0: unknown protocol 'smok'; did you mean smoke?")
    assert ResultStore(store).rows() == []  # the valid smoke cell did not run either


def test_ray_runs_a_2x2_grid_on_a_local_instance(tmp_path):
    pytest.importorskip("ray")
    store = tmp_path / "ray.sqlite"
    code = sweep.main(["--methods", "source,alpha_bn", "--protocols", "smoke", "--seeds", "0,1", "--store", str(store),
                       "--backend", "ray", "--workers", "2", "--threads", "1", *FAST])
    assert code == 0
    rows = ResultStore(store).rows()
    assert sorted({(r["method"], r["seed"]) for r in rows}) == [("alpha_bn", 0), ("alpha_bn", 1), ("source", 0),
                                                                 ("source", 1)]
    assert len(rows) == 4 * 2 and len({(r["run_key"], r["domain"]) for r in rows}) == 8
    # the Ray workers computed exactly what an in-process run computes
    local = Run(RunConfig("smoke", "alpha_bn", seed=1, domains=DOMAINS.split(","), n_examples=64, batch_size=32))
    expected = {r["domain"]: r["error"] for r in local.execute(None)}
    assert {r["domain"]: r["error"] for r in rows if r["method"] == "alpha_bn" and r["seed"] == 1} == expected
    assert all(r["env"]["threads"] == 1 and r["git_rev"] for r in rows)


def test_killed_sweep_resumes_without_recomputing_or_losing_cells(tmp_path):
    store = tmp_path / "kill.sqlite"
    command = [sys.executable, "-m", "tta.sweep", "--methods", "source,alpha_bn", "--protocols", "smoke",
               "--seeds", "0,1", "--store", str(store), "--workers", "1", *FAST]
    total = 2 * 2 * 2
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 150
    landed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if store.exists():
            try:
                landed = len(_rows(store))
            except sqlite3.OperationalError:  # table not created yet
                landed = 0
            if landed >= 3:  # the first cell (2 domains) and a domain of the second
                break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes, mid-cell
    proc.wait(30)
    before = _rows(store)
    assert 3 <= len(before) < total, f"kill did not land midway: {len(before)} of {total} rows"

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    after = _rows(store)
    assert after[:len(before)] == before  # finished rows untouched: same ids, timestamps, values
    cells = [(r[1], r[4]) for r in after]
    assert len(after) == total and len(set(cells)) == total  # every cell exactly once: nothing recomputed
    finished_cells = len({r[1] for r in before if sum(b[1] == r[1] for b in before) == 2})
    assert f"{finished_cells} finished" in resumed.stderr
