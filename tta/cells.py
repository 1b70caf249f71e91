"""Which stored rows a leaderboard may average: rows that differ only in the seed.

A result row's identity is everything that decides its number. For a leaderboard it splits
into four parts:

* the **table** (:data:`TABLE_FIELDS`): protocol, dataset, data source and fingerprint,
  corruption engine, scenario (and the domain sequence of a non-independent one), model,
  checkpoint hash, DG training method and pretrained weights, input size, batch size,
  examples per domain, severity: one table per distinct value, every one named in its caption;
* the **row label**: the method and its non-default hyperparameters;
* the **column**: the domain;
* the **seed**: the only thing a cell averages over.

So two checkpoints on one protocol are two tables, never one ``mean ± std``. Values are
compared as text (``None`` -> ``-``), so a missing field (a row written before the field
existed) is its own value and never matches a recorded one. If two rows still share table,
label, domain and seed (they differ in something rows do not record), the newer one is kept
and the table's caption counts the older ones: a cell never averages them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field as dataclass_field
from decimal import Decimal
from typing import Any

import pandas as pd

MISSING = "-"
#: row columns that are part of the table key
COLUMN_FIELDS = ["protocol", "dataset", "data_source", "data_fingerprint", "scenario", "model",
                 "checkpoint_sha256", "batch_size", "severity"]
#: ``extra`` keys that are part of the table key (absent on rows that do not need them)
EXTRA_FIELDS = ["corruption_engine", "training_method", "pretrained", "input_size", "sliding_window"]
#: derived per run: the domain order of a non-independent scenario, examples per domain
RUN_FIELDS = ["sequence", "examples"]
#: one table per distinct value of these, in this order (also the tables' sort order)
TABLE_FIELDS = ["protocol", "dataset", "data_source", "data_fingerprint", "corruption_engine", "scenario",
                "sequence", "model", "checkpoint_sha256", "training_method", "pretrained", "input_size",
                "sliding_window", "batch_size", "examples", "severity"]
assert sorted(TABLE_FIELDS) == sorted(COLUMN_FIELDS + EXTRA_FIELDS + RUN_FIELDS)


def text(value: Any) -> str:
    """A field's value as compared and shown: ``-`` when missing, JSON for lists and dicts."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return MISSING
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _independent(scenario: str) -> bool:
    """Whether a scenario's segments are independent (then the domain order is not identity)."""
    from tta import scenarios  # noqa: F401 - registers the built-in scenarios
    from tta.registry import SCENARIOS

    name = scenario.split(":", 1)[0]
    return name in SCENARIOS and SCENARIOS.get(name).independent


def _run_fields(rows: list[dict[str, Any]]) -> list[dict[str, str | None]]:
    """Per run (``run_key``): the domain sequence (non-independent scenarios) and examples per domain.

    ``examples`` is the one ``n`` of the run, or ``domain=n; ...`` (sorted) where its domains
    differ in size, so runs with different example caps never share a table.
    """
    runs: dict[Any, list[dict[str, Any]]] = {}
    for i, row in enumerate(rows):
        runs.setdefault(row.get("run_key") or f"row {i}", []).append(row)
    fields = {}
    for key, run in runs.items():
        sizes = sorted({(str(r.get("domain")), text(r.get("n"))) for r in run})
        distinct = sorted({n for _, n in sizes})
        examples = distinct[0] if len(distinct) == 1 else "; ".join(f"{d}={n}" for d, n in sizes)
        ordered = sorted(run, key=lambda r: (r.get("domain_index") is None, r.get("domain_index") or 0))
        sequence = None if _independent(str(run[0].get("scenario"))) else " > ".join(str(r.get("domain"))
                                                                                    for r in ordered)
        fields[key] = {"examples": examples, "sequence": sequence}
    return [fields[row.get("run_key") or f"row {i}"] for i, row in enumerate(rows)]


