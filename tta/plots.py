"""Leaderboard plots (matplotlib, headless ``Agg``): error vs severity, per-domain bars, error vs batch size,
and error vs relative cost with the Pareto front.

The severity and bar plots take the per-seed frame of :mod:`tta.leaderboard` (one row per
method label, seed, severity, domain); the batch-size and cost plots take the aggregated
tables of :mod:`tta.leaderboard_views`. All draw the mean over seeds with the standard
deviation across seeds as error bars. matplotlib is imported on first use only.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def severity_plot(df: pd.DataFrame, title: str, path: Path) -> Path:
    """Mean error over domains vs severity, one line per method (mean ± std over seeds)."""
    plt = _pyplot()
    # the leaderboard's severity is text (its table key): plot it as a number, so the axis is in order
    # even when the first method drawn has only some severities
    df = df.assign(severity=pd.to_numeric(df["severity"], errors="coerce")).dropna(subset=["severity"])
    per_seed = df.groupby(["label", "severity", "seed"])["error"].mean()
    summary = per_seed.groupby(level=["label", "severity"]).agg(["mean", "std"]).reset_index()
    order = summary.groupby("label")["mean"].mean().sort_values().index
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label in order:
        line = summary[summary["label"] == label].sort_values("severity")
        ax.errorbar(line["severity"], line["mean"], yerr=line["std"].fillna(0), marker="o", capsize=3, label=label)
    ax.set_xlabel("severity")
    ax.set_ylabel("error (%), mean over domains")
    ax.set_xticks(sorted(summary["severity"].unique()))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def domain_bars(df: pd.DataFrame, domains: list[str], title: str, path: Path) -> Path:
    """Error per domain, grouped bars (one per method; mean ± std over seeds)."""
    plt = _pyplot()
    summary = df.groupby(["label", "domain"])["error"].agg(["mean", "std"]).reset_index()
    order = summary.groupby("label")["mean"].mean().sort_values().index.tolist()
    width = 0.8 / max(1, len(order))
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.4, 2 + 0.12 * len(domains) * len(order))), 4.5))
    for i, label in enumerate(order):
        bars = summary[summary["label"] == label].set_index("domain").reindex(domains)
        positions = [d + (i - (len(order) - 1) / 2) * width for d in range(len(domains))]
        ax.bar(positions, bars["mean"], width, yerr=bars["std"].fillna(0), capsize=1.5, label=label)
    ax.set_xticks(range(len(domains)))
    ax.set_xticklabels(domains, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("error (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(4, len(order)))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def batch_size_plot(mean: pd.DataFrame, std: pd.DataFrame, title: str, path: Path) -> Path:
    """Error vs batch size (log x), one line per method: ``mean``/``std`` are label x batch size (text)."""
    plt = _pyplot()
    sizes = [float(b) for b in mean.columns]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label in sorted(mean.index):
        ax.errorbar(sizes, mean.loc[label].to_numpy(dtype=float), yerr=std.loc[label].fillna(0).to_numpy(dtype=float),
                    marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(b) for b in mean.columns])
    ax.minorticks_off()
    ax.set_xlabel("batch size (log scale)")
    ax.set_ylabel("error (%), mean over domains")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _times(value: float, _position=None) -> str:
    """Log-axis tick text: ``1×``, ``2×``, ``5×``, ``10×``, ... (other minor ticks unlabelled)."""
    if value <= 0:
        return ""
    mantissa = round(value / 10 ** math.floor(math.log10(value)), 6)
    return f"{value:g}×" if mantissa in (1.0, 2.0, 5.0) else ""


def cost_plot(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Error vs relative cost (log x where the costs span 3x or more), one point per method (± std over seeds), the Pareto front as a step line.

    ``table``: :func:`tta.leaderboard_views.cost_table` (index label; ``cost``, ``error``,
    ``error_std``, ``pareto``); methods without a cost or error are left out. Front members
    are filled and starred in the legend, the others hollow.
    """
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    points = table.dropna(subset=["cost", "error"])
    front = points[points["pareto"]].sort_values(["cost", "error"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.step(front["cost"], front["error"], where="post", color="0.5", linewidth=1, zorder=1, label="Pareto front")
    for label, p in points.iterrows():
        on = bool(p["pareto"])
        line = ax.errorbar([p["cost"]], [p["error"]], yerr=[0.0 if pd.isna(p["error_std"]) else p["error_std"]],
                           marker="o", markersize=7, capsize=3, linestyle="none", zorder=2,
                           label=f"{label} {p['cost']:.2f}×" + (" *" if on else ""))
        if not on:
            line[0].set_markerfacecolor("white")
    log = len(points) > 0 and points["cost"].max() >= 3 * points["cost"].min()  # linear over a narrow range
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_times))
        ax.xaxis.set_minor_formatter(FuncFormatter(_times))
    ax.set_xlabel("relative cost: source images/s ÷ method images/s" + (" (log scale)" if log else ""))
    ax.set_ylabel("error (%), mean over domains")
    ax.set_title(title + "\n(*, filled: on the Pareto front)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
