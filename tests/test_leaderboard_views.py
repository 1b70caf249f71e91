"""Leaderboard ranking, batch-size and cost views, and --compare, on small stores built here (exact numbers).

Golden files in tests/golden/ (``TTA_UPDATE_GOLDEN=1`` rewrites them after a deliberate change).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from test_leaderboard import SHA_ERM, SHA_SAM, _row
from tta import leaderboard
from tta.cells import separation
from tta.leaderboard_compare import compare_markdown
from tta.leaderboard_views import cost_table, pareto_front
from tta.store import ResultStore

GOLDEN = Path(__file__).parent / "golden"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _golden(name: str, text: str) -> None:
    golden = GOLDEN / name
    if os.environ.get("TTA_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"differs from {golden} (TTA_UPDATE_GOLDEN=1 rewrites it after a deliberate " \
                                       "change)"


def _doc(rows: list[dict], tmp_path: Path, plots: bool = False) -> tuple[str, Path]:
    """The protocol document the CLI writes for ``rows`` (through a real store), and the output folder."""
    store = ResultStore(tmp_path / "r.sqlite")
    store.extend(rows)
    out = tmp_path / "board"
    argv = ["--store", str(store.path), "--out", str(out)] + ([] if plots else ["--no-plots"])
    assert leaderboard.main(argv) == 0
    return (out / "golden_proto.md").read_text(), out


def _section(doc: str, start: str) -> str:
    """From the heading starting with ``start`` to the next ``## `` heading."""
    at = doc.index(f"\n## {start}") + 1
    end = doc.find("\n## ", at + 3)
    return doc[at:] if end < 0 else doc[at:end + 1]


def _table_row(section: str, label: str) -> list[str]:
    line = next(line for line in section.splitlines() if line.startswith(f"| {label} "))
    return [cell.strip() for cell in line.split("|")[2:-1]]


# -- 1. bold only beyond the seed spread --------------------------------------------------------------------


def test_separation_rule_on_hand_numbers():
    mean = pd.Series({"a": 10.0, "b": 10.4, "c": 12.0})
    std = pd.Series({"a": 0.5, "b": 0.3, "c": 0.1})
    verdict = separation(mean, std)
    assert verdict.best is None and verdict.leader == "a"
    assert verdict.within == [("b", Decimal("0.40"), Decimal("0.50"))] and verdict.unknown == []
    # b out of the spread: a is bold
    assert separation(pd.Series({"a": 10.0, "b": 10.51, "c": 12.0}), std).best == "a"
    # exactly the spread (as shown) is not beyond it
    assert separation(pd.Series({"a": 10.0, "b": 10.5}), pd.Series({"a": 0.5, "b": 0.1})).best is None
    # equal as shown, spread 0: no clear best
    assert separation(pd.Series({"a": 10.001, "b": 10.004}), pd.Series({"a": 0.0, "b": 0.0})).best is None
    # one seed on either side: spread unknown, never bold
    one_seed = separation(pd.Series({"a": 1.0, "b": 50.0}), pd.Series({"a": 0.1, "b": math.nan}))
    assert one_seed.best is None and one_seed.unknown == ["b"]
    # alone in the column: nothing to beat
    assert separation(pd.Series({"a": 1.0, "b": math.nan}), pd.Series({"a": 0.1, "b": math.nan})).best is None
    # higher is better (mIoU): the largest value leads
    assert separation(pd.Series({"a": 60.0, "b": 50.0}), pd.Series({"a": 1.0, "b": 1.0}),
                      higher_is_better=True).best == "a"


