"""``tta.leaderboard --compare A B``: per-cell differences B - A, with the seed spread of both sides.

A *cell* is what a leaderboard table shows: one table key (:data:`tta.cells.TABLE_FIELDS`),
one method label, one domain (or ``mean`` over domains); its value is the mean error over
seeds, its spread the std across seeds (ddof 1; unknown with one seed). A side is either a
result store (or a git revision of rows in one: cells computed from rows) or what
``tta.leaderboard`` wrote: a ``<protocol>.json`` file, or a leaderboard folder (every
``*.json`` in it). Cells are matched on the whole key, so a changed checkpoint, data, batch
size or example count is never compared as if it were the same cell; cells on one side only
are listed.

Per cell in both: A and B (``mean ± std``), seeds on each side, ``Δ = B - A``, the spread
(the larger of the two stds; ``–`` where either side has one seed) and whether ``|Δ|``
exceeds it. All compared as shown (two decimals), like the bold rule of :mod:`tta.cells`.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pandas as pd

from tta.cells import TABLE_FIELDS, heading, summary, text, varying_fields
from tta.errors import UserError

KEY = ["table", "label", "domain"]
COLUMNS = [*KEY, "mean", "std", "seeds", "order"]


def cells_from_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A leaderboard frame (:func:`tta.leaderboard.frame`) -> one record per cell with a value: ``COLUMNS``."""
    out = []
    for key, group in sorted(df.groupby("table", sort=False), key=lambda item: item[0]):
        mean, std, seeds = summary(group)
        for label in sorted(mean.index):
            for order, domain in enumerate(mean.columns):
                if not pd.isna(mean.at[label, domain]):  # a method without every domain has no ``mean``
                    out.append((key, label, domain, mean.at[label, domain], std.at[label, domain], int(seeds[label]),
                                order))
    return pd.DataFrame(out, columns=COLUMNS)


def cells_from_records(records: list[dict]) -> pd.DataFrame:
    """Exported records (``<protocol>.json`` of :func:`tta.leaderboard.records`) -> one record per cell."""
    out, seen = [], {}
    for record in records:
        key = tuple(text(record.get(field)) for field in TABLE_FIELDS)
        order = seen.setdefault((key, record["label"]), [0])
        if record.get("error_mean") is None:
            continue
        out.append((key, record["label"], record["domain"], _float(record.get("error_mean")),
                    _float(record.get("error_std")), int(record.get("seeds") or 0), order[0]))
        order[0] += 1
    return pd.DataFrame(out, columns=COLUMNS)


def _float(value) -> float:
    return float("nan") if value is None else float(value)


def read_exports(path: Path) -> pd.DataFrame:
    """A ``<protocol>.json`` file, or every ``*.json`` in a leaderboard folder -> cells."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"--compare {str(path)!r}: a folder without leaderboard JSON files")
    records = []
    for file in files:
        try:
            loaded = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"--compare {str(file)!r}: not a leaderboard JSON file ({exc})") from None
        if not isinstance(loaded, list) or not all(isinstance(r, dict) and {"label", "domain"} <= r.keys()
                                                   for r in loaded):
            raise UserError(f"--compare {str(file)!r}: not a leaderboard JSON file (records with label and domain)")
        records.extend(loaded)
    return cells_from_records(records)


def compare_cells(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(cells in both, with ``A``, ``B``, ``std_A``, ``std_B``, ``seeds_A``, ``seeds_B``, ``delta``; only A; only B)."""
    merged = a.merge(b, on=KEY, how="outer", suffixes=("_A", "_B"), indicator=True)
    both = merged[merged["_merge"] == "both"].rename(columns={"mean_A": "A", "mean_B": "B"})
    both = both.assign(delta=both["B"] - both["A"]).drop(columns="_merge").reset_index(drop=True)
    only = [merged[merged["_merge"] == side].drop(columns="_merge").reset_index(drop=True)
            for side in ("left_only", "right_only")]
    return both, only[0], only[1]


