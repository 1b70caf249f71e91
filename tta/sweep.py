"""``python -m tta.sweep``: run a grid of methods x protocols x scenarios x severities x hparams x seeds.

    python -m tta.sweep --methods source,bn_adapt,alpha_bn --protocols smoke --seeds 0,1,2
    python -m tta.sweep --methods alpha_bn --protocols cifar10c --seeds 0,1 --hp alpha=0.1,0.3 \\
        --backend ray --address auto

Every cell is validated before any work starts (unknown names: one ``error:`` line, exit 2);
cells already in the store are skipped, so rerunning a killed sweep resumes it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from tta.cli import Parser, guarded
from tta.errors import UserError
from tta.paths import user_store

DEFAULT_STORE = user_store()


def build_parser() -> Parser:
    p = Parser(prog="python -m tta.sweep", description="Run a grid of test-time runs into one result store.")
    grid = p.add_argument_group("grid axes (comma-separated)")
    grid.add_argument("--methods", required=True, help="method names, or 'all' for every registered method")
    grid.add_argument("--protocols", required=True, help="protocol names or spec .toml paths")
    grid.add_argument("--seeds", default="0", help="seeds (default 0)")
    grid.add_argument("--scenarios", help="scenario names (default: each protocol's)")
    grid.add_argument("--severities", help="corruption severities 1..5 (default: each protocol's)")
    grid.add_argument("--hp", nargs="*", default=[], metavar="KEY=V1,V2",
                      help="hyperparameter values; a key applies to every method that declares it")
    shared = p.add_argument_group("settings of every cell (as in python -m tta.run)")
    shared.add_argument("--data-root", help="data root (default: $TTA_DATA, else the checkout's datasets/)")
    shared.add_argument("--model", help="model name (needs --checkpoint unless it is the protocol's)")
    shared.add_argument("--checkpoint", help="checkpoint path or URL")
    shared.add_argument("--domains", help="comma-separated domains (default: all)")
    shared.add_argument("--batch-size", type=int, help="test batch size")
    shared.add_argument("--n-examples", type=int, help="examples per domain (default: all)")
    shared.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    shared.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the adapted model: always / never (--no-compile); default: when it pays")
    shared.add_argument("--plugin", action="append", default=[], metavar="FILE", help="load a method plugin file")
    engine = p.add_argument_group("execution")
    engine.add_argument("--store", default=str(DEFAULT_STORE), help=f"SQLite result store (default {DEFAULT_STORE})")
    engine.add_argument("--backend", default="local", help="local (worker processes) or ray (default local)")
    engine.add_argument("--workers", type=int, default=1, help="parallel cells (local processes / local Ray CPUs)")
    engine.add_argument("--threads", type=int, help="torch threads per worker (default: CPU cores / workers)")
    engine.add_argument("--address", help="Ray cluster address (e.g. auto or ray://host:10001); default: local Ray")
    engine.add_argument("--dry-run", action="store_true", help="validate and list the cells, run nothing")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tta import grid, plugins
    from tta.executors import EXECUTORS
    from tta.registry import METHODS
    from tta.store import ResultStore

    plugins.load_all(args.plugin)
    from tta import runner  # noqa: F401 - registers the built-in methods

    if args.workers < 1 or (args.threads is not None and args.threads < 1):
        raise UserError("--workers and --threads must be at least 1")
    executor_cls = EXECUTORS.get(args.backend)
    methods = METHODS.names() if args.methods.strip() == "all" else grid.split_list(args.methods, "--methods")
    cells = grid.expand(methods, grid.split_list(args.protocols, "--protocols"), grid.int_list(args.seeds, "--seeds"),
                        grid.split_list(args.scenarios, "--scenarios") if args.scenarios else None,
                        grid.int_list(args.severities, "--severities") if args.severities else None, args.hp)
    settings = grid.Settings(
        data_root=args.data_root, model=args.model, checkpoint=args.checkpoint,
        domains=tuple(grid.split_list(args.domains, "--domains")) if args.domains else None,
        batch_size=args.batch_size, n_examples=args.n_examples, device=args.device, plugins=tuple(args.plugin),
        threads=args.threads or grid.default_threads(args.workers),
        compile=args.compile)
    executor = executor_cls(args.workers, args.address)
    store = ResultStore(args.store)
    planned = grid.plan(cells, settings, store)
    todo = [p for p in planned if not p.done]
    print(f"sweep: {len(planned)} cells, {len(planned) - len(todo)} finished in {store.path}, {len(todo)} to run "
          f"({args.backend}, {args.workers} worker(s) x {settings.threads} thread(s))", file=sys.stderr, flush=True)
    if args.dry_run:
        for p in planned:
            print(f"{'done' if p.done else 'todo'}  {p.cell.label()}  run_key {p.run_key}")
        return 0
    path = grid.store_path(args.store)
    tasks = [grid.CellTask(p.cell, settings, path if executor.writes_store else None, p.finished) for p in todo]
    failures: list[str] = []
    succeeded = [0]
    started = time.perf_counter()

    def on_done(task, result, exc) -> None:
        count = len(failures) + succeeded[0] + 1
        if exc is not None:
            reason = exc if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            failures.append(f"{task.cell.label()}: {reason}")
            print(f"[{count}/{len(tasks)}] FAILED {failures[-1]}", file=sys.stderr, flush=True)
            return
        store.extend(result["rows"])
        succeeded[0] += 1
        error = "n/a" if math.isnan(result["mean_error"]) else f"{result['mean_error']:.2f}%"
        print(f"[{count}/{len(tasks)}] {task.cell.label()}: mean error {error} over {result['n_rows']} domains "
              f"({result['seconds']:.1f} s)", flush=True)

    executor.run(tasks, on_done)
    print(f"sweep: {succeeded[0]} cells run, {len(failures)} failed, {time.perf_counter() - started:.1f} s; "
          f"store {store.path}", file=sys.stderr)
    if failures:
        raise UserError(f"{len(failures)} cell(s) failed; finished cells are in the store; first: {failures[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