def _spread_rows() -> list[dict]:
    """ERM, batch 64, 3 seeds: photo within the spread, sketch and mean beyond it. SAM: one seed each.

    ERM, batch 16: alpha_bn with 3 seeds next to tent with one (spread unknown).
    """
    rows = []
    for seed in (0, 1, 2):
        for method, photo, sketch, step in (("alpha_bn", 20.0, 10.0, 1.0), ("bn_adapt", 21.5, 15.0, 0.5),
                                            ("source", 30.0, 40.0, 0.25)):
            rows += [_row(seed=seed, domain="photo", error=photo + step * seed, method=method),
                     _row(seed=seed, domain="sketch", error=sketch + step * seed, method=method)]
        rows += [_row(seed=seed, domain=d, error=20.0 + seed, method="alpha_bn", batch_size=16) for d in ("photo",
                                                                                                       "sketch")]
    rows += [_row(domain=d, error=e, method="tent", batch_size=16) for d, e in (("photo", 40.0), ("sketch", 45.0))]
    rows += [_row(domain=d, error=e, method=m, checkpoint_sha256=SHA_SAM)
             for m, errors in (("source", (30.0, 40.0)), ("bn_adapt", (10.0, 12.0)))
             for d, e in zip(("photo", "sketch"), errors)]
    return rows


def test_bold_only_beyond_the_seed_spread_golden(tmp_path):
    doc, _ = _doc(_spread_rows(), tmp_path)
    _golden("leaderboard_spread.md", doc)
    erm = _section(doc, "scenario `episodic` · model `golden_net` · checkpoint sha256 eeeeeeeeeeee · batch 64")
    # photo: alpha_bn 21.00 ± 1.00 vs bn_adapt 22.00 ± 0.50: Δ 1.00 is not beyond the spread 1.00 -> no bold
    assert _table_row(erm, "alpha_bn") == ["1", "3", "21.00 ± 1.00", "**11.00 ± 1.00**", "**16.00 ± 1.00**", "1.00"]
    assert _table_row(erm, "bn_adapt")[2:5] == ["22.00 ± 0.50", "15.50 ± 0.50", "18.75 ± 0.50"]
    assert "the column's best: `photo`: alpha_bn vs bn_adapt (Δ 1.00 ≤ spread 1.00)." in erm
    assert "`sketch`" not in erm.split("| method")[1] and "`mean`" not in erm.split("| method")[1]
    # one seed per method: no spread known, nothing bold, and the note says so
    sam = _section(doc, "scenario `episodic` · model `golden_net` · checkpoint sha256 555555555555")
    assert "**" not in sam and "One seed per method: no seed spread is known, so no value is bold." in sam
    assert _table_row(sam, "bn_adapt")[2:5] == ["10.00", "12.00", "11.00"]
    # a one-seed method next to a three-seed one: spread unknown, not bold although 20 points apart
    mixed = _section(doc, "scenario `episodic` · model `golden_net` · checkpoint sha256 eeeeeeeeeeee · batch 16")
    assert "**" not in mixed and "`photo`: alpha_bn vs tent (spread unknown: one seed)" in mixed
    assert "ahead of every other method by more than the seed spread" in doc.split("\n## ")[0]


# -- 2. cost on one machine, and the Pareto front -------------------------------------------------------------


def test_pareto_front_on_hand_made_points():
    points = pd.DataFrame({"cost": [1.0, 1.25, 1.43, 2.5, 30.0, 2.5, 1.0, math.nan, 0.5],
                           "error": [40.0, 31.0, 32.0, 26.0, 27.0, 26.0, 45.0, 10.0, math.nan]},
                          index=["a", "b", "c", "d", "e", "f", "g", "h", "i"])
    # c is dominated by b, e by d, g by a (same cost, more error); d and f tie (both on it); h, i lack a value
    assert pareto_front(points) == {"a", "b", "d", "f"}
    assert pareto_front(points.loc[["a"]]) == {"a"}
    assert pareto_front(points.loc[["h", "i"]]) == set()


CPU = {"torch": "2.0", "device": "cpu", "device_name": "test cpu", "threads": 2, "cpu_count": 4, "host": "h1"}
GPU = {"torch": "2.0", "device": "cuda", "device_name": "test gpu", "threads": 2, "cpu_count": 4, "host": "h2"}


def _timed(method, seed, domain, error, seconds, mem, env=CPU, severity=5, n=100):
    return _row(seed=seed, domain=f"{domain}-{severity}", domain_index=["photo", "sketch"].index(domain), error=error,
                method=method, severity=severity, env=env, n=n, method_s=seconds, images_per_s=n / seconds,
                peak_mem_mb=mem)


