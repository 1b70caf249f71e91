"""Segmentation leaderboard: mIoU per domain and per-class IoU tables from result rows.

Rows of the ``segmentation`` task carry ``extra.miou`` (percent) and ``extra.iou`` (one
IoU per class, percent, ``None`` where a class has an empty union) — see
:mod:`tta.segmentation_metrics`. Per (protocol, model, scenario):

* an mIoU table: a row per method configuration, a column per domain (protocol order of
  the rows) and ``mean`` over domains;
* per domain, a per-class IoU table: a row per method, a column per class, then ``mIoU``.

Values are means over seeds (``±`` standard deviation, ddof 1, where there are several);
bold follows the one rule of :mod:`tta.cells` (:data:`~tta.cells.SEPARATION_RULE`): the best
value of a column only where it is ahead of every other method by more than the seed spread,
with a note under the mIoU table naming the pairs that are not. Class names come from the dataset reader's
``classes`` when it has them.

Tables follow the one grouping rule of :mod:`tta.cells`: one table per run identity but the
method and seed (checkpoint, data, batch size, examples per domain, ...), so a cell averages
only rows that differ in nothing but the seed; each table's caption names what its rows share.
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import mean, stdev

import pandas as pd
from tabulate import tabulate

from tta.cells import (MISSING, SEPARATION_RULE, TABLE_FIELDS, Separation, dedupe, describe, digest, identify,
                       separation, separation_note, shared, varying_fields)


def method_label(row: dict) -> str:
    """``cma`` or ``cma(lr=0.001)`` when the row's hyperparameters differ from the method's defaults."""
    from tta import methods  # noqa: F401 - registers the built-in methods
    from tta.registry import METHODS

    hparams = row.get("hparams") or {}
    defaults = {k: p.default for k, p in METHODS.get(row["method"]).hparams.items()} if row["method"] in METHODS else {}
    changed = {k: v for k, v in sorted(hparams.items()) if defaults.get(k) != v}
    return row["method"] + (f"({', '.join(f'{k}={v}' for k, v in changed.items())})" if changed else "")


def class_names(dataset: str | None, count: int) -> list[str]:
    from tta import protocols  # noqa: F401 - registers the dataset readers
    from tta.registry import DATASETS

    names = getattr(DATASETS.get(dataset), "classes", None) if dataset in DATASETS else None
    return list(names) if names and len(names) == count else [str(i) for i in range(count)]


def _cell(values: list[float]) -> tuple[float, str, float]:
    """(mean, text, std over seeds; NaN for one value)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, "–", math.nan
    centre = mean(values)
    spread = stdev(values) if len(values) > 1 else math.nan
    text = f"{centre:.1f}" + (f" ± {spread:.1f}" if len(values) > 1 else "")
    return centre, text, spread


def _bold_best(cells: dict[str, dict[str, tuple[float, str, float]]],
               columns: list[str]) -> tuple[list[list[str]], dict[str, Separation]]:
    """Rows sorted by the last column (best first, then by name), the bold rule of :mod:`tta.cells` applied
    per column (values as shown, one decimal); also the per-column verdicts, for the note."""
    verdicts = {c: separation(pd.Series({m: cells[m][c][0] for m in cells}, dtype=float),
                              pd.Series({m: cells[m][c][2] for m in cells}, dtype=float),
                              higher_is_better=True, digits=1) for c in columns}
    last = columns[-1]
    order = sorted(cells, key=lambda m: (math.isnan(cells[m][last][0]),
                                         -cells[m][last][0] if not math.isnan(cells[m][last][0]) else 0, m))
    table = [[m] + [f"**{cells[m][c][1]}**" if verdicts[c].best == m else cells[m][c][1] for c in columns]
             for m in order]
    return table, verdicts


