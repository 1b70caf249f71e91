"""Leaderboard plots (matplotlib, headless ``Agg``): error vs severity, and per-domain bars.

Both take the per-seed frame of :mod:`tta.leaderboard` (one row per method label, seed,
severity, domain) and draw the mean over seeds with the standard deviation across seeds
as error bars.
"""

from __future__ import annotations

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
