"""CIFAR-10 / CIFAR-100 test sets in torchvision's on-disk layout (the "python version" pickles).

    <root>/cifar-10-batches-py/test_batch      (Krizhevsky, 2009; 10,000 images, 10 classes)
    <root>/cifar-100-python/test               (10,000 images, 100 fine classes)

and, for methods that need clean source images (EATA's Fisher information), the training
batches beside them (``data_batch_1`` .. ``data_batch_5``; CIFAR-100: ``train``), read only if present.

Missing files are downloaded from the authors' site into ``<root>`` (archive MD5 checked, as
torchvision does); offline, the reader raises one :class:`tta.errors.UserError` line.

The batches are pickles: they are read with :mod:`tta.data.restricted_pickle`, which admits
only dicts, lists, strings and numpy arrays, so a crafted file cannot run code.
"""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tta.data import restricted_pickle
from tta.data.root import existing_root
from tta.download import download
from tta.errors import UserError


@dataclass(frozen=True)
class CifarSpec:
    name: str
    folder: str
    test_file: str
    label_key: str
    archive: str
    url: str
    md5: str
    corrupted_folder: str  # the official name of the -C benchmark folder
    num_classes: int
    train_files: tuple[str, ...] = ()


CIFAR: dict[str, CifarSpec] = {
    "cifar10": CifarSpec("CIFAR-10", "cifar-10-batches-py", "test_batch", "labels", "cifar-10-python.tar.gz",
                         "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                         "c58f30108f718f92721af3b95e74349a", "CIFAR-10-C", 10,
                         tuple(f"data_batch_{i}" for i in range(1, 6))),
    "cifar100": CifarSpec("CIFAR-100", "cifar-100-python", "test", "fine_labels", "cifar-100-python.tar.gz",
                          "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                          "eb9058c3a382ffc7106e4002c42a8d85", "CIFAR-100-C", 100, ("train",)),
}


def spec(dataset: str) -> CifarSpec:
    if dataset not in CIFAR:
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(CIFAR)}")
    return CIFAR[dataset]


def test_file(dataset: str, root: Path) -> Path:
    s = spec(dataset)
    return Path(root) / s.folder / s.test_file


def train_files(dataset: str, root: Path) -> list[Path]:
    """The training batches under ``root`` (all of them), or ``[]`` when any is missing."""
    s = spec(dataset)
    paths = [Path(root) / s.folder / name for name in s.train_files]
    return paths if paths and all(p.is_file() for p in paths) else []


def read_train_images(dataset: str, root: Path) -> np.ndarray:
    """The training images (uint8 N x 32 x 32 x 3 RGB, file order; labels not returned)."""
    return np.concatenate([_read_batch(dataset, path, "training batch")[0] for path in train_files(dataset, root)])


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch(dataset: str, root: Path) -> Path:
    """Make sure the test file is under ``root`` (download and unpack when missing)."""
    s, path = spec(dataset), test_file(dataset, root)
    if path.is_file():
        return path
    existing_root(root)  # download into a named root only if it exists
    archive = download(s.url, Path(root) / s.archive, None, f"{s.name} (python version)")
    if _md5(archive) != s.md5:
        archive.unlink(missing_ok=True)
        raise UserError(f"{archive} is not the {s.name} archive (MD5 mismatch); removed, run again to re-download")
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(Path(root), filter="data")
    if not path.is_file():
        raise UserError(f"{archive} did not contain {s.folder}/{s.test_file}")
    return path


def read_test_set(dataset: str, root: Path, fetch_missing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 32 x 32 x 3 RGB, labels uint8 N) of the CIFAR test set, in file order."""
    path = fetch(dataset, root) if fetch_missing else test_file(dataset, root)
    if not path.is_file():
        raise UserError(f"{spec(dataset).name} test set not found at {path}")
    return _read_batch(dataset, path, "test batch")


def write_batch(dataset: str, path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write ``images`` (uint8 N x 32 x 32 x 3 RGB) and ``labels`` as one CIFAR python batch file at
    ``path`` (the official layout: ``data`` N x 3072 channel-major, labels under the dataset's key),
    atomically; what :func:`read_test_set` reads back. For building data roots from image arrays
    (benchmarks, fixtures)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise UserError(f"CIFAR batch images must be uint8 N x 32 x 32 x 3, got {images.dtype} {images.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
             spec(dataset).label_key: np.asarray(labels).astype(int).tolist()}
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(pickle.dumps(batch, protocol=2))
    partial.replace(path)
    return path


def _read_batch(dataset: str, path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of one CIFAR python batch file; anything else is one :class:`UserError` line."""
    try:
        with open(path, "rb") as handle:
            batch = restricted_pickle.load(handle, encoding="latin1")
    except restricted_pickle.RefusedGlobal as exc:
        raise UserError(f"{path} is not a CIFAR {what}: it {exc}; refused without running it") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError, MemoryError) as exc:
        raise UserError(f"{path} is not a CIFAR {what} ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path} is not a CIFAR {what} (holds a {type(batch).__name__}, expected a dict)")
    # Python 2 wrote the keys as str; a batch re-pickled by Python 3 may carry bytes keys
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[spec(dataset).label_key], dtype=np.uint8)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise UserError(f"{path} is not a CIFAR {what} ({type(exc).__name__}: {exc})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise UserError(f"{path} holds data of shape {data.shape}, expected N x 3072")
    if len(labels) and labels.max() >= spec(dataset).num_classes:
        raise UserError(f"{path} holds label {int(labels.max())}; {spec(dataset).name} labels are "
                        f"0..{spec(dataset).num_classes - 1}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels
