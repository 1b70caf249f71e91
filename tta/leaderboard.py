"""``python -m tta.leaderboard``: render the result store into leaderboards people read.

    python -m tta.leaderboard [--store FILE] [--out DIR] [--no-plots]
    python -m tta.leaderboard --compare A B      # A, B: stores, leaderboard JSON files or folders,
                                                 # or git revisions of rows in --store

One table per run identity but the method and seed (:mod:`tta.cells`): protocol, dataset,
data source and fingerprint, scenario, model and checkpoint hash, DG training method and
pretrained weights, input size, batch size, examples per domain, severity. Two checkpoints
are two tables, never one mean. In a table: a row per method configuration (method plus its
non-default hyperparameters), a column per domain in protocol order, ``mean`` (over domains)
and ``avg rank`` (mean over domains of the method's rank in that domain). Values are the
error (%) averaged over seeds, the only thing a cell averages over; ``±`` the standard
deviation across seeds (ddof 1) where there are several. The best value of a column is bold
only where it is ahead of every other method by more than the seed spread (the larger of
the two cells' std; :func:`tta.cells.separation`), and a note under the table names the
pairs within it; ``rank`` orders the methods by ``mean``. Each table's caption names every
field its rows share, the seeds, and the software, device and git revision(s) of the rows.
After the tables, ``<protocol>.md`` holds the batch-size and cost views of
:mod:`tta.leaderboard_views` (error vs batch size, all else equal; images/s relative to the
bare model on the same machine, peak memory, and error vs cost with the Pareto front).

Defaults never touch tracked files: ``--store`` is the user store
(:func:`tta.paths.user_store`) and ``--out`` the user's leaderboard folder
(:func:`tta.paths.user_leaderboard_dir`); the committed ``leaderboard/`` is written only by
``benchmarks/make_leaderboard.py``, which names both. The same store gives byte-identical
markdown, CSV and JSON.

Written to ``<out>/``: ``README.md`` (index: per protocol, error per severity and method,
with plots), ``<protocol>.md`` (the full tables, with per-domain bar plots, then the views), and
``<protocol>.csv`` / ``<protocol>.json`` (the aggregated numbers, one record per method x
domain x table) and PNG plots. ``--compare A B`` prints B - A for every cell present in both,
with the seed spread of both sides, and lists the cells only one side has
(:mod:`tta.leaderboard_compare`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from tta.cells import (MISSING, SEPARATION_RULE, TABLE_FIELDS, caption, dedupe, digest, heading, identify, per_seed,
                       separation, separation_note, slug, summary, varying_fields)
from tta.cli import Parser, guarded
from tta.leaderboard_compare import cells_from_frame, cells_from_records, compare_markdown, read_exports
from tta.leaderboard_views import batch_size_sections, cost_sections
from tta.errors import UserError
from tta.paths import user_leaderboard_dir, user_store
from tta.store import ResultStore
from tta.writable import existing_file, output_dir



def method_label(method: str, hparams: dict, defaults: dict | None) -> str:
    """``alpha_bn`` or ``alpha_bn(alpha=0.3)`` when hyperparameters differ from the defaults."""
    changed = {k: v for k, v in sorted((hparams or {}).items()) if defaults is None or defaults.get(k) != v}
    return method + (f"({', '.join(f'{k}={v}' for k, v in changed.items())})" if changed else "")


def _defaults(method: str) -> dict | None:
    from tta import plugins
    from tta import runner  # noqa: F401 - registers built-in methods
    from tta.registry import METHODS

    if method not in METHODS:
        plugins.load_entry_points()
    if method not in METHODS:
        return None
    return {k: p.default for k, p in METHODS.get(method).hparams.items()}


def labelled(rows: list[dict]) -> pd.DataFrame:
    """Rows -> frame with ``label`` and the table key (:mod:`tta.cells`), every row kept."""
    df = identify(rows)
    defaults = {m: _defaults(m) for m in df["method"].unique()}
    df["label"] = [method_label(m, h, defaults[m]) for m, h in zip(df["method"], df["hparams"])]
    return df


def frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> one record per cell and seed (the newest), with ``label`` and the table key (:mod:`tta.cells`)."""
    return dedupe(labelled(rows))


