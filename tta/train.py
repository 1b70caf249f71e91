"""``python -m tta.train``: train a DG source model, or the whole leave-one-domain-out grid.

    python -m tta.train --method sam --protocol pacs --target sketch [--seed 0] [--hp rho=0.1]
                        [--steps N] [--out DIR] [--pretrained PATH] [--bn train|frozen]
    python -m tta.train --benchmark --protocol shapes_dg --seeds 0,1,2
                        [--methods erm,sam,udim,ridg] [--tta source,alpha_bn] [--workers 2]
    python -m tta.train --report --protocol pacs        # the DG table from the store only
    python -m tta.train --list

One training writes ``best.pt`` (use it with ``python -m tta.run --checkpoint``),
``last.pt``, ``log.jsonl`` and ``summary.json`` to ``--out`` (default: under the tta
cache, ``train/<protocol>/<method>/<target>/seed<K>-<hash>``); rerunning the same command
resumes a killed run. See :mod:`tta.training.loop` and :mod:`tta.training.benchmark`.

Every argument is checked before anything is written: a refused start (unknown name, bad
value, unreadable ``--pretrained``, unwritable ``--out``) prints one ``error:`` line, exits
2 and leaves no file behind. ``--pretrained none`` with frozen BatchNorm: see
:mod:`tta.training.model` (explicit ``--bn frozen`` is refused; a recipe's default becomes
``train``, with a one-line notice).

The ``--benchmark`` / ``--report`` store and table default to the user's tta folder
(:func:`tta.paths.user_home`), never the checkout's tracked ``leaderboard/``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tta.cli import Parser, guarded
from tta.errors import UserError
from tta.hparams import parse_assignments
from tta.paths import user_home, user_leaderboard_dir


def default_store() -> Path:
    """The DG result store of ``--benchmark`` / ``--report`` (the user's, never a tracked file)."""
    return user_home() / "dg_results.sqlite"


def default_table_dir() -> Path:
    return user_leaderboard_dir()


def build_parser() -> Parser:
    p = Parser(prog="python -m tta.train", description="Train DG source models (leave one domain out).")
    p.add_argument("--method", help="training method (see --list)")
    p.add_argument("--protocol", help="DG protocol: shapes_dg (offline default), pacs")
    p.add_argument("--target", help="held-out target domain (the others are the sources)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, minibatches and init (default 0)")
    p.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE", help="training-method hyperparameters")
    p.add_argument("--steps", type=int, help="training steps (default: the protocol's recipe)")
    p.add_argument("--checkpoint-every", type=int, help="steps between validation/checkpoints")
    p.add_argument("--batch-size", type=int, help="examples per source domain per step")
    p.add_argument("--model", help="network (registered or timm name, e.g. resnet18); default: the recipe's")
    p.add_argument("--pretrained", help="ImageNet weights file for the backbone (offline), timm, or none "
                   "(random init); default: the recipe's")
    p.add_argument("--bn", choices=("train", "frozen"), help="BatchNorm while training: train (re-estimate statistics) "
                   "or frozen (keep the pretrained ones; needs --pretrained); default: the recipe's")
    p.add_argument("--out", help="output folder of one training run")
    p.add_argument("--data-root", help="data root (default: $TTA_DATA, else the checkout's datasets/)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no status line between evaluations (it shows only "
                   "on a terminal anyway)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE", help="load a plugin file")
    p.add_argument("--benchmark", action="store_true", help="train and test the whole grid, print the DG table")
    p.add_argument("--report", action="store_true", help="print the DG table from the store only")
    p.add_argument("--methods", default="erm,sam,udim,ridg", help="benchmark: training methods")
    p.add_argument("--tta", default="source,alpha_bn", help="benchmark: test-time methods")
    p.add_argument("--seeds", default="0,1,2", help="benchmark: seeds")
    p.add_argument("--targets", help="benchmark: targets (default: every domain)")
    p.add_argument("--workers", type=int, default=2, help="benchmark: training processes (default 2)")
    p.add_argument("--store", help="benchmark: result store (default $TTA_HOME/dg_results.sqlite, "
                   "see tta.paths.user_home)")
    p.add_argument("--table", help="benchmark: markdown output (default $TTA_HOME/leaderboard/dg_<protocol>.md)")
    p.add_argument("--list", action="store_true", help="list training methods and their hyperparameters")
    return p


def list_methods() -> str:
    import tta.training  # noqa: F401 - registers the built-in training methods
    from tta.registry import TRAINING_METHODS

    lines = ["training methods:"]
    for name, cls in TRAINING_METHODS.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<6} {doc[0] if doc else ''}")
        lines.append("         " + ", ".join(f"{k}={v.default}" for k, v in cls.hparams.items()))
    return "\n".join(lines)


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _names(text)]
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers, got {text!r}") from None


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tta import plugins

    plugins.load_all(args.plugin)
    if args.list:
        print(list_methods())
        return 0
    if not args.protocol:
        raise UserError("--protocol is required (e.g. shapes_dg or pacs)")
    if args.benchmark or args.report:
        return table_command(args)
    if not args.method or not args.target:
        raise UserError("--method and --target are required (or --benchmark; see --help)")
    from tta.training.loop import TrainConfig, Training

    training = Training(TrainConfig(
        protocol=args.protocol, method=args.method, target=args.target, seed=args.seed,
        hparams=parse_assignments(args.hp), steps=args.steps, checkpoint_every=args.checkpoint_every,
        batch_size=args.batch_size, pretrained=args.pretrained, model=args.model, out=args.out, data_root=args.data_root,
        device=args.device, bn=args.bn))
    for notice in training.notices:
        print(notice, file=sys.stderr)
    print(f"{training.protocol.name}: {args.method} {training.hp} sources {[d.name for d in training.sources]} "
          f"-> target {training.target.name}, seed {args.seed}, {training.steps} steps, {training.model_name} "
          f"(pretrained {training.pretrained}, bn {training.bn}) -> {training.out}", file=sys.stderr)
    from tta.training.progress import Progress

    progress = Progress(training.steps, training.batch_size * len(training.sources), sys.stderr,
                        enabled=False if args.quiet else None, on_eval=_eval_line)
    try:
        summary = training.run(on_line=progress)
    finally:
        progress.close()
    print(json.dumps({k: summary[k] for k in ("step", "val_acc", "target_acc", "checkpoint")}))
    return 0


