"""Two views across a protocol's leaderboard tables: batch size, and cost on one machine.

Both are rendered by :func:`tta.leaderboard.render` into ``<protocol>.md`` after the tables,
from the same deduplicated frame (one row per table key, method label, domain and seed; see
:mod:`tta.cells`). Neither averages anything the tables do not: a cell still averages seeds only.

**Batch size.** Tables whose keys differ in the batch size and nothing else (same checkpoint,
data, scenario, examples per domain, severity, ...) form one view: a row per method label, a
column per batch size (ascending), each cell the error averaged over the domains every one of
those tables has, per seed, then over seeds (± std across seeds, ddof 1). Bold follows
:func:`tta.cells.separation` per column. A view exists only where a key has two or more batch sizes.

**Cost.** Per table key but the severity, and per machine: rows compare only with rows of the
same ``env`` (the whole environment record of :func:`tta.environment.describe`, compared as
JSON text: device, device name, threads, CPU count, torch, host, ...). Per method label:

* ``images/s`` = sum of ``n`` / sum of ``method_s`` over its rows there (every domain, severity
  and seed): the time inside the method's forward and adaptation only (the runner's ``method_s``,
  :meth:`tta.runner.Run.run_segment`), not data loading;
* ``cost ×`` = ``images/s`` of the bare model (the ``source`` label) / the method's ``images/s``:
  1.00 for ``source``, 2.40 for a method 2.4 times slower; ``–`` without ``source`` rows there;
* ``s / domain``: mean ``method_s`` per row; ``peak MB``: the largest ``peak_mem_mb``. On CUDA
  that is the peak allocated by tensors during the segment; on CPU the process's peak resident
  size (ru_maxrss), which includes whatever the process ran before: comparable only loosely;
* ``error``: the mean over domains per seed, averaged over the severities every method of the
  view has there, then over seeds (± std across seeds);
* ``Pareto``: ``yes`` where no other method has both lower-or-equal cost and lower-or-equal error,
  one of them strictly (:func:`pareto_front`).

A cost view exists where some row there records ``method_s`` and ``n``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from tta.cells import (MISSING, TABLE_FIELDS, caption, dedupe, describe, digest, heading, number_order, per_seed,
                       separation, separation_note, slug, varying_fields)

SOURCE = "source"


def _without(key: tuple, field: str) -> tuple:
    at = TABLE_FIELDS.index(field)
    return key[:at] + key[at + 1:]


def _grouped(df: pd.DataFrame, field: str) -> list[tuple[tuple, pd.DataFrame]]:
    """The frame's rows grouped by table key without ``field``, in key order."""
    df = df.assign(view_key=[_without(key, field) for key in df["table"]])
    return sorted(df.groupby("view_key", sort=False), key=lambda item: item[0])


def _cell(mean: float, std: float, seeds: int, bold: bool) -> str:
    if pd.isna(mean):
        return ""
    text = f"{mean:.2f}" + (f" ± {std:.2f}" if seeds > 1 and not pd.isna(std) else "")
    return f"**{text}**" if bold else text


# -- batch size --------------------------------------------------------------------------------------------


