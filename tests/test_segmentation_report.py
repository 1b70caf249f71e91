"""The segmentation leaderboard: mIoU per domain (mean over seeds) and per-class IoU with class names."""

from __future__ import annotations

import os
from pathlib import Path

from tta.seg_leaderboard import main
from tta.segmentation_report import segmentation_tables
from tta.store import ResultStore


def _row(method, domain, seed, miou, iou, index):
    return {"protocol": "streets_smoke", "dataset": "streets", "model": "street_seg", "scenario": "episodic",
            "method": method, "hparams": {}, "seed": seed, "domain": domain, "domain_index": index,
            "run_key": f"{method}{seed}", "created_at": "now", "extra": {"miou": miou, "iou": iou},
            "data_source": "generated in the test", "checkpoint_sha256": "c" * 64, "batch_size": 4, "n": 10}


ROWS = [
    _row("source", "night", 0, 20.0, [10.0, None, 30.0, 0, 0, 0, 0], 1),
    _row("source", "night", 1, 30.0, [20.0, None, 40.0, 0, 0, 0, 0], 1),
    _row("source", "fog", 0, 40.0, [40.0] * 7, 0),
    _row("source", "fog", 1, 50.0, [50.0] * 7, 0),
    _row("alpha_bn", "night", 0, 60.0, [60.0] * 7, 1),
    _row("alpha_bn", "fog", 0, 10.0, [10.0] * 7, 0),
    _row("alpha_bn", "night", 1, 62.0, [62.0] * 7, 1),
    _row("alpha_bn", "fog", 1, 12.0, [12.0] * 7, 0),
]


def test_tables_average_seeds_bold_the_best_and_name_the_classes():
    (text,) = segmentation_tables(ROWS).values()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| method") and "mean" in line)
    assert header.split("|")[2].strip() == "fog" and header.split("|")[3].strip() == "night"  # protocol order
    source = next(line for line in lines if line.startswith("| source") and "±" in line)
    cells = [c.strip() for c in source.split("|")[2:-1]]
    # mean: per-seed means over domains are 30 and 40 -> 35 ± 7.1; alpha_bn's are 35 and 37 -> 36 ± 1.4,
    # ahead by 1.0, within the larger spread 7.1: not bold, and the note under the table says so
    assert cells == ["**45.0 ± 7.1**", "25.0 ± 7.1", "35.0 ± 7.1"]
    alpha = next(line for line in lines if line.startswith("| alpha_bn"))
    assert [c.strip() for c in alpha.split("|")[2:-1]] == ["11.0 ± 1.4", "**61.0 ± 1.4**", "36.0 ± 1.4"]
    assert "`mean`: alpha_bn vs source (Δ 1.0" in text
    assert "| road " in text and "| person " in text
    night_table = text.split("### night")[1]
    assert "sidewalk" in night_table and "–" in night_table  # class without a union in every seed


def test_cli_writes_the_leaderboard(tmp_path, capsys):
    store = ResultStore(tmp_path / "r.sqlite")
    store.extend(ROWS)
    assert main(["--store", str(store.path), "--out", str(tmp_path / "seg.md")]) == 0
    assert "streets_smoke — street_seg, episodic" in (tmp_path / "seg.md").read_text()
    assert main(["--store", str(tmp_path / "missing.sqlite")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_two_checkpoints_are_two_tables_never_one_mean():
    rows = [{**_row("source", "fog", 0, 40.0, [40.0] * 7, 0), "checkpoint_sha256": "a" * 64},
            {**_row("source", "fog", 1, 50.0, [50.0] * 7, 0), "checkpoint_sha256": "b" * 64, "run_key": "other"}]
    tables = segmentation_tables(rows)
    assert len(tables) == 2
    text = "\n".join(tables.values())
    assert "45.0" not in text and "±" not in text
    assert "checkpoint sha256 aaaaaaaaaaaa" in text and "checkpoint sha256 bbbbbbbbbbbb" in text


def test_golden_markdown_is_stable(tmp_path, capsys):
    """The CLI's markdown on a small store: equal to the committed golden file, and to itself from shuffled rows."""
    outputs = []
    for name, rows in (("a", ROWS), ("b", ROWS[::-1])):
        store = ResultStore(tmp_path / f"{name}.sqlite")
        store.extend(rows)
        assert main(["--store", str(store.path), "--out", str(tmp_path / f"{name}.md")]) == 0
        outputs.append((tmp_path / f"{name}.md").read_text())
    assert outputs[0] == outputs[1]
    golden = Path(__file__).parent / "golden" / "seg_leaderboard.md"
    if os.environ.get("TTA_UPDATE_GOLDEN"):
        golden.write_text(outputs[0])
    assert outputs[0] == golden.read_text(), f"differs from {golden} (TTA_UPDATE_GOLDEN=1 rewrites it)"


def test_default_store_is_the_users_and_bad_paths_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TTA_HOME", str(tmp_path / "home"))
    assert main([]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(tmp_path / "home" / "results.sqlite") in err[0]
    store = ResultStore(tmp_path / "r.sqlite")
    store.extend(ROWS)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for argv in (["--store", str(blocker / "r.sqlite")], ["--store", str(store.path), "--out", str(blocker / "s.md")],
                 ["--store", str(store.path), "--out", str(tmp_path)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and ("is a file" in err[0] or "is a folder" in err[0])
    assert not (tmp_path / "home").exists()


PLUGIN_READER = """
from tta.protocols.base import DatasetReader
from tta.registry import DATASETS

@DATASETS.register("plugin_streets_test")
class PluginStreets(DatasetReader):
    \"\"\"A plugin reader that names its 7 classes.\"\"\"
    has_severity = False
    classes = ("asphalt", "pavement", "house", "tree", "heaven", "pedestrian", "automobile")
"""


def test_a_plugin_readers_class_names_head_the_per_class_table(tmp_path):
    plugin = tmp_path / "reader_plugin.py"
    plugin.write_text(PLUGIN_READER)
    store = ResultStore(tmp_path / "r.sqlite")
    store.extend({**row, "dataset": "plugin_streets_test"} for row in ROWS)
    out = tmp_path / "seg.md"
    assert main(["--store", str(store.path), "--out", str(out), "--plugin", str(plugin)]) == 0
    text = out.read_text()
    assert "| asphalt " in text and "| automobile " in text and "| road " not in text