def table_fields(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row: its raw value of every :data:`TABLE_FIELDS` entry (``extra`` keys and per-run fields resolved)."""
    derived = _run_fields(rows)
    out = []
    for row, run in zip(rows, derived):
        extra = row.get("extra") if isinstance(row.get("extra"), dict) else {}
        # a column field may also come in ``extra`` (where a writer put it there); the column wins
        values = {**{f: row.get(f) if row.get(f) is not None else extra.get(f) for f in COLUMN_FIELDS},
                  **{f: extra.get(f) for f in EXTRA_FIELDS}, **run}
        out.append({f: values[f] for f in TABLE_FIELDS})
    return out


def identify(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> frame with one text column per :data:`TABLE_FIELDS` entry and ``table`` (their tuple).

    Computed from the row dicts (not from frame columns, where pandas would turn ``5`` into
    ``5.0`` next to a missing value); the raw values stay in ``raw_<field>`` for exports.
    """
    fields = table_fields(rows)
    df = pd.DataFrame(rows).reset_index(drop=True)
    for field in TABLE_FIELDS:
        df[f"raw_{field}"] = pd.Series([f[field] for f in fields], dtype=object)
        df[field] = [text(f[field]) for f in fields]
    df["table"] = [tuple(text(f[k]) for k in TABLE_FIELDS) for f in fields]
    if "domain_index" not in df:
        df["domain_index"] = None
    return df


def dedupe(df: pd.DataFrame, label: str = "label", also: tuple[str, ...] = ()) -> pd.DataFrame:
    """Keep the newest row (last in store order) per table, label, domain and seed (and ``also``); count the rest."""
    key = ["table", label, "domain", "seed", *also]
    duplicated = df.duplicated(key, keep="last")
    dropped = df[duplicated].groupby("table").size()
    kept = df[~duplicated].copy()
    kept["superseded"] = [int(dropped.get(t, 0)) for t in kept["table"]]
    return kept


def digest(key: tuple) -> str:
    """A short stable hash of a table key (for file names that must not collide)."""
    return hashlib.sha256(json.dumps(list(key)).encode()).hexdigest()[:8]


# -- naming a table: headings and captions ------------------------------------------------------------------

#: shown in every table's heading (the other table fields only where they differ between tables)
HEADING_FIELDS = ["scenario", "model", "severity"]
#: how each table field reads in headings and captions (``str.format`` with the field's text)
FIELD_TEXT = {
    "protocol": "protocol `{}`", "dataset": "dataset `{}`", "data_source": "data {}",
    "data_fingerprint": "data fingerprint {:.12}", "corruption_engine": "corruption engine version {}",
    "scenario": "scenario `{}`", "sequence": "domain order {}", "model": "model `{}`",
    "checkpoint_sha256": "checkpoint sha256 {:.12}", "training_method": "trained with `{}`",
    "pretrained": "pretrained weights `{}`", "input_size": "input size {}", "batch_size": "batch {}",
    "sliding_window": "sliding window {}",
    "examples": "{} examples per domain", "severity": "severity {}",
}
#: named in every caption even when missing ("not recorded"); the other missing fields are left out
ALWAYS_NAMED = {"dataset", "scenario", "model", "checkpoint_sha256", "data_fingerprint", "batch_size", "examples"}
#: a field's name where its value is missing ("checkpoint sha256 not recorded")
FIELD_NAME = {"checkpoint_sha256": "checkpoint sha256", "batch_size": "batch size", "examples": "examples per domain",
              "data_source": "data source", "sequence": "domain order"}


def describe(name: str, value: str) -> str:
    """``checkpoint sha256 0123456789ab``, ``batch 200``; ``data fingerprint not recorded`` when missing."""
    if value == MISSING:
        return f"{FIELD_NAME.get(name, name.replace('_', ' '))} not recorded"
    return FIELD_TEXT[name].format(value)


def heading(fields: dict[str, str], varying: set[str]) -> str:
    """Scenario, model and severity, plus every table field that differs between the protocol's tables."""
    shown = [f for f in TABLE_FIELDS if f in HEADING_FIELDS or f in varying]
    return " · ".join(describe(f, fields[f]) for f in shown if fields[f] != MISSING or f in varying)


def slug(*parts) -> str:
    """A file-name-safe, lower-case join of ``parts`` (at most 80 characters)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", "_".join(str(p) for p in parts)).strip("-").lower()[:80]


def varying_fields(tables: list[tuple]) -> set[str]:
    """The table fields whose value differs between the given table keys."""
    return {f for i, f in enumerate(TABLE_FIELDS) if len({key[i] for key in tables}) > 1}


def shared(fields: dict[str, str], skip: tuple[str, ...] = ()) -> str:
    """Every field a table's rows share, as a caption: ``*Data: <source>.* Protocol `p`, dataset `d`, ...``.

    Missing fields are left out unless :data:`ALWAYS_NAMED` (then "not recorded").
    """
    source = "*Data source not recorded.*" if fields["data_source"] == MISSING else f"*Data: {fields['data_source']}.*"
    parts = [describe(f, fields[f]) for f in TABLE_FIELDS
             if f not in (*skip, "data_source") and (fields[f] != MISSING or f in ALWAYS_NAMED)]
    text = ", ".join(parts)
    return f"{source} {text[:1].upper()}{text[1:]}"


def number_order(text: str) -> tuple:
    """Sort key of a field's text: numbers numerically (``2`` before ``16``), then the rest as text."""
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def _values(group: pd.DataFrame, column: str) -> str:
    values = sorted({str(v) for v in group[column].dropna()}, key=number_order) if column in group else []
    return ", ".join(values) if values else "unknown"


def _env_values(group: pd.DataFrame, key: str) -> str:
    envs = group["env"].dropna() if "env" in group else []
    values = sorted({str(e.get(key)) for e in envs if isinstance(e, dict)})
    return ", ".join(values) if values else "unknown"


def caption(group: pd.DataFrame, skip: tuple[str, ...] = ()) -> str:
    """Where the numbers of one table come from, in one paragraph: every field its rows share.

    The rows of a table differ only in method, domain and seed; ``skip`` names fields that
    vary on purpose (the index's severity columns) and are listed instead.
    """
    first = group.iloc[0]
    listed = "".join(f"; {f.replace('_', ' ')} {_values(group, f)}" for f in skip)
    superseded = int(group["superseded"].iloc[0]) if "superseded" in group else 0
    note = (f" {superseded} older row(s) with the same table, method, domain and seed were left out (newest kept)."
            if superseded else "")
    return (f"{shared(first, skip)}{listed}; seeds {_values(group, 'seed')} "
            f"(a cell averages only over seeds). Rows from git {_values(group, 'git_rev')}, "
            f"torch {_env_values(group, 'torch')} on {_env_values(group, 'device')} "
            f"({_env_values(group, 'device_name')}), {_env_values(group, 'threads')} thread(s).{note}")


# -- what a table may claim: means over seeds, and a best that the seed spread cannot explain ---------------


def per_seed(group: pd.DataFrame, metric: str = "error") -> pd.DataFrame:
    """(label, seed) x domains in protocol order, plus ``mean`` over domains (only for a seed that has them all).

    ``group`` is one table (rows of one key, deduplicated by :func:`dedupe`): at most one row per
    label, seed and domain.
    """
    order = group.sort_values(["domain_index", "domain"]).drop_duplicates("domain")["domain"].tolist()
    values = group.pivot_table(index=["label", "seed"], columns="domain", values=metric, aggfunc="first")[order]
    values["mean"] = values.mean(axis=1, skipna=False)
    return values


def summary(group: pd.DataFrame, metric: str = "error") -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Mean and std (ddof 1) over seeds (label x domains+mean) and the number of seeds per label."""
    by_label = per_seed(group, metric).groupby(level="label")
    return by_label.mean(), by_label.std(ddof=1), by_label.size()


@dataclass(frozen=True)
class Separation:
    """One column's verdict: the cell shown bold (``None``: no clear best) and why the others are not.

    ``within``: ``(label, delta, spread)`` for every other cell the best is ahead of by no more
    than the spread; ``unknown``: the other cells whose spread is unknown (one seed on either side).
    ``delta`` and ``spread`` are as shown (2 decimals by default).
    """

    best: str | None
    leader: str | None = None
    within: list[tuple[str, Decimal, Decimal]] = dataclass_field(default_factory=list)
    unknown: list[str] = dataclass_field(default_factory=list)


#: the bold rule in words, for captions
SEPARATION_RULE = ("bold marks the best value of a column only where it is ahead of every other method by more than "
                   "the seed spread, the larger of the two cells' std across seeds (values and std as shown); a cell "
                   "of one seed has no known spread, so a column holding one is never bold, and a method alone in its "
                   "column has nothing to beat")


def separation(mean: pd.Series, std: pd.Series, higher_is_better: bool = False, digits: int = 2) -> Separation:
    """The bold rule (:data:`SEPARATION_RULE`) on one column: label -> mean over seeds, label -> std (NaN: one seed).

    Compared as shown (rounded to ``digits``), so a reader can check every verdict from the table:
    the best is bold iff for every other cell ``other - best > max(std_best, std_other)`` (flipped
    when higher is better); equal shown values are never a clear best.
    """
    def shown(value: float) -> Decimal:
        return Decimal(f"{value:.{digits}f}")

    present = [label for label in mean.index if not pd.isna(mean[label])]
    if len(present) < 2:
        return Separation(best=None, leader=present[0] if present else None)
    sign = -1 if higher_is_better else 1
    ordered = sorted(present, key=lambda label: (sign * shown(mean[label]), label))
    leader, others = ordered[0], ordered[1:]
    within, unknown = [], []
    for other in others:
        if pd.isna(std.get(leader)) or pd.isna(std.get(other)):
            unknown.append(other)
            continue
        delta = sign * (shown(mean[other]) - shown(mean[leader]))
        spread = max(shown(std[leader]), shown(std[other]))
        if delta <= spread:
            within.append((other, delta, spread))
    return Separation(best=None if within or unknown else leader, leader=leader, within=within, unknown=unknown)


def separation_note(verdicts: dict[str, Separation], seeds: pd.Series) -> str:
    """The note under a table: per column, the pairs (best, other) within the seed spread or of unknown spread.

    ``seeds``: label -> number of seeds; where no label has two, one sentence says that no
    spread is known (rather than a pair per column).
    """
    if len(seeds) > 1 and seeds.max() < 2:
        return "One seed per method: no seed spread is known, so no value is bold."
    lines = []
    for column, verdict in verdicts.items():
        pairs = [f"{other} (Δ {delta:.2f} ≤ spread {spread:.2f})" for other, delta, spread in verdict.within]
        pairs += [f"{other} (spread unknown: one seed)" for other in verdict.unknown]
        if pairs:
            lines.append(f"`{column}`: {verdict.leader} vs {', '.join(pairs)}")
    if not lines:
        return ""
    return "Not bold, within the seed spread of the column's best: " + "; ".join(lines) + "."