def ranks(mean: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """``rank`` (1 = lowest mean error; ties share the lower rank) and ``avg rank`` over domains."""
    domains = [c for c in mean.columns if c != "mean"]
    return (mean["mean"].rank(method="min", na_option="bottom").astype(int),
            mean[domains].rank(method="min").mean(axis=1))


def table(group: pd.DataFrame, metric: str = "error") -> tuple[pd.DataFrame, str]:
    """The markdown table of one group (rank, seeds, one column per domain, mean, avg rank) and its note.

    Bold follows :func:`tta.cells.separation`; the note (:func:`tta.cells.separation_note`) names
    the pairs within the seed spread.
    """
    mean, std, seeds = summary(group, metric)
    rank, avg_rank = ranks(mean)
    verdicts = {column: separation(mean[column], std[column]) for column in mean.columns}
    cells = pd.DataFrame(index=mean.index, columns=mean.columns, dtype=object)
    for column in mean.columns:
        for label in mean.index:
            value = mean.at[label, column]
            text = "" if pd.isna(value) else f"{value:.2f}"
            if text and seeds[label] > 1 and not pd.isna(std.at[label, column]):
                text += f" ± {std.at[label, column]:.2f}"
            if text and verdicts[column].best == label:
                text = f"**{text}**"
            cells.at[label, column] = text
    cells.insert(0, "seeds", seeds)
    cells.insert(0, "rank", rank)
    cells["avg rank"] = avg_rank.map(lambda r: f"{r:.2f}")
    cells.index.name = "method"
    return cells.loc[sorted(mean.index, key=lambda label: (rank[label], label))], separation_note(verdicts, seeds)


def records(group: pd.DataFrame, metric: str = "error") -> pd.DataFrame:
    """Long format for CSV/JSON: one record per method x domain (and ``mean``) of one table."""
    mean, std, seeds = summary(group, metric)
    rank, avg_rank = ranks(mean)
    first = group.iloc[0]
    out = []
    for label in sorted(mean.index):
        for domain in mean.columns:
            out.append({**{k: first[f"raw_{k}"] for k in TABLE_FIELDS}, "method": label.split("(")[0], "label": label,
                        "domain": domain, f"{metric}_mean": mean.at[label, domain],
                        f"{metric}_std": std.at[label, domain], "seeds": int(seeds[label]),
                        "rank": int(rank[label]), "avg_rank": float(avg_rank[label])})
    return pd.DataFrame(out)


def describe_protocol(protocol: str) -> str:
    """The spec's one-line description, when the protocol is still known to this checkout."""
    from tta.protocols import find_spec

    try:
        return find_spec(protocol).description
    except UserError:
        return "(protocol spec not found in this checkout)"


def render(rows: list[dict], out: Path | None = None, plots: bool = True,
           regenerate: str | None = None) -> dict[str, str]:
    """Protocol name -> markdown document; with ``out``, also ``README.md``, CSV, JSON and PNG plots.

    Deterministic: the same rows give byte-identical markdown, CSV and JSON (tables sorted by
    their key, methods by rank then name, fixed float formats, no timestamps).
    """
    if not rows:
        return {}
    every = labelled(rows)  # the cost view keeps one row per cell, seed and machine (env)
    df = dedupe(every)
    docs: dict[str, str] = {}
    index = ["# Leaderboards\n", "Generated by `python -m tta.leaderboard` from the result store"
             + (f"; regenerate with `{regenerate}`" if regenerate else "")
             + ". Error (%), lower is better: mean over seeds ± std across seeds (ddof 1). A cell averages "
               "only rows that differ in nothing but the seed.\n"]
    for protocol, by_protocol in df.groupby("protocol", sort=True):
        parts = [f"# {protocol}\n", f"{describe_protocol(protocol)}.\n",
                 "Error (%) per domain, lower is better; mean over seeds (± std across seeds, "
                 f"ddof 1); {SEPARATION_RULE}; `rank` by mean, `avg rank` = mean over domains of the per-domain "
                 "rank. One table per checkpoint, data, scenario, batch size, examples per domain and severity: "
                 "a cell averages only rows that differ in nothing but the seed. "
                 "Generated by `python -m tta.leaderboard` from the result store.\n"]
        exported = []
        index.append(f"## {protocol}\n\n{describe_protocol(protocol)}.\n")
        groups = sorted(by_protocol.groupby("table", sort=False), key=lambda item: item[0])
        varying = varying_fields([key for key, _ in groups])
        for key, group in groups:
            fields = dict(zip(TABLE_FIELDS, key))
            parts.append(f"## {heading(fields, varying)}\n")
            parts.append(caption(group) + "\n")
            cells, note = table(group)
            parts.append(cells.to_markdown(disable_numparse=True) + "\n")
            if note:
                parts.append(note + "\n")
            exported.append(records(group))
            if out is not None and plots:
                from tta.plots import domain_bars

                name = f"{protocol}_{slug(fields['scenario'], fields['model'], 'sev', fields['severity'])}"
                name += f"_{digest(key)}.png"
                domains = per_seed(group).columns.drop("mean").tolist()
                domain_bars(group, domains, f"{protocol} · {heading(fields, varying)}".replace("`", ""), out / name)
                parts.append(f"![error per domain]({name})\n")
        views = (batch_size_sections(protocol, by_protocol, out, plots),
                 cost_sections(protocol, every[every["protocol"] == protocol], out, plots))
        for view in views:
            parts.extend(view)
        docs[protocol] = "\n".join(parts)
        index.extend(_index_section(protocol, by_protocol, out, plots))
        counts = [sum(part.startswith("## ") for part in view) for view in views]
        if any(counts):
            index.append(f"In [{protocol}.md]({protocol}.md) after the tables: {counts[0]} batch-size view(s) "
                         f"(error vs batch size, all else equal) and {counts[1]} cost view(s) (images/s relative to "
                         "`source` on the same machine, peak memory, error vs cost with the Pareto front).\n")
        if out is not None:
            long = pd.concat(exported, ignore_index=True)
            long.to_csv(out / f"{protocol}.csv", index=False)
            long.to_json(out / f"{protocol}.json", orient="records", indent=1)
            index.append(f"Full tables: [{protocol}.md]({protocol}.md) · [CSV]({protocol}.csv) · "
                         f"[JSON]({protocol}.json)\n")
    docs["README"] = "\n".join(index)
    return docs


def _index_section(protocol: str, by_protocol: pd.DataFrame, out: Path | None, plots: bool) -> list[str]:
    """Per table key but the severity: error (mean over domains, then over seeds) per severity and method."""
    parts = []
    at = TABLE_FIELDS.index("severity")
    by_protocol = by_protocol.assign(index_key=[key[:at] + key[at + 1:] for key in by_protocol["table"]])
    groups = sorted(by_protocol.groupby("index_key", sort=False), key=lambda item: item[0])
    varying = varying_fields([key for key in by_protocol["table"]]) - {"severity"}
    for _, group in groups:
        fields = dict(zip(TABLE_FIELDS, group["table"].iloc[0]))
        # per table (severity): the per-seed mean over domains, for seeds that have every domain
        seed_means = pd.concat({severity: per_seed(table_)["mean"] for severity, table_ in group.groupby("severity")},
                               names=["severity"]).dropna()
        stats = seed_means.groupby(level=["label", "severity"]).agg(["mean", "std"])
        grid = stats["mean"].unstack("severity")
        std = stats["std"].unstack("severity")
        # rank on the severities every method has (a method run at severity 5 only is ranked there)
        common = [c for c in grid.columns if grid[c].notna().all()]
        rank = grid[common].mean(axis=1).rank(method="min", na_option="bottom").astype(int)
        grid["mean"] = grid.mean(axis=1, skipna=False)
        text = grid.copy().astype(object)
        for column in grid.columns:
            for label in grid.index:
                value = grid.at[label, column]
                s = std.at[label, column] if column in std.columns else float("nan")
                spread = "" if pd.isna(s) else f" ± {s:.2f}"
                text.at[label, column] = "" if pd.isna(value) else f"{value:.2f}{spread}"
        text.insert(0, "rank", rank)
        text = text.loc[sorted(grid.index, key=lambda label: (rank[label], label))]
        text.columns = [c if c in ("rank", "mean") else f"severity {c}" if c != MISSING else "error"
                        for c in text.columns]
        text.index.name = "method"
        n_domains = group["domain"].str.rsplit("-", n=1).str[0].nunique()
        title = heading({**fields, "severity": MISSING}, varying)
        parts.append(f"### {title}\n")
        graded = [c for c in grid.columns if c not in (MISSING, "mean")]
        how = (f"`rank` by the mean over severities {', '.join(map(str, common))} (those every method has); `mean` "
               "over all severities shown, only where a method has them all." if graded else "`rank` by the error.")
        parts.append(caption(group, skip=("severity",) if graded else ()) + f" Values: error averaged over the "
                     f"{n_domains} domains, then over seeds; {how}\n")
        parts.append(text.to_markdown(disable_numparse=True) + "\n")
        if out is not None and plots and group["severity"].nunique() > 1:
            from tta.plots import severity_plot

            name = f"{protocol}_{slug(fields['scenario'], fields['model'])}_{digest(group['index_key'].iloc[0])}"
            name += "_severity.png"
            severity_plot(group, f"{protocol} · {title}".replace("`", ""), out / name)
            parts.append(f"![error vs severity]({name})\n")
    return parts


def load_side(spec: str, store: Path) -> tuple[str, pd.DataFrame]:
    """``spec`` -> (its name, its cells: :mod:`tta.leaderboard_compare`).

    ``spec`` is a leaderboard JSON file (``<protocol>.json``) or folder (every ``*.json``), a
    store file, or a git revision (prefix) of rows in ``store`` (its latest row per run and domain).
    """
    path = Path(spec).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix == ".json"):
        return str(path), read_exports(path)
    if path.is_file():
        return str(path), cell_frame(ResultStore(path, read_only=True).rows())
    if not store.is_file():
        raise UserError(f"--compare {spec!r}: not a file, and result store {str(store)!r} does not exist")
    all_rows = ResultStore(store, read_only=True).rows(latest_only=False)
    latest = {(r["run_key"], r["domain"]): r for r in all_rows if str(r.get("git_rev") or "").startswith(spec)}
    if not latest:
        revisions = sorted({str(r.get("git_rev")) for r in all_rows})
        raise UserError(f"--compare {spec!r}: neither a store file nor a git revision of rows in {store} "
                        f"(revisions there: {', '.join(revisions) or 'none'})")
    return f"git {spec}", cell_frame(list(latest.values()))


def cell_frame(rows: list[dict]) -> pd.DataFrame:
    """Store rows -> the cells a leaderboard shows (mean and std over seeds per table, method and domain)."""
    return cells_from_frame(frame(rows)) if rows else cells_from_records([])


@guarded
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m tta.leaderboard", description="Render leaderboards (markdown, CSV, JSON, PNG) "
                                                             "from a result store, or compare two.")
    p.add_argument("--store", help=f"SQLite result store (default {user_store()}, the user store; "
                                   "$TTA_HOME moves it)")
    p.add_argument("--out", help=f"output folder (default {user_leaderboard_dir()})")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="load a plugin file first (methods, dataset readers), so their rows render with their names")
    p.add_argument("--regenerate", metavar="COMMAND", help="the command that regenerates the store, for README.md")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="print B - A per cell with the seed spread of both; each a store file, a leaderboard JSON "
                        "file or folder, or a git revision (prefix) of rows in --store")
    args = p.parse_args(argv)
    from tta import plugins

    plugins.load_all(args.plugin)
    store = Path(args.store).expanduser() if args.store else user_store()
    if args.compare:
        print(compare_markdown(*load_side(args.compare[0], store), *load_side(args.compare[1], store)))
        return 0
    # every argument checked before the store is read or a folder created
    store = existing_file(store, "result store", "run `python -m tta.run ...` first, or give --store FILE")
    out = output_dir(args.out if args.out else user_leaderboard_dir())
    rows = ResultStore(store, read_only=True).rows()
    if not rows:
        raise UserError(f"result store {str(store)!r} holds no results yet")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {str(out)!r}: {exc.strerror}") from None
    try:
        docs = render(rows, out, plots=not args.no_plots, regenerate=args.regenerate)
        for name, text in docs.items():
            (out / f"{name}.md").write_text(text)
    except OSError as exc:  # e.g. the disk filled up, or the folder became read-only meanwhile
        raise UserError(f"cannot write into output folder {str(out)!r}: {exc.strerror or exc}") from None
    for name, text in docs.items():
        if name != "README":
            print(text)
    print(f"wrote {', '.join(str(out / f'{n}.md') for n in docs)} (+ CSV, JSON"
          f"{'' if args.no_plots else ', PNG'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
