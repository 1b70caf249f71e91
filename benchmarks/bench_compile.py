"""Compiled against eager ``tta.run`` on the same cells: the measurement behind
:func:`tta.runner.compile_pays` (warm-up cost and loop speed-up of ``torch.compile``).

Runs ``--method`` on 3 CIFAR-10-C corruptions x ``--n`` images, alternating eager and compiled
``--repeats`` times in one process (the first compiled run pays the cold compile, later ones
find inductor's on-disk cache), and prints each run's wall time, images/s per domain and errors.

    python benchmarks/bench_compile.py --method bn_adapt --data-root /tmp/tta-cifar10c-jpeg/engine-3 \\
        --checkpoint ../shared/data/cifar10_resnet20_akamaster.th [--n 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from tta.runner import Run, RunConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="bn_adapt")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for _ in range(args.repeats):
        for compiled in (False, True):
            run = Run(RunConfig(protocol="cifar10c", method=args.method, domains=["fog", "gaussian_noise", "snow"],
                                n_examples=args.n, data_root=args.data_root, checkpoint=args.checkpoint,
                                compile=compiled))
            start = time.perf_counter()
            rows = run.execute(None)
            print(f"{args.method} compiled={compiled}: {time.perf_counter() - start:.2f} s, img/s "
                  f"{[round(r['images_per_s']) for r in rows]}, error {[round(r['error'], 2) for r in rows]}",
                  flush=True)


if __name__ == "__main__":
    main()