def _shown(value: float, digits: int = 2) -> Decimal:
    return Decimal(f"{value:.{digits}f}")


def _side(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.2f}" + ("" if pd.isna(std) else f" ± {std:.2f}")


def _signed(value: Decimal) -> str:
    return "0.00" if value == 0 else f"{value:+.2f}"


def cell_verdict(row) -> tuple[str, str, str]:
    """Δ, spread and whether ``|Δ| > spread``, as shown: (``+1.25``, ``0.50``, ``yes``/``no``/``–``)."""
    if pd.isna(row["A"]) or pd.isna(row["B"]):
        return "–", "–", "–"
    delta = _shown(row["B"]) - _shown(row["A"])
    if pd.isna(row["std_A"]) or pd.isna(row["std_B"]):
        return _signed(delta), "–", "–"
    spread = max(_shown(row["std_A"]), _shown(row["std_B"]))
    return _signed(delta), f"{spread:.2f}", "yes" if abs(delta) > spread else "no"


def _ordered(group: pd.DataFrame, side: str) -> pd.DataFrame:
    """Rows by label, then domain in that side's protocol order (``mean`` last)."""
    return group.sort_values(["label", f"order_{side}", "domain"], kind="stable")


def _listing(only: pd.DataFrame, side: str, varying: set[str]) -> list[str]:
    """``- <table heading> · `label`: domain, domain, ...`` per table and label."""
    lines = []
    for key, group in sorted(only.groupby("table", sort=False), key=lambda item: item[0]):
        for label, cells in _ordered(group, side).groupby("label", sort=True):
            lines.append(f"- {heading(dict(zip(TABLE_FIELDS, key)), varying)} · `{label}`: "
                         + ", ".join(cells["domain"]))
    return lines


def compare_markdown(a_name: str, a: pd.DataFrame, b_name: str, b: pd.DataFrame) -> str:
    """The ``--compare`` report: per table, a row per cell in both; then the cells on one side only."""
    both, only_a, only_b = compare_cells(a, b)
    if both.empty:
        raise UserError(f"{a_name} and {b_name} have no cell (same protocol, data, checkpoint, batch, method, domain, "
                        f"...) in common ({len(only_a)} cells only in A, {len(only_b)} only in B)")
    parts = [f"# Comparison: A = {a_name}, B = {b_name}\n",
             f"Error (%), mean over seeds ± std across seeds (ddof 1), on the {len(both)} cells present in both "
             f"({len(only_a)} only in A, {len(only_b)} only in B; listed at the end). Δ = B - A (negative: B is "
             "better); spread = the larger of the two cells' std (– where either side has one seed); `beyond "
             "spread`: |Δ| > spread. Compared as shown (two decimals).\n"]
    tables = sorted(set(a["table"]) | set(b["table"]))
    varying = varying_fields(tables) | {"protocol"}
    for key, group in sorted(both.groupby("table", sort=False), key=lambda item: item[0]):
        rows = []
        for _, cell in _ordered(group, "A").iterrows():
            delta, spread, beyond = cell_verdict(cell)
            rows.append({"method": cell["label"], "domain": cell["domain"], "A": _side(cell["A"], cell["std_A"]),
                         "B": _side(cell["B"], cell["std_B"]),
                         "seeds A/B": f"{int(cell['seeds_A'])}/{int(cell['seeds_B'])}",
                         "Δ": delta, "spread": spread, "beyond spread": beyond})
        parts.append(f"## {heading(dict(zip(TABLE_FIELDS, key)), varying)}\n")
        parts.append(pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) + "\n")
    for name, only in (("A", only_a), ("B", only_b)):
        if len(only):
            parts.append(f"## Only in {name} ({len(only)} cells)\n")
            parts.append("\n".join(_listing(only, name, varying)) + "\n")
    return "\n".join(parts)
