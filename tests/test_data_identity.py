"""A stored result is served only for the same data, and one cell is computed once.

* the data fingerprint (root + file names, sizes, mtimes) is part of the run identity:
  another folder, or a changed file, gives a new row, never ``(stored)``;
* two processes on one cell: the second waits for the first's row (one row per domain);
* a killed process's claim lapses and the cell is taken over.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time

import numpy as np
import pytest

from helpers import run_cli
from conftest import write_c_layout
from tta.runner import Run, RunConfig
from tta.store import BUSY, CLAIMED, DONE, ResultStore


def _identity(images, severity):
    return images


@pytest.fixture
def two_roots(tmp_path, cifar_test):
    """Two CIFAR-10-C-layout roots with a ``fog`` domain: 1 real image and 8 real images."""
    images, labels = cifar_test
    pick = np.random.default_rng(0).permutation(len(images))[:8]
    one = write_c_layout(tmp_path / "one", "fog", images[pick[:1]], labels[pick[:1]], _identity)
    eight = write_c_layout(tmp_path / "eight", "fog", images[pick], labels[pick], _identity)
    return one, eight


def _run(store, root, checkpoint, *extra):
    return run_cli("tta.run", "--method", "source", "--protocol", "cifar10c", "--domains", "fog",
                   "--data-root", str(root), "--checkpoint", checkpoint, "--store", str(store), *extra)


def test_another_data_root_or_a_changed_file_is_never_served_from_the_store(tmp_path, two_roots,
                                                                             resnet20_checkpoint):
    one, eight = two_roots
    store = tmp_path / "results.sqlite"
    first = _run(store, one, resnet20_checkpoint)
    assert first.returncode == 0, first.stderr
    assert "(stored)" not in first.stdout and " n      1 " in first.stdout
    again = _run(store, one, resnet20_checkpoint)  # same data: served
    assert "(stored)" in again.stdout
    other = _run(store, eight, resnet20_checkpoint)  # the 8-image folder: computed, 8 examples
    assert other.returncode == 0, other.stderr
    assert "(stored)" not in other.stdout and " n      8 " in other.stdout
    # a changed file (same size, new contents and mtime) is other data too
    fog = eight / "CIFAR-10-C" / "fog.npy"
    array = np.load(fog)
    np.save(fog, 255 - array)
    os.utime(fog, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = _run(store, eight, resnet20_checkpoint)
    assert "(stored)" not in changed.stdout
    rows = ResultStore(store).rows()
    assert len(rows) == 3 and len({r["run_key"] for r in rows}) == 3
    assert len({r["data_fingerprint"] for r in rows}) == 3
    assert {r["data_root"] for r in rows} == {str(one.resolve()), str(eight.resolve())}


def test_procedural_data_has_one_fingerprint_wherever_the_data_root_points(tmp_path):
    keys = set()
    for root in (tmp_path / "a", tmp_path / "b"):
        root.mkdir()
        run = Run(RunConfig(protocol="smoke", method="source", data_root=str(root), n_examples=10, domains=["fog"]))
        assert run.data_fingerprint == "procedural" and run.data_root is None
        keys.add(run.run_key)
    assert len(keys) == 1


def _compute_cell(store_path: str, start, out) -> None:
    run = Run(RunConfig(protocol="smoke", method="bn_adapt", n_examples=400,
                        domains=["fog", "snow", "contrast", "pixelate"]))
    start.wait(120)
    rows = run.execute(ResultStore(store_path))
    out.put(sorted((r["domain"], r["error"]) for r in rows))


def test_two_processes_on_one_cell_store_one_row_per_domain(tmp_path):
    path = str(tmp_path / "results.sqlite")
    ResultStore(path)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_compute_cell, args=(path, start, out)) for _ in range(2)]
    for w in workers:
        w.start()
    results = [out.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    with sqlite3.connect(path) as con:
        domains = [d for (d,) in con.execute("SELECT domain FROM results")]
        claims = con.execute("SELECT COUNT(*) FROM claims").fetchone()[0]
    assert sorted(domains) == ["contrast-5", "fog-5", "pixelate-5", "snow-5"]  # one row each, not two
    assert results[0] == results[1] and len(results[0]) == 4  # both processes report the same four rows
    assert claims == 0  # every claim released


def test_a_live_claim_blocks_another_owner_and_a_lapsed_one_is_taken_over(tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    assert store.claim("key", "fog-5", "a") == CLAIMED
    assert store.claim("key", "fog-5", "b") == BUSY
    assert store.claim("key", "fog-5", "a") == CLAIMED  # the owner renews
    store.release("key", "fog-5", "a")
    assert store.claim("key", "fog-5", "b") == CLAIMED
    assert store.claim("key", "snow-5", "dead", ttl_s=-1.0) == CLAIMED  # a killed process's claim, lapsed
    assert store.claim("key", "snow-5", "c") == CLAIMED
    store.append({"run_key": "key", "created_at": "x", "protocol": "p", "scenario": "episodic", "method": "m",
                  "hparams": {}, "seed": 0, "model": "x", "domain": "pixelate-5"})
    assert store.claim("key", "pixelate-5", "c") == DONE
    assert store.claim("key", "pixelate-5", "c", force=True) == CLAIMED


def test_a_run_takes_over_a_lapsed_claim_and_waits_out_a_live_one(tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    run = Run(RunConfig(protocol="smoke", method="source", n_examples=50, domains=["fog"]))
    store.claim(run.run_key, "fog-5", "killed-process", ttl_s=-1.0)
    rows = run.execute(store)
    assert [r["domain"] for r in rows] == ["fog-5"] and len(store.rows()) == 1
    other = Run(RunConfig(protocol="smoke", method="source", n_examples=50, domains=["snow"]))
    store.claim(other.run_key, "snow-5", "slow-process", ttl_s=1.5)  # live for 1.5 s, then lapses
    started = time.monotonic()
    rows = other.execute(store)
    assert time.monotonic() - started >= 1.0  # it waited for the claim instead of computing at once
    assert [r["domain"] for r in rows] == ["snow-5"]


def test_a_dg_checkpoint_names_its_model_training_method_and_weights_in_the_row(tmp_path):
    """A ``tta.train`` checkpoint carries ``tta_meta``: the run takes its model from it (no --model
    needed) and the row and identity name its training method and pretrained weights."""
    import torch

    from tta.models import create_model
    from tta.models.checkpoint import META_KEY

    state = create_model("resnet20", num_classes=10).net.state_dict()  # not the protocol's smoke_cnn
    keys = {}
    for method in ("erm", "sam"):
        path = tmp_path / f"{method}.pt"
        torch.save({"state_dict": state, META_KEY: {"model": "resnet20", "training_method": method,
                                                    "pretrained": "none"}}, path)
        run = Run(RunConfig(protocol="shapes_dg", method="source", checkpoint=str(path), domains=["solid"],
                            n_examples=20))
        assert run.model_name == "resnet20"  # from the checkpoint, not the protocol's default model
        row = run.execute()[0]
        assert row["extra"]["training_method"] == method and row["extra"]["pretrained"] == "none"
        keys[method] = run.run_key
    # same weights, another training method: never the same cell
    assert keys["erm"] != keys["sam"]