def _cost_rows() -> list[dict]:
    """CPU: five methods (source..memo) at severity 5, source and bn_adapt also at 3; GPU: two methods, no source."""
    rows = []
    table = (("source", 40.0, 0.1, 100.0), ("bn_adapt", 31.0, 0.125, 110.0), ("adabn", 32.0, 0.14, 120.0),
             ("tent", 26.0, 0.25, 150.0), ("memo", 27.0, 3.0, 400.0))
    for method, error, seconds, mem in table:
        for seed in (0, 1):
            for domain in ("photo", "sketch"):
                # seed 1 takes three times as long: images/s is images over seconds, not a mean of per-row rates
                rows.append(_timed(method, seed, domain, error + seed + (domain == "sketch"), seconds * (1 + 2 * seed),
                                   mem + seed))
                if method in ("source", "bn_adapt"):
                    rows.append(_timed(method, seed, domain, error - 10.0, seconds, mem, severity=3))
    rows += [_timed(m, 0, d, e, s, 900.0, env=GPU) for m, e, s in (("bn_adapt", 31.0, 0.01), ("tent", 26.0, 0.02))
             for d in ("photo", "sketch")]
    return rows


def test_cost_table_numbers():
    frame = leaderboard.frame([r for r in _cost_rows() if r["env"] == CPU])
    numbers, severities = cost_table(frame)
    assert severities == ["5"]  # tent, adabn and memo have severity 5 only: the error is over severity 5
    assert list(numbers.index) == ["source", "bn_adapt", "adabn", "tent", "memo"]  # by cost
    # source: 4 rows of 100 images at 0.1 s (seed 0) and 0.3 s (seed 1), plus 4 at 0.1 s (severity 3)
    assert numbers.at["source", "images_per_s"] == pytest.approx(800 / (2 * 0.1 + 2 * 0.3 + 4 * 0.1))
    assert numbers.at["memo", "images_per_s"] == pytest.approx(400 / (2 * 3.0 + 2 * 9.0))
    assert numbers.at["memo", "cost"] == pytest.approx((800 / 1.2) / (400 / 24.0))
    assert numbers.at["source", "cost"] == 1.0
    # error at severity 5: per seed mean over domains (40.5, 41.5), then over seeds
    assert numbers.at["source", "error"] == pytest.approx(41.0)
    assert numbers.at["source", "error_std"] == pytest.approx(statistics.stdev([40.5, 41.5]))
    assert numbers.at["tent", "peak_mem_mb"] == 151.0 and numbers.at["memo", "method_s"] == pytest.approx(6.0)
    assert set(numbers.index[numbers["pareto"]]) == {"source", "bn_adapt", "tent"}


def test_cost_view_golden_one_machine_per_table(tmp_path):
    doc, _ = _doc(_cost_rows(), tmp_path)
    _golden("leaderboard_cost.md", doc[doc.index("\n## Cost") + 1:])
    # the same rows stored in another order (the GPU rows still the newer ones): the same document
    rows = _cost_rows()
    reordered = [r for r in rows if r["env"] == CPU][::-1] + [r for r in rows if r["env"] == GPU][::-1]
    assert _doc(reordered, tmp_path / "reordered")[0] == doc
    sections = re.findall(r"\n## Cost · [^\n]*", doc)
    assert len(sections) == 2  # one view (severities 3 and 5 together), two machines
    machine = {name: leaderboard.digest((json.dumps(env, sort_keys=True),))
               for name, env in (("cpu", CPU), ("gpu", GPU))}
    cpu = _section(doc, f"Cost · scenario `episodic` · model `golden_net` · machine {machine['cpu']}")
    assert _table_row(cpu, "source") == ["2", "41.00 ± 0.71", "666.7", "1.00", "0.150", "101.0", "yes"]
    assert _table_row(cpu, "memo") == ["2", "28.00 ± 0.71", "16.7", "40.00", "6.000", "401.0", ""]
    assert "averaged over severity 5 (those every method has here)" in cpu and "cpu (test cpu), 2 thread(s)" in cpu
    gpu = _section(doc, f"Cost · scenario `episodic` · model `golden_net` · machine {machine['gpu']}")
    assert "cuda (test gpu)" in gpu and "No `source` rows on this machine: no relative cost." in gpu
    assert _table_row(gpu, "tent") == ["1", "26.00", "5000.0", "–", "0.020", "900.0", ""]
    # the GPU rows (seed 0, newer) replace the CPU rows of the same cells and seed in the error tables (one value per
    # cell and seed, said in the caption), not in the CPU cost view (its numbers above count every CPU row)
    assert "4 older row(s) with the same table, method, domain and seed were left out" in doc.split("\n## Cost")[0]


