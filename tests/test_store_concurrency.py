"""Two processes append to one SQLite store at the same time: no row is lost or duplicated."""

from __future__ import annotations

import multiprocessing
import sqlite3

from tta.store import ResultStore

APPENDS = 200


def _append_many(path: str, writer: int, start, first_landed) -> None:
    store = ResultStore(path)
    start.wait(120)  # both writers begin together
    for i in range(APPENDS):
        if i == 1:
            first_landed.wait(120)  # both have committed a row: the other 2 x 199 appends overlap in time
        store.append({"run_key": f"writer{writer}", "created_at": "2026-01-01T00:00:00+00:00", "protocol": "p",
                      "scenario": "episodic", "method": "m", "hparams": {}, "seed": writer, "model": "x",
                      "domain": f"d{i}", "domain_index": i, "error": float(i)})


def test_two_processes_append_without_losing_rows(tmp_path):
    path = str(tmp_path / "store.sqlite")
    ResultStore(path)
    ctx = multiprocessing.get_context("spawn")
    start, first_landed = ctx.Barrier(2), ctx.Barrier(2)
    writers = [ctx.Process(target=_append_many, args=(path, w, start, first_landed)) for w in (0, 1)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
        assert w.exitcode == 0
    with sqlite3.connect(path) as con:
        rows = con.execute("SELECT id, run_key, domain, error FROM results ORDER BY id").fetchall()
    assert len(rows) == 2 * APPENDS
    assert len({r[0] for r in rows}) == 2 * APPENDS
    for w in (0, 1):
        mine = [(d, e) for _, key, d, e in rows if key == f"writer{w}"]
        assert sorted(mine) == sorted((f"d{i}", float(i)) for i in range(APPENDS))
        # each writer's own appends keep their order
        assert [d for d, _ in mine] == [f"d{i}" for i in range(APPENDS)]
    assert len(ResultStore(path).rows()) == 2 * APPENDS
