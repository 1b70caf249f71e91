"""``python -m tta.data.make_c``: build CIFAR-10-C / CIFAR-100-C / ImageNet-C style benchmarks locally.

    python -m tta.data.make_c --dataset cifar10 [--out DIR] [--data-root DIR] [--corruptions a,b] [--seed K]
    python -m tta.data.make_c --dataset cifar100 ...
    python -m tta.data.make_c --images FOLDER --out DIR [--corruptions a,b] [--seed K]

Layouts, resumability and seeding: see :mod:`tta.data.build_c`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tta.cli import Parser, guarded
from tta.data import cifar
from tta.data.build_c import build_cifar, build_image_folder, generated_c_dir
from tta.data.corruption_names import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS
from tta.errors import UserError


def _corruption_list(text: str | None) -> tuple[str, ...]:
    if not text:
        return BENCHMARK_CORRUPTIONS
    if text == "all":
        return ALL_CORRUPTIONS
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in names if t not in ALL_CORRUPTIONS]
    if unknown:
        raise UserError(f"unknown corruption(s) {', '.join(unknown)}; choose from: {', '.join(ALL_CORRUPTIONS)}")
    return names


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m tta.data.make_c", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=sorted(cifar.CIFAR), help="CIFAR test set from the data root")
    source.add_argument("--images", type=Path, help="folder of class folders of images (ImageNet style)")
    parser.add_argument("--out", type=Path, help="output folder (default for --dataset: "
                        "<data root>/<CIFAR-10-C>-generated/seed-<seed>)")
    parser.add_argument("--data-root", help="data root (default: $TTA_DATA, else the checkout's datasets/)")
    parser.add_argument("--corruptions", help="comma-separated names, or 'all' (default: the 15 benchmark ones)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    names = _corruption_list(args.corruptions)
    if args.jobs < 1:
        raise UserError("--jobs must be at least 1")
    if "frost" in names:
        from tta.data.corruptions import frost_dir
        frost_dir()  # fail before any work when the textures are missing
    start = time.perf_counter()
    if args.images is not None:
        if args.out is None:
            raise UserError("--images needs --out")
        out = build_image_folder(args.images, args.out, names, args.seed, args.jobs, args.quiet)
    else:
        out = args.out or generated_c_dir(args.dataset, args.data_root, args.seed)
        out = build_cifar(args.dataset, out, args.data_root, names, args.seed, args.jobs, args.quiet)
    if not args.quiet:
        print(f"done in {time.perf_counter() - start:,.1f} s: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