# -- 3. batch size ----------------------------------------------------------------------------------------


def _batch_rows() -> list[dict]:
    """ERM at batch 1, 16, 64, 200 (batch 200 with a third domain); SAM at batch 16 only (no view)."""
    errors = {"source": {64: 40.0, 200: 40.0}, "bn_adapt": {1: 80.0, 16: 35.0, 64: 31.0, 200: 30.0},
              "alpha_bn": {1: 45.0, 16: 33.0, 64: 32.0, 200: 30.2}}
    rows = []
    for method, by_batch in errors.items():
        for batch, error in by_batch.items():
            domains = ("photo", "sketch", "cartoon") if batch == 200 else ("photo", "sketch")
            rows += [_row(seed=seed, domain=d, error=error + seed + 2.0 * i, method=method, batch_size=batch)
                     for seed in (0, 1) for i, d in enumerate(domains)]
    rows += [_row(seed=0, domain=d, error=50.0, method="bn_adapt", batch_size=16, checkpoint_sha256=SHA_SAM)
             for d in ("photo", "sketch")]
    return rows


def test_batch_size_view_golden(tmp_path):
    doc, _ = _doc(_batch_rows(), tmp_path)
    _golden("leaderboard_batch_size.md", doc[doc.index("\n## Batch size") + 1:])
    assert doc.count("\n## Batch size") == 1  # SAM has one batch size: no view
    view = _section(doc, "Batch size")
    header = next(line for line in view.splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.split("|")[2:-1]] == ["batch 1", "batch 16", "batch 64", "batch 200"]
    assert "batch size 1, 16, 64, 200; seeds 0, 1" in view
    # per seed, the mean over photo (+0) and sketch (+2): error + 1 + seed; at batch 200 cartoon (+4) is left out
    # (not in every batch size's table)
    assert _table_row(view, "bn_adapt") == ["81.50 ± 0.71", "36.50 ± 0.71", "**32.50 ± 0.71**", "31.50 ± 0.71"]
    assert _table_row(view, "alpha_bn") == ["**46.50 ± 0.71**", "**34.50 ± 0.71**", "33.50 ± 0.71", "31.70 ± 0.71"]
    assert _table_row(view, "source") == ["", "", "41.50 ± 0.71", "41.50 ± 0.71"]
    # batch 200: bn_adapt 31.50 vs alpha_bn 31.70, within the spread 0.71: no bold, named in the note
    assert "`batch 200`: bn_adapt vs alpha_bn (Δ 0.20 ≤ spread 0.71)" in view
    assert "the 2 domains every batch size has" in view


def test_views_are_linked_plots_and_listed_in_the_index(tmp_path):
    doc, out = _doc(_batch_rows() + [{**r, "checkpoint_sha256": "c" * 64} for r in _cost_rows()], tmp_path, plots=True)
    links = re.findall(r"\]\(([^)]+\.png)\)", doc)
    assert sum(link.endswith("_batch.png") for link in links) == 1
    assert sum(link.endswith("_cost.png") for link in links) == 1  # the GPU table has no relative cost to plot
    for link in links:
        assert (out / link).read_bytes()[:8] == PNG_MAGIC
    readme = (out / "README.md").read_text()
    assert "1 batch-size view(s)" in readme and "2 cost view(s)" in readme


