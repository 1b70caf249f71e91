"""The DG grid: every (training method, held-out target, seed), then test-time methods on top.

1. trains every cell of ``methods x targets x seeds`` with :class:`tta.training.loop.Training`
   (finished cells are reused, killed ones resume), in ``workers`` processes of one thread
   each, the most expensive methods first;
2. runs every test-time method on each trained model's target domain through the
   ordinary runner (:class:`tta.runner.Run`, episodic, stream seed = training seed) into
   the result store (finished cells skipped);
3. renders :func:`tta.training.report.dg_table` from the store.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from typing import Any, Callable

from tta.training.loop import TrainConfig, Training
from tta.training.report import dg_records, dg_table, to_markdown

#: relative cost of one step, to start the slowest trainings first
STEP_COST = {"udim": 5.0, "sam": 2.0}


def train_grid(configs: list[TrainConfig], workers: int, on_done: Callable[[dict], None]) -> list[dict[str, Any]]:
    trainings = [Training(c) for c in configs]  # validates every cell before any work
    order = sorted(range(len(configs)), key=lambda i: -STEP_COST.get(configs[i].method, 1.0))
    summaries: list[dict[str, Any] | None] = [None] * len(configs)
    if workers <= 1:
        for i in order:
            summaries[i] = trainings[i].run()
            on_done(summaries[i])
        return summaries  # type: ignore[return-value]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        futures = {i: pool.submit(_train, asdict(configs[i])) for i in order}
        for i in order:
            summaries[i] = futures[i].result()
            on_done(summaries[i])
    return summaries  # type: ignore[return-value]


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _train(config: dict[str, Any]) -> dict[str, Any]:
    return Training(TrainConfig(**config)).run()


def run_benchmark(protocol: str, methods: list[str], tta_methods: list[str], seeds: list[int],
                  targets: list[str] | None, store, workers: int = 1, steps: int | None = None,
                  data_root: str | None = None, device: str = "cpu",
                  on_line: Callable[[str], None] = print) -> str:
    """Train, test and tabulate; returns the markdown table."""
    from tta.protocols import Protocol, find_spec
    from tta.paths import data_root as resolve_root
    from tta.runner import Run, RunConfig

    spec = find_spec(protocol)
    all_targets = [d.name for d in Protocol.create(spec, resolve_root(data_root)).domains(None)]
    chosen = targets or all_targets
    configs = [TrainConfig(protocol, m, t, seed, steps=steps, data_root=data_root, device=device)
               for seed in seeds for t in chosen for m in methods]
    summaries = train_grid(configs, workers, lambda s: on_line(
        f"trained {s['method']:<5} target {s['target']:<12} seed {s['seed']}: val {100 * s['val_acc']:.1f}% "
        f"(step {s['step']}), target {100 * s['target_acc']:.1f}%"))
    for summary in summaries:
        for tta_method in tta_methods:
            run = Run(RunConfig(protocol=protocol, method=tta_method, seed=summary["seed"],
                                checkpoint=summary["checkpoint"], domains=[summary["target"]],
                                data_root=data_root, device=device))
            run.execute(store)
    records = dg_records(store.rows(), spec.name)
    wanted = {s["checkpoint"] for s in summaries}
    records = [r for r in records if r["checkpoint"] in wanted and r["tta_method"] in tta_methods]
    table = dg_table(records, all_targets)
    return to_markdown(table, f"{spec.name}: target-domain accuracy (%), leave-one-domain-out, "
                              f"mean ± std over seeds {', '.join(map(str, seeds))}")
