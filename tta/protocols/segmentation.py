"""Readers of the public segmentation datasets, in their official on-disk layouts.

Under the data root (``--data-root`` / ``$TTA_DATA``)::

    gta5/images/<name>.png                  GTA5 (Richter et al., ECCV 2016), label IDs in
    gta5/labels/<name>.png                  the Cityscapes definition
    cityscapes/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png          (Cordts et al., CVPR 2016)
    cityscapes/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png
    acdc/rgb_anon/<condition>/<split>/<sequence>/<stem>_rgb_anon.png     (Sakaridis et al., ICCV 2021)
    acdc/rgb_anon/<condition>/<split>_ref/<sequence>/<stem>_rgb_ref_anon.png   normal-condition reference
    acdc/gt/<condition>/<split>/<sequence>/<stem>_gt_labelTrainIds.png   (or _gt_labelIds.png)

``<split>`` is ``val`` unless ``--split`` (or the spec's ``split``) names ``train`` or
``test``; the official test labels are withheld by both datasets' authors, so a test run
needs label files placed there. GTA5's layout has no split folders.

Labels are read as Cityscapes label IDs and mapped to the 19 train IDs (everything else
255, ignored) by :mod:`tta.data.cityscapes_labels`. ACDC ships both label kinds; CMA's and
mmseg's loaders read ``*_gt_labelTrainIds.png`` (train IDs already, 255 ignored), so a
condition whose every image has one is read from those, else from ``*_gt_labelIds.png``;
which one is recorded in every row (``extra["label_format"]``) and, through the file
names, in the data fingerprint of the run's identity. Images are large, so
``DomainData.images`` is a lazy :class:`PngStack`: ``stack[idx]`` decodes only the rows
asked for, resized (bilinear, antialiased) to the reader's ``input_size``, the resolution
the network sees (``--input-size HxW`` / the spec's ``input_size`` overrides the
per-domain default; the resolved size is part of the run's identity and of every row's
``extra["input_size"]``). Labels keep their native size (resized with nearest neighbour only if
files differ in size), and the metrics upsample logits to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tta.data.cityscapes_labels import TRAIN_CLASSES, to_train_ids
from tta.errors import UserError
from tta.protocols.base import DatasetReader, DomainData
from tta.registry import DATASETS
from tta.types import Domain


class PngStack:
    """A lazy ``N x H x W (x C)`` uint8 array over PNG files: ``len()`` and ``stack[idx]`` (int or index array).

    ``size`` = ``(height, width)`` to resize to; ``None`` keeps the first file's size.
    ``label=True`` reads single-channel maps (nearest-neighbour resize) through ``transform``.
    """

    def __init__(self, paths: Sequence[Path], size: tuple[int, int] | None = None, label: bool = False,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.paths = list(paths)
        self.size = size
        self.label = label
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, path: Path):
        from PIL import Image

        try:
            with Image.open(path) as handle:
                if not self.label:
                    image = handle.convert("RGB")
                else:  # label IDs: 8-bit grey (Cityscapes, ACDC) or palette indices (GTA5)
                    image = handle.copy() if handle.mode in ("L", "P") else handle.convert("L")
        except OSError as exc:
            raise UserError(f"cannot read image {path} ({exc})") from None
        return image

    def _target_size(self) -> tuple[int, int]:
        if self.size is None:
            self.size = self._read(self.paths[0]).size[::-1]
        return self.size

    def read(self, i: int) -> np.ndarray:
        from PIL import Image

        image = self._read(self.paths[i])
        height, width = self._target_size()
        if image.size != (width, height):
            image = image.resize((width, height), Image.NEAREST if self.label else Image.BILINEAR)
        array = np.asarray(image)
        if self.label:
            array = array.astype(np.uint8)
        return self.transform(array) if self.transform is not None else array

    def __getitem__(self, idx) -> np.ndarray:
        if np.isscalar(idx):
            return self.read(int(idx))
        return np.stack([self.read(int(i)) for i in np.asarray(idx).reshape(-1)])


def _missing(what: str, path: Path, layout: str, root: Path) -> UserError:
    return UserError(f"{what} not found: {path} (expected layout {layout} under data root {root}; "
                     f"--data-root or $TTA_DATA)")


def _require_dir(path: Path, what: str, layout: str, root: Path) -> None:
    if not path.is_dir():
        raise _missing(what, path, layout, root)


def _paired(images: list[Path], counterpart: Callable[[Path], Path], what: str, layout: str, root: Path) -> list[Path]:
    """The counterpart file of every image; a missing one is an error naming it."""
    found = [counterpart(p) for p in images]
    absent = [p for p in found if not p.is_file()]
    if absent:
        raise UserError(f"{len(absent)} of {len(found)} {what} missing, e.g. {absent[0]} "
                        f"(expected layout {layout} under data root {root})")
    return found


GTA5_LAYOUT = "gta5/images/<name>.png + gta5/labels/<name>.png"
CITYSCAPES_LAYOUT = ("cityscapes/leftImg8bit/<split>/<city>/*_leftImg8bit.png + "
                     "cityscapes/gtFine/<split>/<city>/*_gtFine_labelIds.png")
ACDC_LAYOUT = ("acdc/rgb_anon/<condition>/<split>/<sequence>/*_rgb_anon.png, "
               "acdc/rgb_anon/<condition>/<split>_ref/<sequence>/*_rgb_ref_anon.png, "
               "acdc/gt/<condition>/<split>/<sequence>/*_gt_labelTrainIds.png (or *_gt_labelIds.png)")
#: label file kinds, in order of preference -> the map from their values to train IDs (``None``: already train IDs)
LABEL_IDS = "labelIds"
LABEL_TRAIN_IDS = "labelTrainIds"
LABEL_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {LABEL_TRAIN_IDS: None, LABEL_IDS: to_train_ids}


def gta5_pairs(root: Path) -> tuple[list[Path], list[Path]]:
    """(image, label) paths of GTA5, sorted by name."""
    folder = root / "gta5"
    _require_dir(folder / "images", "GTA5 images", GTA5_LAYOUT, root)
    _require_dir(folder / "labels", "GTA5 labels", GTA5_LAYOUT, root)
    images = sorted((folder / "images").glob("*.png"))
    if not images:
        raise _missing("GTA5 images (*.png)", folder / "images", GTA5_LAYOUT, root)
    return images, _paired(images, lambda p: folder / "labels" / p.name, "GTA5 label files", GTA5_LAYOUT, root)


def cityscapes_pairs(root: Path, split: str = "val") -> tuple[list[Path], list[Path]]:
    """(image, label-ID map) paths of one Cityscapes split, sorted by city and name."""
    folder = root / "cityscapes"
    image_dir = folder / "leftImg8bit" / split
    _require_dir(image_dir, f"Cityscapes {split} images", CITYSCAPES_LAYOUT, root)
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise _missing(f"Cityscapes {split} images (*_leftImg8bit.png)", image_dir, CITYSCAPES_LAYOUT, root)

    def label_of(path: Path) -> Path:
        stem = path.name[: -len("_leftImg8bit.png")]
        return folder / "gtFine" / split / path.parent.name / f"{stem}_gtFine_labelIds.png"

    return images, _paired(images, label_of, "Cityscapes gtFine label files", CITYSCAPES_LAYOUT, root)


def acdc_triples(root: Path, condition: str, split: str = "val") -> tuple[list[Path], list[Path], list[Path]]:
    """(adverse image, label map, normal-condition reference) paths of one ACDC condition and split.

    The label maps are the ``*_gt_labelTrainIds.png`` files when every image has one, else the
    ``*_gt_labelIds.png`` files (:func:`acdc_label_format` says which).
    """
    folder = root / "acdc"
    image_dir = folder / "rgb_anon" / condition / split
    _require_dir(image_dir, f"ACDC {condition} {split} images", ACDC_LAYOUT, root)
    images = sorted(image_dir.glob("*/*_rgb_anon.png"))
    if not images:
        raise _missing(f"ACDC {condition} {split} images (*_rgb_anon.png)", image_dir, ACDC_LAYOUT, root)

    def stem(path: Path) -> str:
        return path.name[: -len("_rgb_anon.png")]

    def label_of(kind: str) -> Callable[[Path], Path]:
        return lambda p: folder / "gt" / condition / split / p.parent.name / f"{stem(p)}_gt_{kind}.png"

    kind = LABEL_TRAIN_IDS if all(label_of(LABEL_TRAIN_IDS)(p).is_file() for p in images) else LABEL_IDS
    labels = _paired(images, label_of(kind), f"ACDC {condition} label files", ACDC_LAYOUT, root)
    references = _paired(
        images, lambda p: folder / "rgb_anon" / condition / f"{split}_ref" / p.parent.name / f"{stem(p)}_rgb_ref_anon.png",
        f"ACDC {condition} reference images", ACDC_LAYOUT, root)
    return images, labels, references


def acdc_label_format(labels: list[Path]) -> str:
    """``labelTrainIds`` or ``labelIds``: the kind of the ACDC label files ``labels`` (from their names)."""
    return LABEL_TRAIN_IDS if labels and labels[0].name.endswith(f"_gt_{LABEL_TRAIN_IDS}.png") else LABEL_IDS


class SegmentationReader(DatasetReader):
    """Base of the file-based segmentation readers: Cityscapes train IDs, lazy resized images.

    ``input_size`` = ``(height, width)`` of the network input of every domain (the evaluation
    resolution), else each domain's default in ``input_sizes``; labels are scored at their
    native size. The resolved sizes join the run's identity (:meth:`identity`) and each row
    records its domain's size and label file kind (:meth:`row_extra`).
    """

    has_severity = False
    classes = TRAIN_CLASSES
    input_sizes: dict[str, tuple[int, int]] = {}
    #: the splits ``--split`` may name (the layout's ``<split>`` folder); ``val`` by default
    splits: tuple[str, ...] = ("train", "val", "test")

    def __init__(self, input_size: tuple[int, int] | None = None, split: str = "val") -> None:
        if split not in self.splits:
            raise UserError(f"dataset {type(self).__name__} has no split {split!r} (splits: {', '.join(self.splits)})")
        self.split = split
        self.input_size = tuple(input_size) if input_size is not None else None
        #: domain name -> the label file kind read (``labelIds`` / ``labelTrainIds``), once its files were found
        self.label_formats: dict[str, str] = {}

    def size_of(self, domain: Domain) -> tuple[int, int]:
        return self.input_size or self.input_sizes[domain.name]

    def identity(self) -> dict:
        """``input_size``: the override as ``HxW``, else every domain's default (not only the chosen ones),
        and the ``split``."""
        if self.input_size is not None:
            return {"input_size": _size_text(self.input_size), "split": self.split}
        return {"input_size": {name: _size_text(size) for name, size in sorted(self.input_sizes.items())},
                "split": self.split}

    def row_extra(self, domain_key: str) -> dict:
        if domain_key not in self.domains:
            return {}
        extra = {"input_size": _size_text(self.size_of(Domain(domain_key)))}
        if self.split_of(domain_key) is not None:
            extra["split"] = self.split_of(domain_key)
        if domain_key in self.label_formats:
            extra["label_format"] = self.label_formats[domain_key]
        return extra

    def split_of(self, domain_name: str) -> str | None:
        """The split domain ``domain_name`` is read from (``None``: a dataset without splits)."""
        return self.split

    def label_format(self, domain: Domain, files: tuple[list[Path], ...]) -> str:
        """The kind of label files ``files`` holds for ``domain`` (Cityscapes, GTA5: label IDs)."""
        return LABEL_IDS

    def expected_size(self, domain: Domain) -> tuple[int, int]:
        return self.size_of(domain)

    def check(self, domains: list[Domain], root: Path) -> None:
        for domain in domains:
            self.files(domain, root)

    def files(self, domain: Domain, root: Path) -> tuple[list[Path], ...]:
        raise NotImplementedError

    def data_files(self, domains: list[Domain], root: Path) -> list[Path]:
        return [path for d in domains for group in self.files(d, root) for path in group]

    def load(self, domain: Domain, root: Path) -> DomainData:
        files = self.files(domain, root)
        images, labels, *references = files
        size = self.size_of(domain)
        kind = self.label_formats[domain.name] = self.label_format(domain, files)
        extras = {"reference": PngStack(references[0], size)} if references else {}
        labels = PngStack(labels, None, label=True, transform=LABEL_TRANSFORMS[kind])
        return DomainData(PngStack(images, size), labels,
                          "official", extras, origin=f"{domain.name} images under {root}",
                          label_origin=f"{domain.name} label maps under {root}")


@DATASETS.register("gta5_cityscapes")
class GTA5Cityscapes(SegmentationReader):
    """GTA5 -> Cityscapes: domain ``cityscapes`` (val split, or ``--split``) and the source domain ``gta5``."""

    domains = ("cityscapes", "gta5")
    input_sizes = {"cityscapes": (512, 1024), "gta5": (526, 957)}

    finders = {"cityscapes": cityscapes_pairs, "gta5": lambda root, split: gta5_pairs(root)}

    def files(self, domain, root):
        return self.finders[domain.name](root, self.split)

    def split_of(self, domain_name):
        return None if domain_name == "gta5" else self.split  # GTA5's layout here has no split folders


@DATASETS.register("acdc")
class ACDC(SegmentationReader):
    """ACDC val split (or ``--split``), one domain per adverse condition, each image with its normal-condition reference."""

    domains = ("fog", "night", "rain", "snow")
    side_inputs = ("reference",)
    input_sizes = {name: (540, 960) for name in domains}

    def files(self, domain, root):
        return acdc_triples(root, domain.name, self.split)

    def label_format(self, domain, files):
        return acdc_label_format(files[1])


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
