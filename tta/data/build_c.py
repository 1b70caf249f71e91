"""Build CIFAR-10-C / CIFAR-100-C / ImageNet-C style benchmarks locally (the library behind
``python -m tta.data.make_c``; protocols call :func:`ensure_generated`).

    python -m tta.data.make_c --dataset cifar10 [--out DIR] [--data-root DIR] [--corruptions a,b] [--seed K]
    python -m tta.data.make_c --dataset cifar100 ...
    python -m tta.data.make_c --images FOLDER --out DIR [--corruptions a,b] [--seed K]

CIFAR output is the official layout (Hendrycks & Dietterich, ICLR 2019): ``<out>/<corruption>.npy``
(uint8 50000 x 32 x 32 x 3, severity s in rows ``(s-1)*10000 : s*10000``) and ``labels.npy``
(uint8, the test labels five times). ``--images`` reads ImageNet-style class folders
(``FOLDER/<class>/<image>``), resizes to 256 and centre-crops 224 as ImageNet-C did, and writes
``<out>/<corruption>/<severity>/<class>/<image>`` (JPEG quality 85 for .jpg/.jpeg names, as
ImageNet-C; other suffixes keep their format).

Every corruption is written to a temporary name and renamed when complete, so an interrupted run
resumes where it stopped; finished corruptions are skipped. ``manifest.json`` records the seed
and refuses to mix seeds in one folder. Image ``i`` of chunk ``k`` at severity ``s`` is corrupted
with ``numpy.random.default_rng([seed, corruption index, s, k])``: the same seed gives the same
bytes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from tta.data import cifar
from tta.data.corruption_names import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, SEVERITIES
from tta.errors import UserError
from tta.paths import data_root

CIFAR_CHUNK = 1000       # images per corruption call at 32x32
IMAGES_CHUNK = 32        # images per corruption call for --images (224x224)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp")


def generated_c_dir(dataset: str, root: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Where generated files live: ``<root>/<CIFAR-10-C>-generated/engine-<v>-seed-<seed>`` (official
    name + suffix; ``v`` is :data:`tta.data.corruptions.ENGINE_VERSION`, so a new engine builds anew)."""
    from tta.data.corruptions import ENGINE_VERSION

    return data_root(root) / f"{cifar.spec(dataset).corrupted_folder}-generated" / f"engine-{ENGINE_VERSION}-seed-{seed}"