# -- 4. --compare --------------------------------------------------------------------------------------------


def _compare_sides() -> tuple[list[dict], list[dict]]:
    """A: ERM at batch 64, seeds 0-2; B: the same cells with alpha_bn 3 points better on every seed, bn_adapt's
    seed 2 moved by 1 (within its spread), source's sketch dropped, and a new batch-1 table."""
    a = [r for r in _spread_rows() if r["checkpoint_sha256"] == SHA_ERM and r["batch_size"] == 64]
    b = [{**r, "error": r["error"] - 3.0 if r["method"] == "alpha_bn" else
          r["error"] + (1.0 if r["method"] == "bn_adapt" and r["seed"] == 2 else 0.0)}
         for r in a if not (r["method"] == "source" and r["domain"] == "sketch")]
    b += [{**r, "batch_size": 1, "run_key": r["run_key"] + "-batch1"} for r in b if r["method"] == "bn_adapt"]
    return a, b


def test_compare_golden_per_cell_with_the_spread_of_both():
    a, b = _compare_sides()
    text = compare_markdown("A", leaderboard.cell_frame(a), "B", leaderboard.cell_frame(b))
    _golden("leaderboard_compare.md", text)
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:-1]]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")}
    assert rows[("alpha_bn", "photo")] == ["21.00 ± 1.00", "18.00 ± 1.00", "3/3", "-3.00", "1.00", "yes"]
    # bn_adapt photo: 21.5, 22, 22.5 -> 21.5, 22, 23.5: Δ +0.33, spread max(0.50, 1.04)
    assert rows[("bn_adapt", "photo")] == ["22.00 ± 0.50", "22.33 ± 1.04", "3/3", "+0.33", "1.04", "no"]
    assert rows[("source", "photo")][3:] == ["0.00", "0.25", "no"]
    assert "## Only in A (2 cells)" in text and "`source`: sketch, mean" in text
    assert "## Only in B (3 cells)" in text and "batch 1 · `bn_adapt`: photo, sketch, mean" in text


def test_compare_a_store_with_the_json_the_leaderboard_wrote(tmp_path, capsys):
    """Either side may be a leaderboard folder or ``<protocol>.json``: the same cells as from the store."""
    a, b = _compare_sides()
    store_a, store_b = ResultStore(tmp_path / "a.sqlite"), ResultStore(tmp_path / "b.sqlite")
    store_a.extend(a)
    store_b.extend(b)
    assert leaderboard.main(["--store", str(store_a.path), "--out", str(tmp_path / "board_a"), "--no-plots"]) == 0
    capsys.readouterr()
    # a store against its own leaderboard: every cell in both, every Δ zero
    assert leaderboard.main(["--compare", str(store_a.path), str(tmp_path / "board_a")]) == 0
    same = capsys.readouterr().out
    assert "on the 9 cells present in both (0 only in A, 0 only in B" in same and "Only in" not in same
    deltas = [line.split("|")[6].strip() for line in same.splitlines() if line.startswith("| ") and "method" not in line
              and "---" not in line]
    assert len(deltas) == 9 and set(deltas) == {"0.00"}
    # the JSON file against a store: the report equals the store-against-store one but for the title
    assert leaderboard.main(["--compare", str(tmp_path / "board_a" / "golden_proto.json"), str(store_b.path)]) == 0
    by_json = capsys.readouterr().out
    assert leaderboard.main(["--compare", str(store_a.path), str(store_b.path)]) == 0
    by_store = capsys.readouterr().out
    assert by_json.split("\n", 1)[1] == by_store.split("\n", 1)[1]
    assert by_store.split("\n", 1)[1] == compare_markdown("A", leaderboard.cell_frame(a), "B",
                                                          leaderboard.cell_frame(b)).split("\n", 1)[1] + "\n"


def test_compare_rejects_a_json_that_is_not_a_leaderboard(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"not": "records"}))
    assert leaderboard.main(["--compare", str(bad), str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "not a leaderboard JSON file" in err[0]