def batch_size_grid(group: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """Mean, std and seed count (label x batch size, ascending) of the per-seed mean over common domains.

    ``group``: the rows of tables that differ only in the batch size. Also returns the common
    domains (protocol order).
    """
    tables = {batch: table_ for batch, table_ in group.groupby("batch_size")}
    seeds = {batch: per_seed(table_).drop(columns="mean") for batch, table_ in tables.items()}
    common = [d for d in next(iter(seeds.values())).columns if all(d in s.columns for s in seeds.values())]
    means = pd.concat({batch: s[common].mean(axis=1, skipna=False) for batch, s in seeds.items()},
                      names=["batch_size"]).dropna()
    stats = means.groupby(level=["label", "batch_size"]).agg(["mean", "std", "size"])
    order = sorted(tables, key=number_order)
    return (stats["mean"].unstack("batch_size").reindex(columns=order),
            stats["std"].unstack("batch_size").reindex(columns=order),
            stats["size"].unstack("batch_size").reindex(columns=order), common)


def batch_size_sections(protocol: str, by_protocol: pd.DataFrame, out: Path | None, plots: bool) -> list[str]:
    """Markdown sections (and PNG plots with ``out``): one per table key with two or more batch sizes."""
    parts = []
    groups = [(key, group) for key, group in _grouped(by_protocol, "batch_size") if group["batch_size"].nunique() > 1]
    varying = varying_fields(list(by_protocol["table"])) - {"batch_size"}
    for key, group in groups:
        fields = dict(zip(TABLE_FIELDS, group["table"].iloc[0]))
        mean, std, count, common = batch_size_grid(group)
        verdicts = {batch: separation(mean[batch], std[batch]) for batch in mean.columns}
        text = pd.DataFrame(index=mean.index, dtype=object)
        for batch in mean.columns:
            text[f"batch {batch}"] = [_cell(mean.at[label, batch], std.at[label, batch],
                                            0 if pd.isna(count.at[label, batch]) else int(count.at[label, batch]),
                                            verdicts[batch].best == label) for label in mean.index]
        text.index.name = "method"
        text = text.sort_index()
        seeds = count.max(axis=1).fillna(0).astype(int)
        title = heading({**fields, "batch_size": MISSING}, varying - {"batch_size"})
        parts.append(f"## Batch size · {title}\n")
        parts.append(caption(group, skip=("batch_size",)) + f" Values: error averaged over the {len(common)} domains "
                     "every batch size has, per seed, then over seeds (± std across seeds).\n")
        parts.append(text.to_markdown(disable_numparse=True) + "\n")
        note = separation_note({f"batch {b}": v for b, v in verdicts.items()}, seeds)
        if note:
            parts.append(note + "\n")
        if out is not None and plots:
            from tta.plots import batch_size_plot

            name = f"{protocol}_{slug(fields['scenario'], fields['model'], 'sev', fields['severity'])}_{digest(key)}"
            name += "_batch.png"
            batch_size_plot(mean, std, f"{protocol} · {title}".replace("`", ""), out / name)
            parts.append(f"![error vs batch size]({name})\n")
    return parts


# -- cost ----------------------------------------------------------------------------------------------------


def pareto_front(points: pd.DataFrame) -> set[str]:
    """Labels (index) of ``points`` (columns ``cost``, ``error``) that no other point dominates.

    ``a`` dominates ``b`` when ``a`` is no worse in both (cost and error, lower is better) and
    strictly better in one; equal points are both on the front; rows with a missing value are
    never on it.
    """
    finite = points.dropna(subset=["cost", "error"])
    front = set()
    for label, p in finite.iterrows():
        dominated = ((finite["cost"] <= p["cost"]) & (finite["error"] <= p["error"])
                     & ((finite["cost"] < p["cost"]) | (finite["error"] < p["error"])))
        if not dominated.any():
            front.add(label)
    return front


def machine_key(env) -> str:
    """The ``env`` record as compared: sorted JSON (``-`` when missing)."""
    return json.dumps(env, sort_keys=True) if isinstance(env, dict) else MISSING


def describe_machine(env) -> str:
    """``cpu (x86_64), 4 thread(s) of 16 CPUs, torch 2.1`` from an ``env`` record."""
    if not isinstance(env, dict):
        return "machine not recorded"
    return (f"{env.get('device')} ({env.get('device_name')}), {env.get('threads')} thread(s) of "
            f"{env.get('cpu_count')} CPUs, torch {env.get('torch')}")


def _error(group: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per label: mean, std and count over seeds of the per-seed error over domains and the common severities.

    The common severities are those every label with an error has (a seed's mean counts only
    where it has every domain of that severity's table).
    """
    by_severity = pd.concat({severity: per_seed(table_)["mean"] for severity, table_ in group.groupby("severity")},
                            axis=1)
    has = by_severity.notna().groupby(level="label").any()
    has = has[has.any(axis=1)]
    common = [severity for severity in sorted(by_severity.columns, key=number_order) if has[severity].all()]
    if not common:
        return pd.DataFrame(columns=["mean", "std", "size"], dtype=float), []
    seed_error = by_severity[common].mean(axis=1, skipna=False).dropna()
    return seed_error.groupby(level="label").agg(["mean", "std", "size"]), common


def cost_table(group: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One machine's rows of one view: per label ``seeds, error, error_std, images_per_s, cost, method_s,
    peak_mem_mb, pareto`` (numbers), sorted by cost then label; and the severities the error is over."""
    timed = group.assign(n_=pd.to_numeric(group["n"], errors="coerce"),
                         method_s_=pd.to_numeric(group["method_s"], errors="coerce"),
                         peak_=pd.to_numeric(group.get("peak_mem_mb"), errors="coerce"))
    ok = timed[(timed["method_s_"] > 0) & timed["n_"].notna()]
    # exactly rounded sums (math.fsum): the same rows in any store order give the same digits
    seconds = ok.groupby("label")["method_s_"].agg(math.fsum)
    throughput = ok.groupby("label")["n_"].agg(math.fsum) / seconds
    error, severities = _error(group)
    labels = sorted(set(group["label"]))
    table_ = pd.DataFrame(index=pd.Index(labels, name="method"))
    table_["seeds"] = [int(group[group["label"] == label]["seed"].nunique()) for label in labels]
    table_["error"] = error["mean"].reindex(labels)
    table_["error_std"] = error["std"].reindex(labels)
    table_["images_per_s"] = throughput.reindex(labels)
    source = table_["images_per_s"].get(SOURCE, float("nan"))
    table_["cost"] = source / table_["images_per_s"]
    table_["method_s"] = (seconds / ok.groupby("label").size()).reindex(labels)
    table_["peak_mem_mb"] = timed.groupby("label")["peak_"].max().reindex(labels)
    front = pareto_front(table_)
    table_["pareto"] = [label in front for label in labels]
    order = sorted(labels, key=lambda label: (pd.isna(table_.at[label, "cost"]), table_.at[label, "cost"]
                                              if not pd.isna(table_.at[label, "cost"]) else 0.0, label))
    return table_.loc[order], severities


def _fixed(value: float, digits: int) -> str:
    return "–" if pd.isna(value) else f"{value:.{digits}f}"


def cost_sections(protocol: str, by_protocol: pd.DataFrame, out: Path | None, plots: bool) -> list[str]:
    """Markdown sections (and error-vs-cost PNGs with ``out``): one per table key but the severity, per machine.

    ``by_protocol``: the protocol's rows before :func:`tta.cells.dedupe` (:func:`tta.leaderboard.labelled`): here
    the newest row is kept per table, label, domain, seed *and machine*, so a rerun on another machine
    is a measurement of that machine, not a replacement.
    """
    parts = []
    if "method_s" not in by_protocol or "n" not in by_protocol:
        return parts
    by_protocol = dedupe(by_protocol.assign(machine=[machine_key(e) for e in by_protocol.get("env", [None] * len(
        by_protocol))]), also=("machine",))
    varying = varying_fields(list(by_protocol["table"])) - {"severity"}
    for key, view in _grouped(by_protocol, "severity"):
        for machine, group in sorted(view.groupby("machine", sort=False), key=lambda item: item[0]):
            timed = pd.to_numeric(group["method_s"], errors="coerce") > 0
            if not timed.any():
                continue
            fields = dict(zip(TABLE_FIELDS, group["table"].iloc[0]))
            numbers, severities = cost_table(group)
            text = pd.DataFrame({
                "seeds": numbers["seeds"].astype(str),
                "error": [_cell(numbers.at[label, "error"], numbers.at[label, "error_std"], numbers.at[label, "seeds"],
                                False) or "–" for label in numbers.index],
                "images/s": numbers["images_per_s"].map(lambda v: _fixed(v, 1)),
                "cost ×": numbers["cost"].map(lambda v: _fixed(v, 2)),
                "s / domain": numbers["method_s"].map(lambda v: _fixed(v, 3)),
                "peak MB": numbers["peak_mem_mb"].map(lambda v: _fixed(v, 1)),
                "Pareto": numbers["pareto"].map(lambda on: "yes" if on else ""),
            }, index=numbers.index)
            env = group["env"].iloc[0] if "env" in group else None
            title = heading({**fields, "severity": MISSING}, varying)
            graded = [s for s in severities if s != MISSING]
            over = (f", averaged over {describe('severity', ', '.join(graded))} (those every method has here)"
                    if graded else "")
            source = ("" if SOURCE in numbers.index and not pd.isna(numbers.at[SOURCE, "images_per_s"]) else
                      f" No `{SOURCE}` rows on this machine: no relative cost.")
            parts.append(f"## Cost · {title} · machine {digest((machine,))}\n")
            parts.append(caption(group, skip=("severity",) if graded else ()) +
                         f" Machine {digest((machine,))}: {describe_machine(env)}; only rows of this machine are "
                         f"compared. Per method: error = mean over domains per seed{over}, then over seeds; images/s = "
                         f"images / seconds inside the method (adaptation and forward, not data loading), over every "
                         f"row here; cost × = `{SOURCE}` images/s / method images/s; s / domain = mean method "
                         f"seconds per domain; peak MB = largest peak memory (CUDA: tensors allocated in the segment; "
                         f"CPU: the process's peak resident size, which counts everything it ran before); Pareto: no "
                         f"other method is both cheaper-or-equal and lower-or-equal in error.{source}\n")
            parts.append(text.to_markdown(disable_numparse=True) + "\n")
            if out is not None and plots and numbers["cost"].notna().any():
                from tta.plots import cost_plot

                name = f"{protocol}_{slug(fields['scenario'], fields['model'])}_{digest(key + (machine,))}_cost.png"
                cost_plot(numbers, f"{protocol} · {title}".replace("`", ""), out / name)
                parts.append(f"![error vs cost]({name})\n")
    return parts
