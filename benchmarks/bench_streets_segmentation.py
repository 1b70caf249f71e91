"""The offline segmentation benchmark: mIoU table and CPU seconds per image of every method.

    python benchmarks/bench_streets_segmentation.py [--methods source,bn_adapt,alpha_bn,core,cma] [--store FILE]

Runs ``streets_smoke`` (procedural street scenes; source model ``builtin:street_seg``,
shipped with the package) for each method, all domains, seed 0, and prints the mIoU per
domain with the mean, and ``method_s / n`` (seconds per image spent in the method, CPU).
A method that fails on segmentation is listed with its one-line error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from tabulate import tabulate

    from tta.errors import UserError
    from tta.runner import Run, RunConfig
    from tta.store import ResultStore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="source,bn_adapt,adabn,alpha_bn,core,cma")
    parser.add_argument("--store", help="also append the rows to this result store")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    store = ResultStore(args.store) if args.store else None
    table, failures = [], []
    for method in args.methods.split(","):
        try:
            rows = Run(RunConfig("streets_smoke", method, device=args.device)).execute(store)
        except UserError as exc:
            failures.append(f"{method}: {exc}")
            continue
        mious = {r["domain"]: r["extra"]["miou"] for r in rows}
        seconds = sum(r["method_s"] for r in rows) / sum(r["n"] for r in rows)
        table.append([method, *(f"{v:.1f}" for v in mious.values()), f"{sum(mious.values()) / len(mious):.1f}",
                      f"{seconds:.4f}"])
        domains = list(mious)
    print(tabulate(table, headers=["method", *domains, "mean mIoU", "s / image"], tablefmt="github"))
    for line in failures:
        print("failed:", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
