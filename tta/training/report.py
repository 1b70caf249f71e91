"""The DG leaderboard: training method x test-time method, a column per target domain.

Each cell is the target-domain **accuracy** (%, = 100 - error) of the model trained with
the other domains as sources (selected by training-domain validation), with the
test-time method applied; ``mean ± std`` over seeds (std with ddof = 1 where there are
several seeds). ``avg`` averages the targets within each seed first, then over seeds.

Rows come from the result store: a test-time run on a DG checkpoint is recognized by the
``summary.json`` that :mod:`tta.training.loop` writes next to ``best.pt`` (it names the
training method, target and training seed), so ``tta.run --checkpoint .../best.pt``
results land in this table too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd


def dg_records(rows: list[dict[str, Any]], protocol: str) -> list[dict[str, Any]]:
    """Store rows of ``protocol`` on DG checkpoints -> ``{train_method, tta_method, target, seed, accuracy}``."""
    records = []
    for row in rows:
        if row["protocol"] != protocol or not row.get("checkpoint"):
            continue
        summary_path = Path(row["checkpoint"]).parent / "summary.json"
        if not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text())
        if summary.get("target") != row["domain"]:
            continue  # a DG model scored on one of its own source domains
        records.append({"train_method": summary["method"], "tta_method": row["method"], "target": row["domain"],
                        "seed": summary["seed"], "accuracy": 100.0 - row["error"], "checkpoint": row["checkpoint"]})
    return records


def dg_table(records: list[dict[str, Any]], targets: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Rows (training method, TTA method) x columns targets + avg, cells ``"mean ± std"`` of accuracy."""
    df = pd.DataFrame(records)
    present = [t for t in targets if t in set(df["target"])]
    per_seed = df.pivot_table(index=["train_method", "tta_method", "seed"], columns="target", values="accuracy",
                              aggfunc="last")[present]
    per_seed["avg"] = per_seed.mean(axis=1, skipna=False)
    grouped = per_seed.groupby(level=["train_method", "tta_method"])
    mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()
    cells = pd.DataFrame(index=mean.index, columns=mean.columns, dtype=object)
    for column in mean.columns:
        for index in mean.index:
            m, s, n = mean.at[index, column], std.at[index, column], count.at[index, column]
            cells.at[index, column] = "—" if pd.isna(m) else (f"{m:.1f} ± {s:.1f}" if n > 1 else f"{m:.1f}")
    cells["seeds"] = count.max(axis=1)
    return cells.reset_index().rename(columns={"train_method": "training", "tta_method": "test-time"})


def to_markdown(table: pd.DataFrame, title: str) -> str:
    return f"## {title}\n\n" + table.to_markdown(index=False) + "\n"
