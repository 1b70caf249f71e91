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
                "sequence", "model", "checkpoint_sha256", "training_method", "pretrained", "input_size", "sliding_window",
                "batch_size", "examples", "severity"]
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


def dedupe(df: pd.DataFrame, label: str = "label") -> pd.DataFrame:
    """Keep the newest row (last in store order) per table, label, domain and seed; count the rest."""
    key = ["table", label, "domain", "seed"]
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
