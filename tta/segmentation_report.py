"""Segmentation leaderboard: mIoU per domain and per-class IoU tables from result rows.

Rows of the ``segmentation`` task carry ``extra.miou`` (percent) and ``extra.iou`` (one
IoU per class, percent, ``None`` where a class has an empty union) — see
:mod:`tta.segmentation_metrics`. Per (protocol, model, scenario):

* an mIoU table: a row per method configuration, a column per domain (protocol order of
  the rows) and ``mean`` over domains;
* per domain, a per-class IoU table: a row per method, a column per class, then ``mIoU``.

Values are means over seeds (``±`` standard deviation, ddof 1, where there are several);
the best value of each column is bold. Class names come from the dataset reader's
``classes`` when it has them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import mean, stdev

from tabulate import tabulate

GROUP_KEYS = ("protocol", "model", "scenario")


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


def _cell(values: list[float]) -> tuple[float, str]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, "–"
    centre = mean(values)
    text = f"{centre:.1f}" + (f" ± {stdev(values):.1f}" if len(values) > 1 else "")
    return centre, text


def _bold_best(cells: dict[str, dict[str, tuple[float, str]]], columns: list[str]) -> list[list[str]]:
    best = {c: max((cells[m][c][0] for m in cells if not math.isnan(cells[m][c][0])), default=math.nan) for c in columns}
    body = []
    for method in sorted(cells, key=lambda m: -cells[m][columns[-1]][0] if not math.isnan(cells[m][columns[-1]][0]) else 0):
        body.append([method] + [f"**{cells[method][c][1]}**" if cells[method][c][0] == best[c] else cells[method][c][1]
                                for c in columns])
    return body


def segmentation_tables(rows: list[dict]) -> dict[str, str]:
    """Markdown per (protocol, model, scenario) group, keyed ``protocol/model/scenario``."""
    rows = [r for r in rows if isinstance(r.get("extra"), dict) and r["extra"].get("miou") is not None]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row.get(k) for k in GROUP_KEYS)].append(row)
    out = {}
    for key, group in sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))):
        out["/".join(map(str, key))] = _render_group(key, group)
    return out


def _render_group(key: tuple, group: list[dict]) -> str:
    protocol, model, scenario = key
    domains = sorted({r["domain"] for r in group}, key=lambda d: min(r.get("domain_index") or 0 for r in group
                                                                   if r["domain"] == d))
    by_method: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in group:
        by_method[method_label(row)][row["domain"]].append(row)
    lines = [f"## {protocol} — {model}, {scenario}", "", "mIoU (%), higher is better; `mean` over domains.", ""]
    cells = {}
    for method, per_domain in by_method.items():
        cells[method] = {d: _cell([r["extra"]["miou"] for r in per_domain.get(d, [])]) for d in domains}
        seeds = defaultdict(list)
        for d in domains:
            for r in per_domain.get(d, []):
                seeds[r.get("seed")].append(r["extra"]["miou"])
        complete = [mean(v) for v in seeds.values() if len(v) == len(domains)]
        cells[method]["mean"] = _cell(complete)
    columns = [*domains, "mean"]
    lines.append(tabulate(_bold_best(cells, columns), headers=["method", *columns], tablefmt="github"))
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
        lines.append(tabulate(_bold_best(per_class, [*names, "mIoU"]), headers=["method", *names, "mIoU"],
                              tablefmt="github"))
    return "\n".join(lines) + "\n"