def _eval_line(line: dict) -> str:
    return (f"step {line['step']:>6}  val {100 * line['val_acc']:5.1f}%  target {100 * line['target_acc']:5.1f}%  "
            f"(best step {line['best_step']})")


def table_command(args) -> int:
    from tta.store import ResultStore

    store = ResultStore(args.store or default_store())
    started = time.perf_counter()
    if args.report:
        from tta.protocols import find_spec
        from tta.training.report import dg_records, dg_table, to_markdown

        spec = find_spec(args.protocol)
        records = dg_records(store.rows(), spec.name)
        if not records:
            raise UserError(f"no DG results for protocol {spec.name!r} in {store.path}")
        from tta.protocols import Protocol
        from tta.paths import data_root

        targets = [d.name for d in Protocol.create(spec, data_root(args.data_root)).domains(None)]
        markdown = to_markdown(dg_table(records, targets), f"{spec.name}: target-domain accuracy (%)")
    else:
        from tta.training.benchmark import run_benchmark

        markdown = run_benchmark(args.protocol, _names(args.methods), _names(args.tta), _seeds(args.seeds),
                                 _names(args.targets) if args.targets else None, store, workers=args.workers,
                                 steps=args.steps, data_root=args.data_root, device=args.device,
                                 on_line=lambda text: print(text, file=sys.stderr, flush=True))
    out = Path(args.table) if args.table else default_table_dir() / f"dg_{Path(args.protocol).stem}.md"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror}") from None
    print(markdown)
    print(f"wall time {time.perf_counter() - started:.0f} s; table written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