def is_complete(path: Path, rows: int) -> bool:
    """A finished ``<corruption>.npy``: readable header, uint8, ``rows x 32 x 32 x 3``."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    return arr.dtype == np.uint8 and arr.shape == (rows, 32, 32, 3)


def _corrupt_chunk(task):
    images, name, severity, seed, chunk, recipe = task
    from tta.data.corruptions import corrupt
    rng = np.random.default_rng([seed, ALL_CORRUPTIONS.index(name), severity, chunk])
    return corrupt(images, name, severity, recipe=recipe, rng=rng)


def _init_worker() -> None:
    try:
        import cv2
        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


class _Progress:
    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.done, self.quiet, self.start = total, 0, quiet, time.perf_counter()

    def step(self, n: int, label: str) -> None:
        self.done += n
        if self.quiet:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate else 0.0
        end = "\r" if sys.stderr.isatty() and self.done < self.total else "\n"
        print(f"{label}: {self.done}/{self.total} images, {rate:,.0f} img/s, eta {eta:,.0f} s",
              end=end, file=sys.stderr, flush=True)


def _check_manifest(out: Path, info: dict) -> None:
    """Record how ``out`` is generated; refuse a folder generated with another seed, source,
    recipe or engine version (resuming would mix them)."""
    from tta.data.corruptions import ENGINE_VERSION

    info = {**info, "engine": "tta.data.corruptions", "engine_version": ENGINE_VERSION}
    path = out / "manifest.json"
    if path.is_file():
        old = json.loads(path.read_text())
        clash = {k: (old.get(k), v) for k, v in info.items()
                 if k in ("seed", "source", "recipe", "engine_version") and old.get(k) != v}
        if clash:
            raise UserError(f"{out} was generated with different settings {clash} (old, new); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")


def _pool(jobs: int) -> ProcessPoolExecutor | None:
    """Worker processes for corrupting chunks, started with ``spawn``: forking a process whose
    OpenMP / torch thread pools are running (any caller that used torch first) deadlocks."""
    if jobs <= 1:
        return None
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)


def _map(pool, tasks):
    return pool.map(_corrupt_chunk, tasks) if pool else map(_corrupt_chunk, tasks)


def build_cifar(dataset: str, out: Path, root: Path | None = None, corruptions=BENCHMARK_CORRUPTIONS,
                seed: int = 0, jobs: int = 1, quiet: bool = False) -> Path:
    """Write ``<out>/<corruption>.npy`` for each missing corruption and ``labels.npy``; returns ``out``."""
    images, labels = cifar.read_test_set(dataset, data_root(root))
    n = len(images)
    _check_manifest(out, {"source": dataset, "seed": seed, "recipe": "cifar",
                          "layout": "<corruption>.npy: severities 1..5 stacked, rows (s-1)*N : s*N"})
    labels_path = out / "labels.npy"
    if not labels_path.is_file():
        tmp = out / ".labels.npy.tmp"
        with open(tmp, "wb") as handle:
            np.save(handle, np.tile(labels, len(SEVERITIES)))
        os.replace(tmp, labels_path)
    todo = [c for c in corruptions if not is_complete(out / f"{c}.npy", n * len(SEVERITIES))]
    if not quiet:
        skipped = len(corruptions) - len(todo)
        print(f"{dataset}-C -> {out}: {len(todo)} corruptions to build"
              + (f", {skipped} already complete" if skipped else ""), file=sys.stderr)
    progress = _Progress(len(todo) * n * len(SEVERITIES), quiet)
    pool = _pool(jobs)
    try:
        for name in todo:
            tmp = out / f".{name}.npy.tmp"
            target = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n * len(SEVERITIES), 32, 32, 3))
            for severity in SEVERITIES:
                starts = range(0, n, CIFAR_CHUNK)
                tasks = [(images[a:a + CIFAR_CHUNK], name, severity, seed, k, "cifar") for k, a in enumerate(starts)]
                for a, result in zip(starts, _map(pool, tasks)):
                    target[(severity - 1) * n + a:(severity - 1) * n + a + len(result)] = result
                    progress.step(len(result), f"{name} s{severity}")
            target.flush()
            del target
            os.replace(tmp, out / f"{name}.npy")
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return out


def ensure_generated(dataset: str, root: str | os.PathLike | None = None, seed: int = 0,
                     corruptions=BENCHMARK_CORRUPTIONS, jobs: int | None = None, quiet: bool = False) -> Path:
    """The folder of a generated ``<dataset>-C`` (official layout), building what is missing.

    For protocols: when ``<root>/CIFAR-10-C`` is absent but CIFAR-10 is present, read from the
    returned folder instead (``data_source: generated``).
    """
    return build_cifar(dataset, generated_c_dir(dataset, root, seed), root, tuple(corruptions), seed,
                       jobs or os.cpu_count() or 1, quiet)


def _image_files(folder: Path) -> list[tuple[str, Path]]:
    if not folder.is_dir():
        raise UserError(f"--images {folder} is not a folder")
    files = [(cls.name, f) for cls in sorted(p for p in folder.iterdir() if p.is_dir())
             for f in sorted(cls.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UserError(f"--images {folder} has no class folders with images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _load_224(path: Path) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = 256 / min(w, h)
            im = im.resize((max(256, round(w * scale)), max(256, round(h * scale))), Image.BILINEAR)
            left, top = (im.size[0] - 224) // 2, (im.size[1] - 224) // 2
            return np.asarray(im.crop((left, top, left + 224, top + 224)))
    except OSError as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def _save(img: np.ndarray, path: Path) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(img).save(path, quality=85, optimize=True)
    else:
        Image.fromarray(img).save(path)


def build_image_folder(folder: Path, out: Path, corruptions=BENCHMARK_CORRUPTIONS, seed: int = 0,
                       jobs: int = 1, quiet: bool = False) -> Path:
    """ImageNet-C layout: ``<out>/<corruption>/<severity>/<class>/<image>``, one finished folder per corruption."""
    files = _image_files(folder)
    _check_manifest(out, {"source": str(folder.resolve()), "seed": seed, "recipe": "imagenet",
                          "preprocess": "resize 256, center crop 224"})
    todo = [c for c in corruptions if not (out / c).is_dir()]
    progress = _Progress(len(todo) * len(files) * len(SEVERITIES), quiet)
    pool = _pool(jobs)
    try:
        for name in todo:
            tmp = out / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            for k, a in enumerate(range(0, len(files), IMAGES_CHUNK)):
                part = files[a:a + IMAGES_CHUNK]
                batch = np.stack([_load_224(f) for _, f in part])
                tasks = [(batch, name, s, seed, k, None) for s in SEVERITIES]
                for severity, result in zip(SEVERITIES, _map(pool, tasks)):
                    for (cls, f), img in zip(part, result):
                        _save(img, tmp / str(severity) / cls / f.name)
                    progress.step(len(part), f"{name} s{severity}")
            os.replace(tmp, out / name)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return out
