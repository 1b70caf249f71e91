"""Leaderboards from real smoke runs: seed statistics, ranks, CSV/JSON, plots, captions, --compare."""

from __future__ import annotations

import json
import re
import statistics

import pandas as pd
import pytest

from tta import leaderboard
from tta.runner import Run, RunConfig
from tta.store import ResultStore

DOMAINS = ["gaussian_noise", "contrast"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fill(store: ResultStore, n_examples: int, severities=(3, 5)) -> None:
    """Real smoke runs: source and alpha_bn, seeds 0 and 1, the given severities, two domains."""
    for method in ("source", "alpha_bn"):
        for seed in (0, 1):
            for severity in severities:
                run = Run(RunConfig("smoke", method, seed=seed, severity=severity, domains=DOMAINS,
                                    n_examples=n_examples, batch_size=32))
                for row in run.execute(None):
                    store.append(row)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = ResultStore(tmp_path_factory.mktemp("lb") / "a.sqlite")
    _fill(store, 48)
    return store


def test_tables_exports_and_plots(store, tmp_path):
    out = tmp_path / "board"
    assert leaderboard.main(["--store", str(store.path), "--out", str(out)]) == 0
    rows = store.rows()
    csv = pd.read_csv(out / "smoke.csv")
    assert json.loads((out / "smoke.json").read_text()) == json.loads(csv.to_json(orient="records"))
    # mean and std over seeds from the raw rows
    for method in ("source", "alpha_bn"):
        errors = [r["error"] for r in rows if r["method"] == method and r["domain"] == "contrast-5"]
        record = csv[(csv["label"] == method) & (csv["domain"] == "contrast-5")].iloc[0]
        assert len(errors) == 2 and record["seeds"] == 2
        assert record["error_mean"] == pytest.approx(statistics.mean(errors))
        assert record["error_std"] == pytest.approx(statistics.stdev(errors))
    # ranks follow the mean over domains, per table
    for _, table in csv[csv["domain"] == "mean"].groupby("severity"):
        ordered = table.sort_values("error_mean")
        assert ordered["rank"].tolist() == sorted(ordered["rank"].tolist()) and ordered["rank"].iloc[0] == 1
    assert csv[(csv["severity"] == 5) & (csv["domain"] == "mean")].set_index("label")["rank"].to_dict() == {
        "alpha_bn": 1, "source": 2}  # on these shapes alpha_bn clearly beats the frozen source model
    # every linked file exists; plots are real PNGs; captions name the data origin
    readme = (out / "README.md").read_text()
    doc = (out / "smoke.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", readme + doc)
    assert sum(link.endswith(".png") for link in links) == 3  # error-vs-severity + bars per severity
    for link in links:
        assert (out / link).is_file(), link
        if link.endswith(".png"):
            assert (out / link).read_bytes()[:8] == PNG_MAGIC
    assert "*Data: procedural.* Dataset `smoke`, protocol `smoke`" in doc
    assert rows[0]["git_rev"] in doc and "torch " in doc and "seeds 0, 1" in doc
    assert "| severity 3 " in readme and "| severity 5 " in readme


def test_compare_two_stores_and_two_revisions(store, tmp_path, capsys):
    other = ResultStore(tmp_path / "b.sqlite")
    _fill(other, 96, severities=(5,))  # the severity-5 cells, more examples per domain: other numbers
    both, only_a, only_b = leaderboard.compare_frame(store.rows(), other.rows())
    assert len(both) == 2 * 2 and only_a == 2 * 2 and only_b == 0
    a = {(r["method"], r["severity"], r["domain"], r["seed"]): r["error"] for r in store.rows()}
    b = {(r["method"], r["severity"], r["domain"], r["seed"]): r["error"] for r in other.rows()}
    key = ("smoke", "procedural", "episodic", "smoke_cnn", 5, "alpha_bn", "contrast-5")
    expected = statistics.mean(b[("alpha_bn", 5, "contrast-5", s)] - a[("alpha_bn", 5, "contrast-5", s)]
                               for s in (0, 1))
    assert both.loc[key, "delta"] == pytest.approx(expected)
    assert both["delta"].abs().max() > 0

    # the same comparison as two git revisions of rows in one store
    merged = ResultStore(tmp_path / "merged.sqlite")
    merged.extend({**r, "git_rev": "aaaa1111"} for r in store.rows())
    merged.extend({**r, "git_rev": "bbbb2222+dirty"} for r in other.rows())
    assert leaderboard.main(["--store", str(merged.path), "--compare", "aaaa", "bbbb"]) == 0
    by_revision = capsys.readouterr().out
    assert leaderboard.main(["--compare", str(store.path), str(other.path)]) == 0
    by_store = capsys.readouterr().out
    assert by_revision.split("\n", 1)[1] == by_store.split("\n", 1)[1]  # same numbers, only the title differs
    assert "Δ mean" in by_store and "4 cells present in both (4 only in A, 0 only in B)" in by_store


def test_compare_unknown_side_is_one_line_error(store, tmp_path, capsys):
    code = leaderboard.main(["--store", str(store.path), "--compare", "nosuchrev", str(store.path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: --compare 'nosuchrev': neither a store file nor a git revision")
