"""Leaderboards from real smoke runs: seed statistics, ranks, CSV/JSON, plots, captions, --compare."""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest

from tta import leaderboard
from tta.leaderboard_compare import compare_cells
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
    exported = pd.DataFrame(json.loads((out / "smoke.json").read_text()))
    assert list(exported.columns) == list(csv.columns) and len(exported) == len(csv) == 2 * 2 * 3
    for column in ("label", "domain", "checkpoint_sha256", "error_mean", "error_std", "seeds", "rank", "avg_rank"):
        pd.testing.assert_series_equal(exported[column], csv[column], check_dtype=False, rtol=1e-9)
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
    assert sum(link.endswith(".png") for link in links) == 4  # error-vs-severity + bars per severity + error-vs-cost
    for link in links:
        assert (out / link).is_file(), link
        if link.endswith(".png"):
            assert (out / link).read_bytes()[:8] == PNG_MAGIC
    assert "*Data: procedural.* Protocol `smoke`, dataset `smoke`" in doc
    assert f"checkpoint sha256 {rows[0]['checkpoint_sha256'][:12]}" in doc and "batch 32, 48 examples per domain" in doc
    assert rows[0]["git_rev"] in doc and "torch " in doc and "seeds 0, 1" in doc
    assert "| severity 3 " in readme and "| severity 5 " in readme
    # the cost view of real runs: source is the unit, every method has a throughput and a peak memory
    cost = doc[doc.index("\n## Cost"):]
    for method in ("source", "alpha_bn"):
        line = next(line for line in cost.splitlines() if line.startswith(f"| {method} "))
        seeds, error, images_per_s, relative, seconds, peak = [c.strip() for c in line.split("|")[2:-2]]
        assert seeds == "2" and float(images_per_s) > 0 and float(seconds) > 0 and float(peak) > 0
        assert relative == "1.00" if method == "source" else float(relative) > 0


def _shifted(rows, shift):
    """The same cells with ``error`` moved by ``shift(row)``: what a code change between two stores looks like."""
    return [{**r, "error": r["error"] + shift(r)} for r in rows]


def _compare(a_rows, b_rows):
    return compare_cells(leaderboard.cell_frame(a_rows), leaderboard.cell_frame(b_rows))


def test_compare_two_stores_and_two_revisions(store, tmp_path, capsys):
    shift = lambda r: 0.5 * r["seed"] + (1.0 if r["domain"] == "contrast-5" else 0.0)  # noqa: E731
    other = ResultStore(tmp_path / "b.sqlite")
    other.extend(_shifted([r for r in store.rows() if r["severity"] == 5], shift))  # severity-5 cells only
    both, only_a, only_b = _compare(store.rows(), other.rows())
    # 2 methods x (2 domains + mean) at severity 5 in both; the severity-3 ones only in A
    assert len(both) == 2 * 3 and len(only_a) == 2 * 3 and len(only_b) == 0
    assert set(only_a["domain"]) == {"gaussian_noise-3", "contrast-3", "mean"}
    both = both.set_index(["label", "domain"])
    # delta = mean over seeds of the shift: (0 + 0.5) / 2 + 1 on contrast-5
    assert both.at[("alpha_bn", "contrast-5"), "delta"] == pytest.approx(1.25)
    assert both.xs("gaussian_noise-5", level="domain")["delta"].tolist() == [pytest.approx(0.25)] * 2
    assert both.at[("source", "mean"), "delta"] == pytest.approx(0.75)  # per seed 0.5 and 1.0
    # the seed spread of both sides: B's seeds moved apart by 0.5
    cell_rows = [r for r in store.rows() if r["method"] == "source" and r["domain"] == "contrast-5"]
    a_errors = [r["error"] for r in cell_rows]
    assert both.at[("source", "contrast-5"), "std_A"] == pytest.approx(statistics.stdev(a_errors))
    b_errors = [r["error"] + shift(r) for r in cell_rows]
    assert both.at[("source", "contrast-5"), "std_B"] == pytest.approx(statistics.stdev(b_errors))

    # the same comparison as two git revisions of rows in one store
    merged = ResultStore(tmp_path / "merged.sqlite")
    merged.extend({**r, "git_rev": "aaaa1111"} for r in store.rows())
    merged.extend({**r, "git_rev": "bbbb2222+dirty"} for r in other.rows())
    assert leaderboard.main(["--store", str(merged.path), "--compare", "aaaa", "bbbb"]) == 0
    by_revision = capsys.readouterr().out
    assert leaderboard.main(["--compare", str(store.path), str(other.path)]) == 0
    by_store = capsys.readouterr().out
    assert by_revision.split("\n", 1)[1] == by_store.split("\n", 1)[1]  # same numbers, only the title differs
    assert "6 cells present in both (6 only in A, 0 only in B" in by_store
    assert "## Only in A (6 cells)" in by_store and "`alpha_bn`: gaussian_noise-3, contrast-3, mean" in by_store