def segmentation_tables(rows: list[dict]) -> dict[str, str]:
    """Markdown per table (:mod:`tta.cells`), keyed ``protocol/model/scenario/<hash of the table key>``."""
    rows = [r for r in rows if isinstance(r.get("extra"), dict) and r["extra"].get("miou") is not None]
    if not rows:
        return {}
    frame = identify(rows)
    frame["label"] = [method_label(r) for r in rows]
    frame = dedupe(frame)  # one row per table, label, domain and seed (the newest)
    tables = sorted(frame.groupby("table", sort=False), key=lambda item: item[0])
    varying = varying_fields([key for key, _ in tables])
    out = {}
    for key, group in tables:
        fields = dict(zip(TABLE_FIELDS, key))
        name = "/".join([fields["protocol"], fields["model"], fields["scenario"], digest(key)])
        out[name] = _render_group(fields, varying, [(label, rows[i]) for i, label in zip(group.index, group["label"])],
                                  int(group["superseded"].iloc[0]))
    return out


def _render_group(fields: dict[str, str], varying: set[str], group: list[tuple[str, dict]], superseded: int) -> str:
    protocol, model, scenario = fields["protocol"], fields["model"], fields["scenario"]
    domains = sorted({r["domain"] for _, r in group},
                     key=lambda d: (min(r.get("domain_index") or 0 for _, r in group if r["domain"] == d), d))
    by_method: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for label, row in group:
        by_method[label][row["domain"]].append(row)
    # the fields that tell this table from the others (and the severity, where there is one)
    told = [f for f in TABLE_FIELDS if f not in ("protocol", "model", "scenario")
            and (f in varying or (f == "severity" and fields[f] != MISSING))]
    title = f"## {protocol} — {model}, {scenario}" + "".join(f" · {describe(f, fields[f])}" for f in told)
    seeds = ", ".join(sorted({str(r.get("seed")) for _, r in group}))
    note = (f" {superseded} older row(s) with the same table, method, domain and seed were left out (newest kept)."
            if superseded else "")
    lines = [title, "", shared(fields) + f"; seeds {seeds} (a cell averages only over seeds).{note}", "",
             f"mIoU (%), higher is better; `mean` over domains; {SEPARATION_RULE}.", ""]
    cells = {}
    for method, per_domain in by_method.items():
        cells[method] = {d: _cell([r["extra"]["miou"] for r in per_domain.get(d, [])]) for d in domains}
        per_seed = defaultdict(list)
        for d in domains:
            for r in per_domain.get(d, []):
                per_seed[r.get("seed")].append(r["extra"]["miou"])
        complete = [mean(v) for v in per_seed.values() if len(v) == len(domains)]
        cells[method]["mean"] = _cell(complete)
    columns = [*domains, "mean"]
    table, verdicts = _bold_best(cells, columns)
    lines.append(tabulate(table, headers=["method", *columns], tablefmt="github"))
    seed_counts = pd.Series({m: len({r.get("seed") for rows in per_domain.values() for r in rows})
                             for m, per_domain in by_method.items()})
    spread_note = separation_note(verdicts, seed_counts)
    if spread_note:
        lines += ["", spread_note]
    group = [row for _, row in group]
    dataset = group[0].get("dataset")
    for domain in domains:
        count = max(len(r["extra"].get("iou") or []) for r in group if r["domain"] == domain)
        names = class_names(dataset, count)
        per_class = {}
        for method, per_domain in by_method.items():
            domain_rows = per_domain.get(domain, [])
            if not domain_rows:
                continue
            per_class[method] = {name: _cell([r["extra"]["iou"][i] if r["extra"].get("iou") and
                                              r["extra"]["iou"][i] is not None else math.nan for r in domain_rows])
                                 for i, name in enumerate(names)}
            per_class[method]["mIoU"] = _cell([r["extra"]["miou"] for r in domain_rows])
        lines += ["", f"### {domain}: per-class IoU (%)", ""]
        lines.append(tabulate(_bold_best(per_class, [*names, "mIoU"])[0], headers=["method", *names, "mIoU"],
                              tablefmt="github"))
    return "\n".join(lines) + "\n"
