"""CIFAR-10-C and CIFAR-100-C readers (Hendrycks & Dietterich, ICLR 2019), official layout.

    <root>/CIFAR-10-C/<corruption>.npy   uint8 50000 x 32 x 32 x 3, severities 1..5 stacked:
                                         severity s is rows (s-1)*10000 : s*10000
    <root>/CIFAR-10-C/labels.npy         the 10,000 test labels, 5 times
    (CIFAR-100-C the same under <root>/CIFAR-100-C)

Files are memory-mapped and only the 10,000 rows of the requested severity are read.
Where the official files are missing, in this order:

1. the CIFAR test set is in the data root (torchvision's layout): the missing corruptions
   are generated with tta's corruption engine into ``<root>/CIFAR-10-C-generated/engine-<v>-seed-0``
   (once; :func:`tta.data.build_c.ensure_generated`) and rows record ``data_source:
   generated``;
2. online: the official archive is downloaded from Zenodo (md5-checked) and unpacked;
3. offline: one error line naming the root, the layout and both ways to get the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tta.data import cifar
from tta.data.corruption_names import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS
from tta.download import download
from tta.errors import UserError
from tta.protocols.base import DatasetReader, DomainData, SourceImages
from tta.registry import DATASETS
from tta.types import Domain

def read_severity(path: Path, severity: int) -> np.ndarray:
    """Rows of one severity from a stacked ``.npy`` file, via a memory map (never all five).

    The file holds five equal blocks of rows, severity ``s`` being block ``s - 1``
    (10,000 rows each in the official files).
    """
    try:
        stacked = np.load(path, mmap_mode="r", allow_pickle=False)  # an object array would unpickle
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path} is truncated or not a .npy array ({exc})") from None
    if not isinstance(stacked, np.ndarray) or stacked.ndim == 0:
        raise UserError(f"{path} holds a {type(stacked).__name__} without rows; expected a stacked .npy array")
    if stacked.shape[0] == 0 or stacked.shape[0] % 5:
        raise UserError(f"{path} has {stacked.shape[0]} rows; expected 5 equal severity blocks")
    rows = stacked.shape[0] // 5
    return np.ascontiguousarray(stacked[(severity - 1) * rows: severity * rows])


def provenance(folder: Path) -> str:
    """``official``, unless the folder's ``PROVENANCE.json`` names its ``data_source`` (or ``note``):
    self-built data in the official layout must say so; rows and run identities carry the label."""
    import json

    record = folder / "PROVENANCE.json"
    if not record.is_file():
        return "official"
    try:
        info = json.loads(record.read_text())
        return str(info.get("data_source") or info["note"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{record} must be a JSON object with a 'data_source' (or 'note') label") from None


class CorruptedStack(DatasetReader):
    """Reader of the ``<folder>/<corruption>.npy`` + ``labels.npy`` layout."""

    cifar: str = "cifar10"  # key of tta.data.cifar.CIFAR
    url: str = ""
    md5: str = ""
    domains = ALL_CORRUPTIONS
    default_domains = BENCHMARK_CORRUPTIONS
    image_size = (32, 32)  # the CIFAR format: any other size is another dataset, refused on load

    def __init__(self) -> None:
        self.located: tuple[Path, str] | None = None

    @property
    def folder(self) -> str:
        return cifar.spec(self.cifar).corrupted_folder

    def check(self, domains: list[Domain], root: Path) -> None:
        self.located = self.locate(domains, root)
        self.data_source = self.located[1]
        if self.data_source == "generated":
            from tta.data.corruptions import ENGINE_VERSION

            self.corruption_engine = ENGINE_VERSION

    def data_files(self, domains: list[Domain], root: Path) -> list[Path]:
        directory = (self.located or self.locate(domains, root))[0]
        names = ["labels.npy", *dict.fromkeys(f"{d.name}.npy" for d in domains), "PROVENANCE.json"]
        return [directory / name for name in names if (directory / name).is_file()]

    def locate(self, domains: list[Domain], root: Path) -> tuple[Path, str]:
        """(folder, data_source) holding every needed file, generating or downloading if needed."""
        official = root / self.folder
        needed = ["labels.npy", *(f"{d.name}.npy" for d in domains)]
        missing = [name for name in needed if not (official / name).is_file()]
        if not missing:
            return official, provenance(official)
        if cifar.test_file(self.cifar, root).is_file():
            from tta.data.build_c import ensure_generated

            names = tuple(dict.fromkeys(d.name for d in domains))
            return ensure_generated(self.cifar, root, corruptions=names), "generated"
        try:
            self.fetch(root)
        except UserError as exc:
            raise UserError(f"{self.folder} data missing: {official / missing[0]} not found ({len(missing)} of "
                            f"{len(needed)} files missing; expected <root>/{self.folder}/<corruption>.npy + "
                            f"labels.npy with data root {root} from --data-root, $TTA_DATA or the default); "
                            f"put the official files there, or the {cifar.spec(self.cifar).name} test set "
                            f"({cifar.spec(self.cifar).folder}/) to generate them; automatic download failed: {exc}"
                            ) from None
        return official, "official"

    def source_images(self, root: Path, n: int) -> SourceImages | None:
        """Clean CIFAR images for methods that need source data: the training batches
        (``<root>/<cifar folder>/data_batch_*``, as MD's EATA samples its Fisher data from the
        training set) when present, else the clean *test* images (``test_batch``): label-free, but
        the clean versions of the test images the run then scores, which the rows say
        (``description``); ``None`` when neither is under ``root``."""
        name = cifar.spec(self.cifar).name
        files = cifar.train_files(self.cifar, root)
        if files:
            return SourceImages(lambda: cifar.read_train_images(self.cifar, root), f"{name} training images", files)
        test = cifar.test_file(self.cifar, root)
        if test.is_file():
            return SourceImages(lambda: cifar.read_test_set(self.cifar, root, fetch_missing=False)[0], f"clean {name} test images (no training batches under "
                                        f"{test.parent}; the clean versions of the test images)", [test])
        return None

    def fetch(self, root: Path) -> None:
        """Download and unpack the official archive (md5-checked, progress on stderr)."""
        import tarfile

        archive = download(self.url, root / Path(self.url).name, self.md5, f"the {self.folder} archive", algorithm="md5")
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        archive.unlink()

    def load(self, domain: Domain, root: Path) -> DomainData:
        """Severity rows of ``<corruption>.npy`` and ``labels.npy``; shapes, dtype and label range
        are checked by :func:`tta.protocols.base.check_domain_data` (naming the file)."""
        directory, source = self.located or self.locate([domain], root)
        images = read_severity(directory / f"{domain.name}.npy", domain.severity)
        labels = read_severity(directory / "labels.npy", domain.severity)
        rows = f"(severity {domain.severity} rows)"
        return DomainData(images, labels, source, origin=f"{directory / (domain.name + '.npy')} {rows}",
                          label_origin=f"{directory / 'labels.npy'} {rows}")


@DATASETS.register("cifar10c")
class Cifar10C(CorruptedStack):
    """CIFAR-10-C, official layout <root>/CIFAR-10-C/<corruption>.npy + labels.npy (or generated)."""

    cifar = "cifar10"
    url = "https://zenodo.org/record/2535967/files/CIFAR-10-C.tar"
    md5 = "56bf5dcef84df0e2308c6dcbcbbd8499"


@DATASETS.register("cifar100c")
class Cifar100C(CorruptedStack):
    """CIFAR-100-C, official layout <root>/CIFAR-100-C/<corruption>.npy + labels.npy (or generated)."""

    cifar = "cifar100"
    url = "https://zenodo.org/record/3555552/files/CIFAR-100-C.tar"
    md5 = "11f0ed0f1191edbf9fa23466ae6021d3"
