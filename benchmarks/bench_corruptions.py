"""Speed of tta.data.corruptions: images/s per corruption at 32x32 and 224x224, side by side with
the per-image ``imagecorruptions.corrupt`` (1.1.2), and the wall time of a full CIFAR-10-C build.

    python benchmarks/bench_corruptions.py [--n32 2000] [--n224 16] [--ref-n32 40] [--ref-n224 2] [--full]

Inputs are the real CIFAR-10 test images of ../shared/data (224x224: the same images enlarged,
bicubic). Every corruption is timed over all five severities, after one warm-up image per
severity (the one-time set-up the engine caches per image size and severity is left out, as
it is amortised over any real dataset). ``imagecorruptions`` is optional
(``pip install imagecorruptions 'setuptools<81'``: its module imports ``pkg_resources``); a
corruption it cannot run on this NumPy / scikit-image is reported as failing and left out of the
overall ratio. Both run on one thread (BLAS, OpenMP, OpenCV; ``TTA_BENCH_THREADS=N`` to change):
the ratios are per core. ``--full`` regenerates all 15 x 5 x 10,000 CIFAR-10-C images with
``python -m tta.data.make_c`` (all cores) into a temporary folder and reports the wall time.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

#: one core each, engine and reference alike (a per-core comparison); TTA_BENCH_THREADS overrides
THREADS = os.environ.get("TTA_BENCH_THREADS", "1")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, THREADS)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

cv2.setNumThreads(int(THREADS))

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tta.data.corruption_names import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, SEVERITIES  # noqa: E402
from tta.data.corruptions import corrupt  # noqa: E402

SHARED = ROOT / ".." / "shared" / "data" / "cifar10_test_jpeg.npz"


def ours_rate(images: np.ndarray, name: str) -> float:
    for s in SEVERITIES:  # one-time set-up excluded: kernels, textures, zoom operators (cached per size)
        corrupt(images[:1], name, s)
    start = time.perf_counter()
    for s in SEVERITIES:
        corrupt(images, name, s, seed=s)
    return len(images) * len(SEVERITIES) / (time.perf_counter() - start)


def reference_rate(ic, images: np.ndarray, name: str) -> float | str:
    try:
        ic.corrupt(images[0], corruption_name=name, severity=1)
        start = time.perf_counter()
        for s in SEVERITIES:
            for img in images:
                ic.corrupt(img, corruption_name=name, severity=s)
        return len(images) * len(SEVERITIES) / (time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - report what breaks in the reference
        return f"fails ({type(exc).__name__})"


def full_build(images: np.ndarray, labels: np.ndarray) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cifar-10-batches-py"
        folder.mkdir()
        with open(folder / "test_batch", "wb") as handle:
            pickle.dump({"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
                         "labels": labels.tolist()}, handle)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tta.data.make_c", "--dataset", "cifar10", "--data-root", tmp,
                        "--out", str(Path(tmp) / "CIFAR-10-C"), "--quiet"], check=True, cwd=ROOT)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n32", type=int, default=2000)
    parser.add_argument("--n224", type=int, default=16)
    parser.add_argument("--ref-n32", type=int, default=40)
    parser.add_argument("--ref-n224", type=int, default=2)
    parser.add_argument("--corruptions", default=",".join(ALL_CORRUPTIONS))
    parser.add_argument("--full", action="store_true", help="also time the full CIFAR-10-C build")
    args = parser.parse_args()
    data = np.load(SHARED)
    small = data["images"][:args.n32]
    big = np.stack([np.asarray(Image.fromarray(i).resize((224, 224), Image.BICUBIC))
                    for i in data["images"][:args.n224]])
    try:
        warnings.simplefilter("ignore")
        import imagecorruptions as ic
    except Exception as exc:  # noqa: BLE001
        ic = None
        print(f"imagecorruptions not importable ({type(exc).__name__}: {exc}); reporting ours only", file=sys.stderr)
    print(f"cpu cores: {os.cpu_count()}, threads per library: {THREADS}, load average at start: {os.getloadavg()[0]:.2f}")
    print("| corruption | ours 32 (img/s) | imagecorruptions 32 | x | ours 224 (img/s) | imagecorruptions 224 | x |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    totals = {32: [0.0, 0.0], 224: [0.0, 0.0]}
    extrapolated = 0.0  # seconds for 5 x 10,000 CIFAR images of every benchmark corruption, one process
    for name in args.corruptions.split(","):
        row = [name]
        for size, imgs, ref_n in ((32, small, args.ref_n32), (224, big, args.ref_n224)):
            ours = ours_rate(imgs, name)
            if size == 32 and name in BENCHMARK_CORRUPTIONS:
                extrapolated += 50_000 / ours
            ref = reference_rate(ic, imgs[:ref_n], name) if ic else "n/a"
            row += [f"{ours:,.1f}", f"{ref:,.1f}" if isinstance(ref, float) else ref,
                    f"{ours / ref:,.0f}x" if isinstance(ref, float) else "-"]
            if isinstance(ref, float):
                totals[size][0] += 1 / ours  # seconds per image, summed over corruptions
                totals[size][1] += 1 / ref
        print("| " + " | ".join(row) + " |", flush=True)
    for size, (ours_s, ref_s) in totals.items():
        if ref_s:
            print(f"overall {size}x{size} (one image through every corruption both run): "
                  f"ours {ours_s * 1e3:.2f} ms, imagecorruptions {ref_s * 1e3:.1f} ms, {ref_s / ours_s:.0f}x")
    print(f"extrapolated full CIFAR-10-C build from the 32x32 rates (one process, no I/O): {extrapolated:,.0f} s")
    if args.full:
        wall = full_build(data["images"], data["labels"])
        n = len(BENCHMARK_CORRUPTIONS) * len(SEVERITIES) * len(data["images"])
        print(f"full CIFAR-10-C build ({n:,} images, make_c, {os.cpu_count()} jobs): {wall:,.1f} s wall, "
              f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
