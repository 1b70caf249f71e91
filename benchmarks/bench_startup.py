"""Time from start-up to the end of the first batch of ``tta.run`` (median of ``--repeats`` runs).

Each repetition is a fresh ``python -m tta.run ... --verbose --no-store`` process; the script reads
the line ``--verbose`` prints (seconds from the package's import to the end of the first batch, and
its parts) and the process's whole wall time, and prints the medians. Default: ``bn_adapt`` and
``tent`` on the offline smoke protocol, plus CIFAR-10-C when ``--data-root`` and ``--checkpoint``
are given (one domain, ``--n-examples`` images).

    python benchmarks/bench_startup.py [--data-root /tmp/tta-cifar10c-jpeg/engine-3 \\
        --checkpoint ../shared/data/cifar10_resnet20_akamaster.th] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

LINE = re.compile(r"time to first batch ([\d.]+) s .*?arguments ([\d.]+) s; .*?set-up ([\d.]+) s; .*?batch\) ([\d.]+) s")


def measure(args: list[str], home: str) -> tuple[float, float, float, float, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tta.run", *args, "--verbose", "--no-store"], capture_output=True,
                          text=True, env={**os.environ, "TTA_HOME": home})
    wall = time.perf_counter() - start
    match = LINE.search(done.stderr)
    if done.returncode or not match:
        raise SystemExit(f"run failed: {' '.join(args)}\n{done.stderr[-2000:]}")
    return (*map(float, match.groups()), wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-root")
    parser.add_argument("--checkpoint")
    parser.add_argument("--n-examples", type=int, default=1000)
    args = parser.parse_args()
    cases = [(m, ["--method", m, "--protocol", "smoke", "--domains", "fog", "--n-examples", str(args.n_examples)])
             for m in ("bn_adapt", "tent")]
    if args.data_root and args.checkpoint:
        cases += [(f"{m} cifar10c", ["--method", m, "--protocol", "cifar10c", "--data-root", args.data_root,
                                     "--checkpoint", args.checkpoint, "--domains", "gaussian_noise",
                                     "--n-examples", str(args.n_examples)]) for m in ("bn_adapt", "tent")]
    print(f"medians of {args.repeats} fresh processes, torch threads default, {os.cpu_count()} CPUs")
    print("| run | first batch s | imports s | set-up s | data + first batch s | process wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as home:
        for name, run_args in cases:
            samples = [measure(run_args, home) for _ in range(args.repeats)]
            medians = [statistics.median(column) for column in zip(*samples)]
            print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in medians) + " |", flush=True)


if __name__ == "__main__":
    main()
