"""The segmentation leaderboard: mIoU per domain (mean over seeds) and per-class IoU with class names."""

from __future__ import annotations

from tta.seg_leaderboard import main
from tta.segmentation_report import segmentation_tables
from tta.store import ResultStore


def _row(method, domain, seed, miou, iou, index):
    return {"protocol": "streets_smoke", "dataset": "streets", "model": "street_seg", "scenario": "episodic",
            "method": method, "hparams": {}, "seed": seed, "domain": domain, "domain_index": index,
            "run_key": f"{method}{seed}", "created_at": "now", "extra": {"miou": miou, "iou": iou}}


ROWS = [
    _row("source", "night", 0, 20.0, [10.0, None, 30.0, 0, 0, 0, 0], 1),
    _row("source", "night", 1, 30.0, [20.0, None, 40.0, 0, 0, 0, 0], 1),
    _row("source", "fog", 0, 40.0, [40.0] * 7, 0),
    _row("source", "fog", 1, 50.0, [50.0] * 7, 0),
    _row("alpha_bn", "night", 0, 60.0, [60.0] * 7, 1),
    _row("alpha_bn", "fog", 0, 10.0, [10.0] * 7, 0),
]


def test_tables_average_seeds_bold_the_best_and_name_the_classes():
    (text,) = segmentation_tables(ROWS).values()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| method") and "mean" in line)
    assert header.split("|")[2].strip() == "fog" and header.split("|")[3].strip() == "night"  # protocol order
    source = next(line for line in lines if line.startswith("| source") and "±" in line)
    cells = [c.strip() for c in source.split("|")[2:-1]]
    # mean: per-seed means over domains are 30 and 40 -> 35 ± 7.1; alpha_bn ties at 35: both bold
    assert cells == ["**45.0 ± 7.1**", "25.0 ± 7.1", "**35.0 ± 7.1**"]
    alpha = next(line for line in lines if line.startswith("| alpha_bn"))
    assert [c.strip() for c in alpha.split("|")[2:-1]] == ["10.0", "**60.0**", "**35.0**"]
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
