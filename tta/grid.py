"""Sweep grids: expand methods x protocols x scenarios x severities x hparams x seeds into cells.

A *cell* is one ``(protocol, method, scenario, severity, hparams, seed)`` run, executed as
``tta.runner.Run(config).execute(store)``: one result row per domain. The grid is planned
in the calling process (every cell's names, hyperparameters, data and checkpoint are
validated by constructing its :class:`~tta.runner.Run` before any work starts; cells whose
domains are all in the store are skipped), then the pending cells go to an executor
(:mod:`tta.sweep_backends`: worker processes or Ray tasks).

The store is the only state: a killed sweep, rerun with the same arguments, skips the
finished cells and, inside an unfinished episodic cell, the finished domains.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tta.errors import UserError


@dataclass(frozen=True)
class Cell:
    """One run of the grid (everything but the settings shared by all cells)."""

    protocol: str
    method: str
    seed: int
    scenario: str | None = None
    severity: int | None = None
    hparams: tuple[tuple[str, str], ...] = ()

    def label(self) -> str:
        parts = [self.protocol, self.scenario or "", self.method + _hp_text(self.hparams),
                 f"sev {self.severity}" if self.severity is not None else "", f"seed {self.seed}"]
        return " / ".join(p for p in parts if p)


@dataclass(frozen=True)
class Settings:
    """Run settings shared by every cell (the ``tta.run`` flags that are not grid axes)."""

    data_root: str | None = None
    model: str | None = None
    checkpoint: str | None = None
    domains: tuple[str, ...] | None = None
    batch_size: int | None = None
    n_examples: int | None = None
    device: str = "cpu"
    plugins: tuple[str, ...] = ()
    threads: int | None = None  # torch threads per worker
    compile: bool | None = None  # torch.compile the adapted model (RunConfig.compile; None: when it pays)


@dataclass
class PlannedCell:
    cell: Cell
    run_key: str
    domains: list[str]
    finished: set[str] = field(default_factory=set)

    @property
    def done(self) -> bool:
        return set(self.domains) <= self.finished


def split_list(text: str | None, what: str) -> list[str]:
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if text is not None and not items:
        raise UserError(f"{what} is empty")
    return items


def int_list(text: str | None, what: str) -> list[int]:
    try:
        return [int(t) for t in split_list(text, what)]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None


def hparam_sets(method_cls: type, assignments: list[str]) -> list[tuple[tuple[str, str], ...]]:
    """``["alpha=0.1,0.3", "lr=1e-3"]`` -> the product of the values of the keys ``method_cls`` declares.

    A key applies to every method of the sweep that declares it; methods without any of
    the keys run once with their defaults.
    """
    axes = []
    for assignment in assignments:
        key, sep, values = assignment.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UserError(f"--hp expects KEY=V1[,V2...], got {assignment!r}")
        if key.strip() in method_cls.hparams:
            axes.append([(key.strip(), v) for v in split_list(values, f"--hp {key}")])
    return [tuple(sorted(combo)) for combo in itertools.product(*axes)]


def check_hparam_keys(method_classes: list[type], assignments: list[str]) -> None:
    declared = set().union(*(cls.hparams for cls in method_classes))
    for assignment in assignments:
        key = assignment.partition("=")[0].strip()
        if key and key not in declared:
            import difflib

            close = difflib.get_close_matches(key, sorted(declared), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"--hp {key}: no method of the sweep has this hyperparameter{hint} "
                            f"(they have: {', '.join(sorted(declared)) or 'none'})")


def expand(methods: list[str], protocols: list[str], seeds: list[int], scenarios: list[str] | None = None,
           severities: list[int] | None = None, hp: list[str] | None = None) -> list[Cell]:
    """All cells of the grid, in a stable order (protocol, scenario, severity, method, hparams, seed)."""
    from tta.registry import METHODS

    for name, values in (("--methods", methods), ("--protocols", protocols), ("--seeds", seeds)):
        if not values:
            raise UserError(f"{name} is required")
    classes = {m: METHODS.get(m) for m in methods}
    check_hparam_keys(list(classes.values()), hp or [])
    cells = []
    for protocol, scenario, severity, method in itertools.product(protocols, scenarios or [None],
                                                                  severities or [None], methods):
        for hparams in hparam_sets(classes[method], hp or []):
            cells.extend(Cell(protocol, method, seed, scenario, severity, hparams) for seed in seeds)
    if len(set(cells)) != len(cells):
        raise UserError("the grid lists a cell twice (a repeated method, protocol, seed or value)")
    return cells


def run_config(cell: Cell, settings: Settings):
    from tta.runner import RunConfig

    return RunConfig(protocol=cell.protocol, method=cell.method, hparams=dict(cell.hparams), seed=cell.seed,
                     model=settings.model, checkpoint=settings.checkpoint,
                     domains=list(settings.domains) if settings.domains else None, severity=cell.severity,
                     batch_size=settings.batch_size, n_examples=settings.n_examples, scenario=cell.scenario,
                     data_root=settings.data_root, device=settings.device, compile=settings.compile)


def plan(cells: list[Cell], settings: Settings, store=None) -> list[PlannedCell]:
    """Validate every cell (a :class:`UserError` before any work) and mark the finished ones."""
    from tta.runner import Run

    planned = []
    for cell in cells:
        try:
            run = Run(run_config(cell, settings))
        except UserError as exc:
            raise UserError(f"cell {cell.label()}: {exc}") from None
        finished = store.finished(run.run_key) if store is not None else set()
        planned.append(PlannedCell(cell, run.run_key, [d.key for d in run.domains], finished))
    return planned


class CollectingStore:
    """Store stand-in for workers without access to the result file (Ray): rows go back to the caller."""

    def __init__(self, finished: set[str]) -> None:
        self._finished, self.collected = set(finished), []

    def finished(self, run_key: str) -> set[str]:
        return set(self._finished)

    def append(self, row: dict[str, Any]) -> None:
        self.collected.append(row)

    def claim(self, run_key: str, domain: str, owner: str, force: bool = False, **_: Any) -> str:
        """The caller planned the cell for this worker alone: claimed unless already finished."""
        from tta.store import CLAIMED, DONE

        return DONE if domain in self._finished and not force else CLAIMED

    def release(self, run_key: str, domain: str, owner: str) -> None:
        pass

    def rows(self, latest_only: bool = True) -> list[dict[str, Any]]:
        return list(self.collected)


@dataclass
class CellTask:
    """What a worker needs to run one cell (picklable)."""

    cell: Cell
    settings: Settings
    store_path: str | None  # None: collect rows and return them (the caller appends them)
    finished: set[str] = field(default_factory=set)


def execute_cell(task: CellTask) -> dict[str, Any]:
    """Run one cell in this process; the worker entry point of every backend."""
    import torch

    from tta import plugins
    from tta.runner import Run
    from tta.store import ResultStore

    if task.settings.threads:
        torch.set_num_threads(task.settings.threads)
    plugins.load_all(task.settings.plugins)
    started = time.perf_counter()
    run = Run(run_config(task.cell, task.settings))
    store = ResultStore(task.store_path) if task.store_path else CollectingStore(task.finished)
    rows = run.execute(store)
    errors = [r["error"] for r in rows if r.get("error") is not None]
    return {"cell": task.cell, "pid": os.getpid(), "seconds": time.perf_counter() - started, "n_rows": len(rows),
            "mean_error": sum(errors) / len(errors) if errors else float("nan"),
            "rows": store.collected if isinstance(store, CollectingStore) else []}


def _hp_text(hparams: tuple[tuple[str, str], ...]) -> str:
    return f"({', '.join(f'{k}={v}' for k, v in hparams)})" if hparams else ""


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def store_path(path: str | os.PathLike) -> str:
    return str(Path(path).expanduser().resolve())
