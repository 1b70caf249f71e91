"""``python -m tta.run``: run one method on one protocol and store one row per domain.

    python -m tta.run --method alpha_bn --protocol cifar10c [--hp alpha=0.2] [--seed 1]
    python -m tta.run --list
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import tta
from tta.cli import Parser, guarded
from tta.errors import UserError
from tta.hparams import parse_assignments
from tta.paths import user_store
from tta.status_line import RunProgress

DEFAULT_STORE = user_store()


def build_parser() -> Parser:
    p = Parser(prog="python -m tta.run", description="Run a test-time method on a protocol.")
    p.add_argument("--method", help="method name (see --list)")
    p.add_argument("--protocol", help="protocol name or path to a spec .toml")
    p.add_argument("--data-root", help="data root (default: $TTA_DATA, else the checkout's datasets/)")
    p.add_argument("--model", help="model name: registered, or any timm model (needs --checkpoint)")
    p.add_argument("--checkpoint", help="checkpoint path, URL, builtin:NAME, torchvision:<WEIGHTS_ENUM> (or "
                                        "torchvision:<TAG> for --model's architecture), timm:<model>.<tag> or "
                                        "robustbench:[<dataset>/<threat_model>/]<name> (weights-only loading)")
    p.add_argument("--domains", help="comma-separated domains (default: all, canonical order)")
    p.add_argument("--target", dest="domains", help="alias of --domains (DG protocols: the held-out domain)")
    p.add_argument("--severity", type=int, help="corruption severity 1..5")
    p.add_argument("--batch-size", type=int, help="test batch size")
    p.add_argument("--n-examples", type=int, help="examples per domain (default: all)")
    p.add_argument("--input-size", metavar="HxW", help="segmentation: resize images to HxW, e.g. 540x960 "
                                                        "(default: the protocol's per-domain size)")
    p.add_argument("--split", help="segmentation: dataset split to read, train, val or test (default val)")
    p.add_argument("--sliding-window", metavar="CROP,STRIDE", help="segmentation: sliding-window inference, "
                                                                 "e.g. 512,341 or 512x1024,341x683 (default: whole image)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stream order and the method (default 0)")
    p.add_argument("--scenario", help="scenario NAME or NAME:key=value,... e.g. dirichlet:delta=0.01 "
                                      "(default: the protocol's; see --list)")
    p.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE", help="method hyperparameters")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="load a plugin file (methods, models, dataset readers)")
    p.add_argument("--store", default=str(DEFAULT_STORE),
                   help=f"SQLite result store (default {DEFAULT_STORE}; $TTA_HOME moves it)")
    p.add_argument("--no-store", action="store_true", help="do not read or write the store")
    p.add_argument("--json", metavar="FILE", help="also write the per-domain rows as a JSON list")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--force", action="store_true", help="recompute cells already in the store")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the adapted model: --compile always, --no-compile never; default: when the "
                        "run is long enough to repay the warm-up (100,000 images) and a compiler is present")
    p.add_argument("--verbose", action="store_true",
                   help="also print the time from start-up to the end of the first batch, and its parts")
    p.add_argument("--list", action="store_true", help="list methods, protocols, models, scenarios")
    return p


def list_everything() -> str:
    from tta import runner  # noqa: F401 - registers everything
    from tta.protocols import available_specs, find_spec
    from tta.registry import DATASETS, METHODS, MODELS, SCENARIOS

    lines = ["methods:"]
    for name, cls in METHODS.items():
        hps = ", ".join(f"{k}={v.default}" for k, v in cls.hparams.items())
        doc = (cls.__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<12} {doc[0] if doc else ''}" + (f"  [{hps}]" if hps else ""))
    lines.append("protocols:")
    for name in available_specs():
        lines.append(f"  {name:<12} {find_spec(name).description}")
    lines.append("models:")
    for name, entry in MODELS.items():
        lines.append(f"  {name:<12} {entry.doc}")
    lines.append("  <timm name>  any timm model, e.g. resnet50 (give --checkpoint)")
    lines.append("scenarios:")
    for name, cls in SCENARIOS.items():
        params = ", ".join(f"{k}={v.default}" for k, v in getattr(cls, "hparams", {}).items())
        lines.append(f"  {name:<12} {(cls.__doc__ or '').strip().splitlines()[0]}" + (f"  [{params}]" if params else ""))
    lines.append("datasets:")
    for name, cls in DATASETS.items():
        lines.append(f"  {name:<12} {(cls.__doc__ or '').strip().splitlines()[0]}")
    return "\n".join(lines)


def format_row(row: dict) -> str:
    miou = (row.get("extra") or {}).get("miou")
    score = f"mIoU {miou:6.2f}%" if miou is not None else f"error {row['error']:6.2f}%"
    return (f"{row['domain']:<22} {score}  nll {row['nll']:.3f}  ece {row['ece']:5.2f}%  "
            f"n {row['n']:>6}  {row['images_per_s']:8.1f} img/s")


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tta import plugins

    plugins.load_all(args.plugin)
    if args.list:
        print(list_everything())
        return 0
    if not args.method or not args.protocol:
        raise UserError("--method and --protocol are required (see --list)")
    from tta.models.seg_inference import parse_window
    from tta.protocols.spec import parse_size
    from tta.runner import Run, RunConfig
    from tta.store import ResultStore

    domains = None
    if args.domains is not None:
        domains = [d.strip() for d in args.domains.split(",") if d.strip()]
        if not domains:
            raise UserError(f"--domains {args.domains!r} names no domain (give comma-separated names, see --list)")
    json_path = Path(args.json).expanduser() if args.json else None
    if json_path is not None:
        check_writable(json_path)
    config = RunConfig(
        protocol=args.protocol, method=args.method, hparams=parse_assignments(args.hp), seed=args.seed,
        model=args.model, checkpoint=args.checkpoint, domains=domains,
        severity=args.severity, batch_size=args.batch_size, n_examples=args.n_examples,
        scenario=args.scenario, data_root=args.data_root, device=args.device, compile=args.compile,
        input_size=parse_size(args.input_size, "--input-size") if args.input_size else None, split=args.split,
        sliding_window=parse_window(args.sliding_window) if args.sliding_window else None,
    )
    set_up_at = time.perf_counter()
    run = Run(config)  # every input validated before the store is touched: a failed start creates nothing
    built_at = time.perf_counter()
    store = None if args.no_store else ResultStore(args.store)
    print(f"{run.protocol.name} / {run.scenario_name} / {run.method.name} {run.method.hp or ''} "
          f"seed {config.seed} / {run.model_name} ({run.checkpoint_sha256[:12]})", file=sys.stderr)
    fresh: list[str] = []

    progress = RunProgress(sys.stderr)

    def show(row: dict) -> None:
        progress.clear()
        fresh.append(row["domain"])
        print(format_row(row), flush=True)
        if args.verbose and len(fresh) == 1 and run.first_batch_s is not None:
            print(f"time to first batch {run.first_batch_s:.2f} s after tta was imported: imports and arguments "
                  f"{set_up_at - tta.STARTED:.2f} s; protocol, model and method set-up {built_at - set_up_at:.2f} s; "
                  f"the rest (data, first batch) {run.first_batch_s - (built_at - tta.STARTED):.2f} s",
                  file=sys.stderr, flush=True)

    try:
        rows = run.execute(store, force=args.force, on_row=show, on_batch=progress)
    finally:
        progress.clear()
    stored = [r for r in rows if r["domain"] not in fresh]
    for row in stored:
        print(format_row(row) + "  (stored)")
    if stored:
        print(f"{len(stored)} of {len(rows)} domains came from the store {store.path} (--force recomputes them)",
              file=sys.stderr)
    if json_path is not None:
        write_json(json_path, rows)
    errors = [r["error"] for r in rows if r["error"] is not None and not math.isnan(r["error"])]
    if errors:
        mean = sum(errors) / len(errors)
        dense = all((r.get("extra") or {}).get("miou") is not None for r in rows)
        score = f"mIoU  {100 - mean:6.2f}%" if dense else f"error {mean:6.2f}%"
        print(f"{'mean':<22} {score}  over {len(errors)} domains" + (f"  (store: {store.path})" if store else ""))
    return 0


def check_writable(path: Path) -> None:
    """Refuse, before any work, a ``--json`` file that could not be written at the end."""
    folder = path.parent
    if path.is_dir():
        raise UserError(f"--json {str(path)!r} is a folder; give a file path")
    if not folder.is_dir():
        raise UserError(f"--json {str(path)!r}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"--json {str(path)!r} is not writable")


def write_json(path: Path, rows: list[dict]) -> None:
    keep = ("domain", "severity", "error", "nll", "ece", "n", "images_per_s", "method_s", "wall_s", "peak_mem_mb",
            "protocol", "scenario", "method", "hparams", "seed", "model", "checkpoint_sha256", "data_source",
            "data_root", "data_fingerprint", "extra")
    try:
        path.write_text(json.dumps([{k: r.get(k) for k in keep} for r in rows], indent=1))
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())
