"""CIFAR-10-C reader (Hendrycks & Dietterich, ICLR 2019), official on-disk layout.

    <root>/CIFAR-10-C/<corruption>.npy   uint8 50000 x 32 x 32 x 3, severities 1..5 stacked:
                                         severity s is rows (s-1)*10000 : s*10000
    <root>/CIFAR-10-C/labels.npy         uint8/int 50000 (the 10,000 test labels, 5 times)

Files are memory-mapped and only the 10,000 rows of the requested severity are read.
Missing data: downloaded from Zenodo when online (2.9 GB tar, md5-checked by the
record), else one clear error naming the root and the layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tta.data.corruption_names import ALL_CORRUPTIONS
from tta.download import download
from tta.errors import UserError
from tta.protocols.base import DatasetReader, DomainData
from tta.registry import DATASETS
from tta.types import Domain

PER_SEVERITY = 10_000
ZENODO_URL = "https://zenodo.org/record/2535967/files/CIFAR-10-C.tar"
ZENODO_MD5 = "56bf5dcef84df0e2308c6dcbcbbd8499"


def read_severity(path: Path, severity: int, rows: int = PER_SEVERITY) -> np.ndarray:
    """Rows of one severity from a stacked ``.npy`` file, via a memory map (never all five)."""
    try:
        stacked = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path} is truncated or not a .npy array ({exc})") from None
    if stacked.shape[0] < 5 * rows:
        raise UserError(f"{path} has {stacked.shape[0]} rows; expected {5 * rows} (5 severities x {rows})")
    return np.ascontiguousarray(stacked[(severity - 1) * rows: severity * rows])


class CorruptedStack(DatasetReader):
    """Reader of the ``<folder>/<corruption>.npy`` + ``labels.npy`` layout (CIFAR-10-C, CIFAR-100-C)."""

    folder = "CIFAR-10-C"
    url = ZENODO_URL
    md5 = ZENODO_MD5
    domains = ALL_CORRUPTIONS

    def directory(self, root: Path) -> Path:
        return root / self.folder

    def check(self, domains: list[Domain], root: Path) -> None:
        directory = self.directory(root)
        needed = ["labels.npy", *(f"{d.name}.npy" for d in domains)]
        missing = [name for name in needed if not (directory / name).is_file()]
        if not missing:
            return
        try:
            self.fetch(root)
        except UserError as exc:
            raise UserError(f"{self.folder} data missing: {directory / missing[0]} not found ({len(missing)} of "
                            f"{len(needed)} files missing; expected <root>/{self.folder}/<corruption>.npy + labels.npy "
                            f"with data root {root} from --data-root, $TTA_DATA or the default); automatic download "
                            f"failed: {exc}") from None

    def fetch(self, root: Path) -> None:
        """Download and unpack the official archive (md5-checked, progress on stderr)."""
        import tarfile

        archive = download(self.url, root / Path(self.url).name, self.md5, f"the {self.folder} archive", algorithm="md5")
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        archive.unlink()

    def load(self, domain: Domain, root: Path) -> DomainData:
        directory = self.directory(root)
        images = read_severity(directory / f"{domain.name}.npy", domain.severity)
        labels = read_severity(directory / "labels.npy", domain.severity).astype(np.int64)
        if images.ndim != 4 or images.dtype != np.uint8 or len(labels) != len(images):
            raise UserError(f"{directory / (domain.name + '.npy')} is not uint8 N x H x W x C with matching labels")
        return DomainData(images, labels, "official")


@DATASETS.register("cifar10c")
class Cifar10C(CorruptedStack):
    """CIFAR-10-C, official layout <root>/CIFAR-10-C/<corruption>.npy + labels.npy."""
