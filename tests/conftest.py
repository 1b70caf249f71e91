"""Shared fixtures. Real data comes from ``../shared/data`` (relative to the project root);
tests that need it skip cleanly where it is absent. Nothing here writes into the repo."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
CIFAR_NPZ = SHARED_DATA / "cifar10_test_jpeg.npz"
RESNET20 = SHARED_DATA / "cifar10_resnet20_akamaster.th"
# Gaussian-noise sigmas per severity of Hendrycks' CIFAR recipe; severity 5 = 0.10
NOISE_SIGMAS = (0.04, 0.06, 0.08, 0.09, 0.10)


@pytest.fixture(scope="session")
def cifar_test():
    """The 10,000 real CIFAR-10 test images (uint8 NHWC) and labels (int64)."""
    if not CIFAR_NPZ.is_file():
        pytest.skip(f"real CIFAR-10 test images not found at {CIFAR_NPZ}")
    data = np.load(CIFAR_NPZ)
    return data["images"], data["labels"].astype(np.int64)


@pytest.fixture(scope="session")
def resnet20_checkpoint() -> str:
    if not RESNET20.is_file():
        pytest.skip(f"pretrained ResNet-20 not found at {RESNET20}")
    return str(RESNET20)


def write_c_layout(root: Path, name: str, images: np.ndarray, labels: np.ndarray, make) -> Path:
    """``<root>/CIFAR-10-C/<name>.npy`` with severity s rows = ``make(images, s)``, and labels.npy."""
    folder = root / "CIFAR-10-C"
    folder.mkdir(parents=True, exist_ok=True)
    n = len(images)
    stacked = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(5 * n, *images.shape[1:]))
    for severity in range(1, 6):
        stacked[(severity - 1) * n: severity * n] = make(images, severity)
    stacked.flush()
    del stacked
    np.save(folder / "labels.npy", np.tile(labels.astype(np.uint8), 5))
    return root


def gaussian_noise(images: np.ndarray, severity: int) -> np.ndarray:
    """Additive Gaussian noise (seeded), sigma from :data:`NOISE_SIGMAS`, clipped to [0, 1]."""
    rng = np.random.default_rng(severity)
    noisy = images / 255.0 + rng.normal(0.0, NOISE_SIGMAS[severity - 1], images.shape)
    return np.clip(np.rint(np.clip(noisy, 0, 1) * 255), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def noise_root(tmp_path_factory, cifar_test) -> Path:
    """A CIFAR-10-C-layout root whose ``gaussian_noise`` domain is the real test set plus noise."""
    images, labels = cifar_test
    return write_c_layout(tmp_path_factory.mktemp("c10c"), "gaussian_noise", images, labels, gaussian_noise)


@pytest.fixture
def store_path(tmp_path) -> Path:
    return tmp_path / "results.sqlite"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Keep the download cache outside the repo (reuse $TTA_CACHE when set)."""
    if not os.environ.get("TTA_CACHE"):
        os.environ["TTA_CACHE"] = str(Path.home() / ".cache" / "tta")
    # a CLI run without --store writes the user's store: keep the tests' out of the real one
    os.environ["TTA_HOME"] = str(tmp_path_factory.mktemp("tta_home"))
    yield
