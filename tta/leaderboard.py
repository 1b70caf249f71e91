"""``python -m tta.leaderboard``: render the result store into leaderboards people read.

    python -m tta.leaderboard [--store FILE] [--out DIR] [--no-plots]
    python -m tta.leaderboard --compare A B      # A, B: store files, or git revisions in --store

One table per (protocol, data source, scenario, model, severity): a row per method
configuration (method plus its non-default hyperparameters), a column per domain in
protocol order, ``mean`` (over domains) and ``avg rank`` (mean over domains of the
method's rank in that domain). Values are the error (%) averaged over seeds, ``±`` the
standard deviation across seeds (ddof 1) where there are several; the best value of each
column is bold; ``rank`` orders the methods by ``mean``. Each table's caption states where
its numbers come from: data source, dataset, protocol, model and checkpoint, seeds,
examples per domain, and the software, device and git revision(s) of the rows.

Written to ``<out>/``: ``README.md`` (index: per protocol, error per severity and method,
with plots), ``<protocol>.md`` (the full tables, with per-domain bar plots), and
``<protocol>.csv`` / ``<protocol>.json`` (the aggregated numbers, one record per method x
domain x table) and PNG plots. ``--compare A B`` prints B - A for every cell present in both.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

from tta.cli import Parser, guarded
from tta.errors import UserError
from tta.paths import CHECKOUT_ROOT
from tta.store import ResultStore

DEFAULT_STORE = CHECKOUT_ROOT / "leaderboard" / "results.sqlite"
DEFAULT_OUT = CHECKOUT_ROOT / "leaderboard"
#: one table per value of these columns
TABLE_KEYS = ["protocol", "data_source", "dataset", "scenario", "model", "severity"]


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


def frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    defaults = {m: _defaults(m) for m in df["method"].unique()}
    df["label"] = [method_label(m, h, defaults[m]) for m, h in zip(df["method"], df["hparams"])]
    for key in TABLE_KEYS:
        if key not in df:
            df[key] = None
    df[TABLE_KEYS] = df[TABLE_KEYS].astype(object).where(df[TABLE_KEYS].notna(), "-")
    return df


def per_seed(group: pd.DataFrame, metric: str = "error") -> pd.DataFrame:
    """(label, seed) x domains in protocol order, plus ``mean`` over domains."""
    order = group.sort_values("domain_index").drop_duplicates("domain")["domain"].tolist()
    values = group.pivot_table(index=["label", "seed"], columns="domain", values=metric, aggfunc="last")[order]
    values["mean"] = values.mean(axis=1)
    return values


def summary(group: pd.DataFrame, metric: str = "error") -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Mean and std over seeds (label x domains+mean) and the number of seeds per label."""
    by_method = per_seed(group, metric).groupby(level="label")
    return by_method.mean(), by_method.std(ddof=1), by_method.size()