def test_compare_never_matches_cells_of_another_configuration(store, tmp_path, capsys):
    """More examples per domain is another cell, not a change of the same one."""
    other = ResultStore(tmp_path / "n96.sqlite")
    other.extend({**r, "n": 96} for r in store.rows())
    both, only_a, only_b = _compare(store.rows(), other.rows())
    assert both.empty and len(only_a) == len(only_b) == 2 * 2 * 3
    assert leaderboard.main(["--compare", str(store.path), str(other.path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no cell" in err[0]


def test_compare_unknown_side_is_one_line_error(store, tmp_path, capsys):
    code = leaderboard.main(["--store", str(store.path), "--compare", "nosuchrev", str(store.path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: --compare 'nosuchrev': neither a store file nor a git revision")


# -- the grouping rule, on rows built here (exact numbers, no runs) -------------------------------------------

SHA_ERM, SHA_SAM = "e" * 64, "5" * 64


def _row(seed=0, domain="sketch", error=75.47, **fields):
    """A complete result row; ``fields`` override any column (``extra`` merged)."""
    extra = fields.pop("extra", {})
    row = {"protocol": "golden_proto", "dataset": "golden_data", "data_source": "generated in the test",
           "scenario": "episodic", "method": "source", "hparams": {}, "seed": seed, "model": "golden_net",
           "checkpoint": "/ckpt/a.pt", "checkpoint_sha256": SHA_ERM, "domain": domain,
           "domain_index": {"photo": 0, "sketch": 1}.get(domain, 2), "severity": None, "batch_size": 64, "n": 100,
           "error": error, "nll": 1.0, "ece": 0.1, "version": "0.0", "git_rev": "abc123def456",
           "env": {"torch": "2.0", "device": "cpu", "device_name": "test cpu", "threads": 1},
           "created_at": "2025-01-01T00:00:00+00:00", "extra": extra, **fields}
    identity = {k: v for k, v in row.items() if k not in ("domain", "domain_index", "error", "nll", "ece", "n")}
    row["run_key"] = fields.get("run_key") or hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return row


def _records(rows) -> pd.DataFrame:
    """The exported records (CSV/JSON) of every table the rows make."""
    frame = leaderboard.frame(rows)
    return pd.concat([leaderboard.records(group) for _, group in frame.groupby("table")], ignore_index=True)


def test_two_checkpoints_are_two_tables_never_one_mean():
    """The PACS report: ERM's 75.47 and SAM's 75.94 were shown as one 75.70 ± 0.33 "over seeds"."""
    rows = [_row(error=75.47, checkpoint_sha256=SHA_ERM, extra={"training_method": "erm"}),
            _row(error=75.94, checkpoint_sha256=SHA_SAM, checkpoint="/ckpt/b.pt", extra={"training_method": "sam"})]
    records = _records(rows)
    cells = records[records["domain"] == "sketch"]
    assert sorted(cells["error_mean"]) == [75.47, 75.94] and set(cells["seeds"]) == {1}
    assert sorted(cells["checkpoint_sha256"]) == [SHA_SAM, SHA_ERM]
    doc = leaderboard.render(rows)["golden_proto"]
    assert "75.70" not in doc and "±" not in doc.split("| method")[1]
    assert doc.count("\n## ") == 2  # two tables, each heading naming its checkpoint and training method
    assert "checkpoint sha256 eeeeeeeeeeee" in doc and "checkpoint sha256 555555555555" in doc
    assert "trained with `erm`" in doc and "trained with `sam`" in doc


def test_rows_differing_only_in_the_seed_are_averaged():
    errors = {0: 10.0, 1: 12.5, 2: 20.0}
    rows = [_row(seed=s, error=e) for s, e in errors.items()] + [_row(seed=s, domain="photo", error=e / 2)
                                                                  for s, e in errors.items()]
    records = _records(rows).set_index("domain")
    assert records.at["sketch", "seeds"] == 3
    assert records.at["sketch", "error_mean"] == pytest.approx(statistics.mean(errors.values()))
    assert records.at["sketch", "error_std"] == pytest.approx(statistics.stdev(errors.values()))
    # mean over domains per seed (7.5, 9.375, 15), then over seeds
    per_seed = [(e + e / 2) / 2 for e in errors.values()]
    assert records.at["mean", "error_mean"] == pytest.approx(statistics.mean(per_seed))
    assert records.at["mean", "error_std"] == pytest.approx(statistics.stdev(per_seed))
    doc = leaderboard.render(rows)["golden_proto"]
    # a method alone in its table has nothing to beat: not bold
    assert doc.count("\n## ") == 1 and "| 14.17 ± 5.20 " in doc and "**" not in doc


@pytest.mark.parametrize("field, other", [
    ("batch_size", {"batch_size": 1}),
    ("data_fingerprint", {"data_fingerprint": "f00d" * 16}),
    ("n", {"n": 50}),
    ("scenario", {"scenario": "continual"}),
    ("checkpoint_sha256", {"checkpoint_sha256": SHA_SAM}),
    ("data_source", {"data_source": "official files"}),
    ("severity", {"severity": 3}),
    ("pretrained", {"extra": {"pretrained": "timm"}}),
    ("input_size", {"extra": {"input_size": [3, 224, 224]}}),
    ("hparams", {"method": "alpha_bn", "hparams": {"alpha": 0.1}}),
])
def test_rows_differing_in_anything_but_the_seed_are_not_averaged(field, other):
    """Seed 0 with the baseline, seed 1 with one field changed: two cells of one seed each, never a mean."""
    rows = [_row(seed=0, error=10.0), _row(seed=1, error=30.0, **other)]
    records = _records(rows)
    cells = records[records["domain"] == "sketch"]
    assert sorted(cells["error_mean"]) == [10.0, 30.0] and set(cells["seeds"]) == {1}, field
    doc = leaderboard.render(rows)["golden_proto"]
    tables = doc.split("\n## Batch size")[0]  # (two batch sizes also make a batch-size view: 10.00 and 30.00 there)
    assert "20.00" not in doc and "±" not in tables.split("| method", 1)[1]


def test_a_missing_field_never_matches_a_recorded_one():
    """Rows written before ``data_fingerprint`` existed are their own table, not averaged with newer rows."""
    rows = [_row(seed=0, error=10.0), _row(seed=1, error=30.0, data_fingerprint="ab" * 32)]
    doc = leaderboard.render(rows)["golden_proto"]
    assert "data fingerprint not recorded" in doc and "data fingerprint abababababab" in doc
    assert set(_records(rows)["seeds"]) == {1}


def test_same_cell_and_seed_twice_keeps_the_newest_and_says_so():
    rows = [_row(seed=0, error=10.0, run_key="old"), _row(seed=0, error=11.0, run_key="new")]
    records = _records(rows).set_index("domain")
    assert records.at["sketch", "error_mean"] == 11.0 and records.at["sketch", "seeds"] == 1
    assert "1 older row(s) with the same table, method, domain and seed were left out" in leaderboard.render(rows)[
        "golden_proto"]


# -- stable output and the golden file ------------------------------------------------------------------------

GOLDEN = Path(__file__).parent / "golden"


def _golden_rows() -> list[dict]:
    """Two checkpoints x three methods x two domains x seeds, one batch-size variant, severities 3 and 5."""
    rows = []
    for sha, base in ((SHA_ERM, 20.0), (SHA_SAM, 18.0)):
        for m, (method, hparams) in enumerate((("source", {}), ("bn_adapt", {}), ("alpha_bn", {"alpha": 0.3}))):
            for seed in (0, 1, 2):
                for severity in (3, 5):
                    for d, domain in enumerate(("photo", "sketch")):
                        error = base + 7.0 * (2 - m) + 2.5 * d + 0.25 * seed * (m + 1) + severity + 0.125 * seed ** 2
                        rows.append(_row(seed=seed, domain=f"{domain}-{severity}", error=error, method=method,
                                         hparams=hparams, checkpoint_sha256=sha, severity=severity,
                                         domain_index=d, checkpoint=f"/ckpt/{sha[0]}.pt"))
    rows += [_row(seed=seed, domain=f"{domain}-5", error=50.0 + seed + d, method="bn_adapt", batch_size=1,
                  severity=5, domain_index=d) for seed in (0, 1) for d, domain in enumerate(("photo", "sketch"))]
    return rows


def _render_store(store_path: Path, out: Path) -> dict[str, bytes]:
    assert leaderboard.main(["--store", str(store_path), "--out", str(out), "--no-plots"]) == 0
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_golden_markdown_and_byte_identical_regeneration(tmp_path, capsys):
    store = ResultStore(tmp_path / "golden.sqlite")
    store.extend(_golden_rows())
    first = _render_store(store.path, tmp_path / "a")
    assert sorted(first) == ["README.md", "golden_proto.csv", "golden_proto.json", "golden_proto.md"]
    # regenerating from the same store: byte-identical markdown, CSV and JSON
    assert _render_store(store.path, tmp_path / "b") == first
    # ... and from the same rows stored in another order
    shuffled = ResultStore(tmp_path / "shuffled.sqlite")
    shuffled.extend(sorted(_golden_rows(), key=lambda r: (-r["seed"], r["domain"], r["method"])))
    assert _render_store(shuffled.path, tmp_path / "c") == first
    capsys.readouterr()
    for name in ("golden_proto.md", "README.md"):
        golden = GOLDEN / f"leaderboard_{name}"
        if os.environ.get("TTA_UPDATE_GOLDEN"):
            golden.write_bytes(first[name])
        assert first[name].decode() == golden.read_text(), f"{name} differs from {golden} (TTA_UPDATE_GOLDEN=1 " \
                                                           "rewrites it after a deliberate change)"


# -- defaults and bad paths ---------------------------------------------------------------------------------


def test_defaults_are_the_user_store_and_folder(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("TTA_HOME", str(home))
    assert leaderboard.main(["--no-plots"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(home / "results.sqlite") in err[0] and "does not exist" in err[0]
    assert not home.exists()  # a failed start creates nothing
    ResultStore(home / "results.sqlite").extend(_golden_rows())
    assert leaderboard.main(["--no-plots"]) == 0
    assert (home / "leaderboard" / "golden_proto.md").is_file()


@pytest.mark.parametrize("args, message", [
    (["--store", "{file}/results.sqlite"], "is a file, not a folder"),
    (["--out", "{file}/board"], "is a file, not a folder"),
    (["--out", "{file}"], "is a file, not a folder"),
    (["--out", "{file}/deeper/board"], "is a file, not a folder"),
])
def test_bad_store_or_out_is_one_line_before_any_work(tmp_path, capsys, args, message):
    store = ResultStore(tmp_path / "r.sqlite")
    store.extend(_golden_rows()[:2])
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv = ["--store", str(store.path), "--out", str(tmp_path / "board"), *[a.format(file=blocker) for a in args]]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert leaderboard.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created (no board/)


def test_make_leaderboard_names_its_own_store_and_folder_in_every_call(monkeypatch, tmp_path):
    """The committed leaderboard is built only from its own store: every tta.sweep / tta.leaderboard call names it."""
    import importlib.util
    import subprocess

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "make_leaderboard.py"
    spec = importlib.util.spec_from_file_location("make_leaderboard_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: calls.append(command))
    monkeypatch.setattr("sys.argv", ["make_leaderboard.py", "--skip-cifar"])
    monkeypatch.chdir(tmp_path)  # relative defaults would land here
    assert module.main() == 0
    committed = path.parents[1] / "leaderboard"
    assert [c[2] for c in calls] == ["tta.sweep"] * (len(calls) - 1) + ["tta.leaderboard"] and len(calls) >= 2
    for command in calls:
        assert command[command.index("--store") + 1] == str(committed / "results.sqlite")
    assert calls[-1][calls[-1].index("--out") + 1] == str(committed)
    assert not any(tmp_path.iterdir())