def ranks(mean: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """``rank`` (1 = lowest mean error; ties share the lower rank) and ``avg rank`` over domains."""
    domains = [c for c in mean.columns if c != "mean"]
    return mean["mean"].rank(method="min").astype(int), mean[domains].rank(method="min").mean(axis=1)


def table(group: pd.DataFrame, metric: str = "error") -> pd.DataFrame:
    """The markdown table of one group: rank, seeds, one column per domain, mean, avg rank."""
    mean, std, seeds = summary(group, metric)
    rank, avg_rank = ranks(mean)
    best = mean.min(axis=0)
    cells = pd.DataFrame(index=mean.index, columns=mean.columns, dtype=object)
    for column in mean.columns:
        for label in mean.index:
            value = mean.at[label, column]
            text = "" if pd.isna(value) else f"{value:.2f}"
            if text and seeds[label] > 1 and not pd.isna(std.at[label, column]):
                text += f" ± {std.at[label, column]:.2f}"
            if text and value == best[column]:
                text = f"**{text}**"
            cells.at[label, column] = text
    cells.insert(0, "seeds", seeds)
    cells.insert(0, "rank", rank)
    cells["avg rank"] = avg_rank.map(lambda r: f"{r:.2f}")
    cells.index.name = "method"
    return cells.loc[rank.sort_values(kind="stable").index]


def records(group: pd.DataFrame, metric: str = "error") -> pd.DataFrame:
    """Long format for CSV/JSON: one record per method x domain (and ``mean``) of one table."""
    mean, std, seeds = summary(group, metric)
    rank, avg_rank = ranks(mean)
    first = group.iloc[0]
    out = []
    for label in mean.index:
        for domain in mean.columns:
            out.append({**{k: first[k] for k in TABLE_KEYS}, "method": label.split("(")[0], "label": label,
                        "domain": domain, f"{metric}_mean": mean.at[label, domain],
                        f"{metric}_std": std.at[label, domain], "seeds": int(seeds[label]),
                        "rank": int(rank[label]), "avg_rank": float(avg_rank[label])})
    return pd.DataFrame(out)


def _values(group: pd.DataFrame, column: str) -> str:
    values = sorted({str(v) for v in group[column].dropna()}) if column in group else []
    return ", ".join(values) if values else "unknown"


def _env_values(group: pd.DataFrame, key: str) -> str:
    envs = group["env"].dropna() if "env" in group else []
    values = sorted({str(e.get(key)) for e in envs if isinstance(e, dict)})
    return ", ".join(values) if values else "unknown"


def caption(group: pd.DataFrame) -> str:
    """Where the numbers of one table come from, in one paragraph."""
    first = group.iloc[0]
    severity = _values(group, "severity")
    sha = _values(group, "checkpoint_sha256")
    return (f"*Data: {first['data_source']}.* Dataset `{first['dataset']}`, protocol `{first['protocol']}`, "
            f"scenario `{first['scenario']}`, model `{first['model']}` (checkpoint sha256 {sha[:12]}), "
            f"severity {severity}; seeds {_values(group, 'seed')}; {_values(group, 'n')} examples per domain, "
            f"batch {_values(group, 'batch_size')}. Rows from git {_values(group, 'git_rev')}, "
            f"torch {_env_values(group, 'torch')} on {_env_values(group, 'device')} "
            f"({_env_values(group, 'device_name')}), {_env_values(group, 'threads')} thread(s).")


def describe_protocol(protocol: str) -> str:
    """The spec's one-line description, when the protocol is still known to this checkout."""
    from tta.protocols import find_spec

    try:
        return find_spec(protocol).description
    except UserError:
        return "(protocol spec not found in this checkout)"


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", "_".join(str(p) for p in parts)).strip("-").lower()[:80]


def render(rows: list[dict], out: Path | None = None, plots: bool = True,
           regenerate: str | None = None) -> dict[str, str]:
    """Protocol name -> markdown document; with ``out``, also ``README.md``, CSV, JSON and PNG plots."""
    if not rows:
        return {}
    df = frame(rows)
    docs: dict[str, str] = {}
    index = ["# Leaderboards\n", "Generated by `python -m tta.leaderboard` from the result store"
             + (f"; regenerate with `{regenerate}`" if regenerate else "")
             + ". Error (%), lower is better: mean over seeds ± std across seeds (ddof 1).\n"]
    for protocol, by_protocol in df.groupby("protocol", sort=True):
        parts = [f"# {protocol}\n", f"{describe_protocol(protocol)}.\n",
                 "Error (%) per domain, lower is better; mean over seeds (± std across seeds, "
                 "ddof 1); best per column in bold; `rank` by mean, `avg rank` = mean over domains of the per-domain "
                 "rank. Generated by `python -m tta.leaderboard` from the result store.\n"]
        exported = []
        index.append(f"## {protocol}\n\n{describe_protocol(protocol)}.\n")
        for key, group in by_protocol.groupby(TABLE_KEYS, sort=True):
            fields = dict(zip(TABLE_KEYS, key))
            parts.append(f"## {fields['scenario']} · model {fields['model']} · severity {fields['severity']}"
                         f" · data {fields['data_source']}\n")
            parts.append(caption(group) + "\n")
            parts.append(table(group).to_markdown(disable_numparse=True) + "\n")
            exported.append(records(group))
            if out is not None and plots:
                from tta.plots import domain_bars

                name = (f"{protocol}_{_slug(fields['scenario'], fields['model'], 'sev', fields['severity'])}_"
                        f"{_slug(fields['data_source'])[:40]}.png")
                domains = per_seed(group).columns.drop("mean").tolist()
                domain_bars(group, domains, f"{protocol} · {fields['scenario']} · severity {fields['severity']}",
                            out / name)
                parts.append(f"![error per domain]({name})\n")
        docs[protocol] = "\n".join(parts)
        index.extend(_index_section(protocol, by_protocol, out, plots))
        if out is not None:
            long = pd.concat(exported, ignore_index=True)
            long.to_csv(out / f"{protocol}.csv", index=False)
            long.to_json(out / f"{protocol}.json", orient="records", indent=1)
            index.append(f"Full tables: [{protocol}.md]({protocol}.md) · [CSV]({protocol}.csv) · "
                         f"[JSON]({protocol}.json)\n")
    docs["README"] = "\n".join(index)
    return docs


def _index_section(protocol: str, by_protocol: pd.DataFrame, out: Path | None, plots: bool) -> list[str]:
    """Per (data source, scenario, model): error (mean over domains) per severity and method."""
    parts = []
    keys = ["data_source", "dataset", "scenario", "model"]
    for key, group in by_protocol.groupby(keys, sort=True):
        fields = dict(zip(keys, key))
        seed_means = group.groupby(["label", "severity", "seed"])["error"].mean()
        stats = seed_means.groupby(level=["label", "severity"]).agg(["mean", "std"])
        grid = stats["mean"].unstack("severity")
        std = stats["std"].unstack("severity")
        # rank on the severities every method has (a method run at severity 5 only is ranked there)
        common = [c for c in grid.columns if grid[c].notna().all()]
        rank = grid[common].mean(axis=1).rank(method="min").astype(int)
        grid["mean"] = grid.mean(axis=1, skipna=False)
        text = grid.copy().astype(object)
        for column in grid.columns:
            for label in grid.index:
                value = grid.at[label, column]
                s = std.at[label, column] if column in std.columns else float("nan")
                spread = "" if pd.isna(s) else f" ± {s:.2f}"
                text.at[label, column] = "" if pd.isna(value) else f"{value:.2f}{spread}"
        text.insert(0, "rank", rank)
        text = text.loc[rank.sort_values(kind="stable").index]
        text.columns = [c if c in ("rank", "mean") else f"severity {c}" for c in text.columns]
        text.index.name = "method"
        n_domains = group["domain"].str.rsplit("-", n=1).str[0].nunique()
        parts.append(f"### {fields['scenario']} · model {fields['model']} · data {fields['data_source']}\n")
        parts.append(caption(group) + f" Values: error averaged over the {n_domains} domains, then over seeds; "
                     f"`rank` by the mean over severities {', '.join(map(str, common))} (those every method has); "
                     "`mean` over all severities shown, only where a method has them all.\n")
        parts.append(text.to_markdown(disable_numparse=True) + "\n")
        if out is not None and plots and group["severity"].nunique() > 1:
            from tta.plots import severity_plot

            name = f"{protocol}_{_slug(fields['scenario'], fields['model'], fields['data_source'])}_severity.png"
            severity_plot(group, f"{protocol} · {fields['scenario']} · {fields['model']}", out / name)
            parts.append(f"![error vs severity]({name})\n")
    return parts


def load_side(spec: str, store: Path) -> tuple[str, list[dict]]:
    """``spec`` = a store file, or a git revision (prefix) of rows in ``store``: its latest row per cell."""
    path = Path(spec).expanduser()
    if path.is_file():
        return str(path), ResultStore(path).rows()
    if not store.is_file():
        raise UserError(f"--compare {spec!r}: not a file, and result store {str(store)!r} does not exist")
    all_rows = ResultStore(store).rows(latest_only=False)
    latest = {(r["run_key"], r["domain"]): r for r in all_rows if str(r.get("git_rev") or "").startswith(spec)}
    if not latest:
        revisions = sorted({str(r.get("git_rev")) for r in all_rows})
        raise UserError(f"--compare {spec!r}: neither a store file nor a git revision of rows in {store} "
                        f"(revisions there: {', '.join(revisions) or 'none'})")
    return f"git {spec}", list(latest.values())


COMPARE_KEYS = ["protocol", "data_source", "scenario", "model", "severity", "label", "domain"]


def compare_frame(a_rows: list[dict], b_rows: list[dict]) -> tuple[pd.DataFrame, int, int]:
    """Cells (``COMPARE_KEYS``) present in both: mean error over seeds in A and B, ``delta`` = B - A.

    Also returns how many cells only A and only B have.
    """
    means = [frame(rows).groupby(COMPARE_KEYS)["error"].mean() for rows in (a_rows, b_rows)]
    both = pd.concat(means, axis=1, keys=["A", "B"], join="inner").dropna()
    both["delta"] = both["B"] - both["A"]
    return both, len(means[0]) - len(both), len(means[1]) - len(both)


def compare(a: tuple[str, list[dict]], b: tuple[str, list[dict]]) -> str:
    """Markdown: per table and method, mean error in A and B, B - A, and the largest per-domain change."""
    both, only_a, only_b = compare_frame(a[1], b[1])
    if both.empty:
        raise UserError(f"{a[0]} and {b[0]} have no (protocol, method, domain, ...) cell in common")
    parts = [f"# Comparison: A = {a[0]}, B = {b[0]}\n",
             f"Error (%), mean over seeds, on the {len(both)} cells present in both "
             f"({only_a} only in A, {only_b} only in B). Δ = B - A (negative: B is better).\n"]
    for key, group in both.groupby(level=COMPARE_KEYS[:5], sort=True):
        fields = dict(zip(COMPARE_KEYS[:5], key))
        per_label = group.groupby(level="label")
        table_ = pd.DataFrame({"domains": per_label.size(), "A mean": per_label["A"].mean(),
                               "B mean": per_label["B"].mean(), "Δ mean": per_label["delta"].mean(),
                               "max abs Δ": per_label["delta"].apply(lambda d: d.abs().max()),
                               "at domain": per_label["delta"].apply(lambda d: d.abs().idxmax()[-1])})
        table_.index.name = "method"
        parts.append(f"## {fields['protocol']} · {fields['scenario']} · model {fields['model']} · severity "
                     f"{fields['severity']} · data {fields['data_source']}\n")
        parts.append(table_.sort_values("A mean").to_markdown(floatfmt=".2f") + "\n")
    return "\n".join(parts)


@guarded
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m tta.leaderboard", description="Render leaderboards (markdown, CSV, JSON, PNG) "
                                                             "from a result store, or compare two.")
    p.add_argument("--store", default=str(DEFAULT_STORE), help=f"SQLite result store (default {DEFAULT_STORE})")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--regenerate", metavar="COMMAND", help="the command that regenerates the store, for README.md")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="print B - A; each a store file or a git revision (prefix) of rows in --store")
    args = p.parse_args(argv)
    store = Path(args.store).expanduser()
    if args.compare:
        print(compare(load_side(args.compare[0], store), load_side(args.compare[1], store)))
        return 0
    if not store.is_file():
        raise UserError(f"result store {args.store!r} does not exist (run `python -m tta.run ...` first)")
    rows = ResultStore(store).rows()
    if not rows:
        raise UserError(f"result store {args.store!r} holds no results yet")
    out = Path(args.out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {str(out)!r}: {exc.strerror}") from None
    docs = render(rows, out, plots=not args.no_plots, regenerate=args.regenerate)
    for name, text in docs.items():
        (out / f"{name}.md").write_text(text)
        if name != "README":
            print(text)
    print(f"wrote {', '.join(str(out / f'{n}.md') for n in docs)} (+ CSV, JSON"
          f"{'' if args.no_plots else ', PNG'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
