"""A protocol = a spec (what to run) + a dataset reader (where the images come from).

Dataset readers register with ``@DATASETS.register(name)`` and return, per domain, the
domain's images as uint8 NHWC and its labels. Ordering, batching and resets are the
scenario's job (:mod:`tta.scenarios`), not the reader's.

Every reader's ``load`` is checked in one place, :func:`check_domain_data`, wrapped around
it by :class:`DatasetReader` itself (plugin readers included): uint8 images of 3 channels,
of the reader's declared ``image_size`` where it declares one, integer labels in
``0..num_classes-1`` of the protocol (or the ignore index, segmentation), side inputs like
the images. A wrong file is refused in one line naming it, what it holds and what was
expected, before any batch is scored.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tta.data.root import existing_root
from tta.errors import UserError
from tta.protocols.spec import ProtocolSpec
from tta.registry import DATASETS
from tta.types import Domain


@dataclass
class DomainData:
    images: np.ndarray  # uint8, N x H x W x C
    labels: np.ndarray  # int64, N
    source: str  # "official" | "generated" | "procedural" ...
    #: label-free side arrays indexed like ``images`` (e.g. ``reference`` images, uint8 NHWC)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    #: where the images come from (a file, a folder), named by validation errors
    origin: str = ""
    #: where the labels come from, when not ``origin`` (e.g. CIFAR-10-C's ``labels.npy``)
    label_origin: str = ""


@dataclass(frozen=True)
class SourceImages:
    """Clean, label-free images of the source distribution, for methods that estimate something on
    source data before adapting (EATA's Fisher information). Read only when a run starts."""

    #: returns the images, uint8 N x H x W x C
    read: Callable[[], np.ndarray]
    #: what they are, for rows and the run identity (e.g. "CIFAR-10 training images")
    description: str
    #: the files they were read from (join the run's data fingerprint); ``[]`` for procedural images
    files: list[Path] = field(default_factory=list)


class DatasetReader:
    """Base class of dataset readers."""

    #: every domain the reader accepts, in canonical order
    domains: tuple[str, ...] = ()
    #: the domains a run uses when neither the spec nor the user names them (default: all)
    default_domains: tuple[str, ...] | None = None
    #: where the data came from, once :meth:`check` has looked (``official``, ``generated``,
    #: a provenance label...); part of the run's identity when set
    data_source: str | None = None
    #: :data:`tta.data.corruptions.ENGINE_VERSION` when tta's corruption engine made the domains
    #: (generated or procedural data), once :meth:`check` has looked; part of the run's identity
    corruption_engine: int | None = None
    #: whether domains come in severities 1..5
    has_severity: bool = True
    #: names of the label-free side arrays :meth:`load` provides in ``DomainData.extras``
    side_inputs: tuple[str, ...] = ()
    #: ``(height, width)`` of every image, where the format fixes it (CIFAR: 32 x 32); ``None``: any
    image_size: tuple[int, int] | None = None
    #: channels of every image (RGB)
    channels: int = 3
    #: the spec of the protocol reading this reader (set by :class:`Protocol`): labels are checked
    #: against its ``num_classes`` and ``task``; ``None`` when the reader is used on its own
    protocol_spec: ProtocolSpec | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "load" in vars(cls):  # every reader's own load is validated, plugin readers' too
            cls.load = _validated(vars(cls)["load"])

    def check(self, domains: list[Domain], root: Path) -> None:
        """Raise a :class:`UserError` naming what is missing before any work starts."""

    def load(self, domain: Domain, root: Path) -> DomainData:
        raise NotImplementedError

    def expected_size(self, domain: Domain) -> tuple[int, int] | None:
        """``(height, width)`` the images of ``domain`` must have; ``None``: any size."""
        return self.image_size

    def data_files(self, domains: list[Domain], root: Path) -> list[Path] | None:
        """The files a run over ``domains`` reads (after :meth:`check`), for the data fingerprint
        in the run's identity (:mod:`tta.fingerprint`); ``[]`` for procedural data (no files).

        ``None`` (the default, e.g. for a plugin reader that does not say) fingerprints every file
        under ``root``: always correct, slower on a large root. Readers narrow it to what they read.
        """
        return None

    def identity(self) -> dict:
        """What else about this reader decides a number (e.g. the resolved ``input_size``): joins the run's
        identity. Independent of the domains chosen, so a run over fewer domains reuses stored rows."""
        return {}

    def row_extra(self, domain_key: str) -> dict:
        """What a result row of domain ``domain_key`` records about how it was read (row ``extra``)."""
        return {}

    def source_images(self, root: Path, n: int) -> SourceImages | None:
        """At least ``n`` (or all available) clean images of the source model's training distribution,
        for methods that need them (:meth:`tta.methods.base.Method.source_images_wanted`); ``None``
        (the default) when this dataset has none here: such methods are then refused in one line."""
        return None


def _validated(load):
    @functools.wraps(load)
    def checked_load(self: DatasetReader, domain: Domain, root: Path) -> DomainData:
        return check_domain_data(self, domain, load(self, domain, root))

    return checked_load


def _describe(shape: tuple[int, ...], dtype) -> str:
    return f"{' x '.join(str(d) for d in shape) or 'scalar'} {np.dtype(dtype).name}"


def _image_layout(images) -> tuple[tuple[int, ...], np.dtype]:
    """(shape of one image, dtype): from ``shape``/``dtype`` where the array (or lazy stack) has
    them, else by decoding the first image (one file of a lazy stack)."""
    if hasattr(images, "shape") and hasattr(images, "dtype"):
        return tuple(images.shape[1:]), np.dtype(images.dtype)
    first = np.asarray(images[0])
    return first.shape, first.dtype


def _check_images(images, n: int, where: str, expected: tuple[int, ...], what: str = "images") -> None:
    if len(images) != n:
        raise UserError(f"{where} holds {len(images)} {what} but {n} labels; expected one label per image")
    shape, dtype = _image_layout(images)
    ok = len(shape) == 3 and dtype == np.uint8 and all(e is None or e == s for e, s in zip(expected, shape))
    if not ok:
        wanted = " x ".join(symbol if e is None else str(e) for e, symbol in zip(expected, "HWC"))
        raise UserError(f"{where} holds {n} {what} of {_describe(shape, dtype)}; expected N x {wanted} uint8 "
                        f"(height x width x channels)")


def _check_labels(data: DomainData, where: str, spec: ProtocolSpec | None) -> np.ndarray:
    """The labels (classification: as int64), or one :class:`UserError` line."""
    from tta.segmentation_metrics import IGNORE_INDEX

    labels = data.labels
    lazy = not isinstance(labels, np.ndarray)
    sample = np.asarray(labels[0]) if lazy else labels  # a lazy label stack: its first map only
    ndim = sample.ndim + lazy
    dense = spec.task == "segmentation" if spec is not None else ndim == 3  # on its own: either kind
    if ndim != (3 if dense else 1) or not np.issubdtype(sample.dtype, np.integer):
        shape = "N x H x W label maps" if dense else "N class indices"
        raise UserError(f"{where} holds labels of {_describe(sample.shape, sample.dtype)}; expected {shape} (integers)")
    if spec is None:
        bad = sample[sample < 0]
    else:
        outside = (sample < 0) | (sample >= spec.num_classes)
        bad = sample[outside & (sample != IGNORE_INDEX)] if dense else sample[outside]
    if bad.size:
        allowed = f"0..{spec.num_classes - 1}" if spec is not None else "0 or more"
        ignore = f" or {IGNORE_INDEX} (ignored)" if dense else ""
        owner = f"; protocol {spec.name!r} has {spec.num_classes} classes" if spec is not None else ""
        raise UserError(f"{where} holds label {int(bad.flat[0])} ({bad.size} labels out of range){owner}: "
                        f"labels must be {allowed}{ignore}")
    return labels.astype(np.int64, copy=False) if not dense and not lazy else labels


def check_domain_data(reader: DatasetReader, domain: Domain, data: DomainData) -> DomainData:
    """``data`` if it is what ``reader`` and its protocol declare, else one :class:`UserError` line.

    O(1) on the images (shape and dtype; a lazy stack decodes its first image) and O(N) on the
    labels (their range); classification labels come back as int64.
    """
    if not isinstance(data, DomainData):
        raise UserError(f"dataset reader {type(reader).__name__} returned {type(data).__name__} for domain "
                        f"{domain.key}; expected a DomainData")
    where = data.origin or f"dataset reader {type(reader).__name__}, domain {domain.key},"
    n = len(data.labels)
    if not n:
        raise UserError(f"{where} holds no examples")
    size = reader.expected_size(domain)
    expected = (*(size or (None, None)), reader.channels)
    _check_images(data.images, n, where, expected)
    for name in reader.side_inputs:
        if name not in data.extras:
            raise UserError(f"{where} provides no {name!r} side input, which dataset reader "
                            f"{type(reader).__name__} declares")
    for name, array in data.extras.items():
        _check_images(array, n, where, (None, None, reader.channels), f"{name!r} side images")
    data.labels = _check_labels(data, data.label_origin or where, reader.protocol_spec)
    return data


@dataclass
class Protocol:
    spec: ProtocolSpec
    reader: DatasetReader
    root: Path

    def __post_init__(self) -> None:
        if not isinstance(self.reader, DatasetReader):  # its load would go unchecked
            raise UserError(f"dataset reader {type(self.reader).__name__} of protocol {self.spec.name!r} does not "
                            f"subclass tta.protocols.base.DatasetReader")
        self.reader.protocol_spec = self.spec

    @classmethod
    def create(cls, spec: ProtocolSpec, root: Path, input_size: tuple[int, int] | None = None,
               split: str | None = None) -> "Protocol":
        """The protocol of ``spec`` over data root ``root`` (which must exist, unless it is the default).

        ``input_size`` and ``split`` (else the spec's) go to a reader that takes them
        (``__init__(input_size=..., split=...)``, the segmentation readers); another reader refuses them.
        """
        import inspect

        reader_cls = DATASETS.get(spec.dataset)
        options = {k: v for k, v in (("input_size", input_size or spec.input_size), ("split", split or spec.split))
                   if v is not None}
        accepted = inspect.signature(reader_cls).parameters
        why = {"input_size": "its images come at a fixed size", "split": "it has no splits"}
        for option in options:
            if option not in accepted:
                raise UserError(f"dataset {spec.dataset!r} of protocol {spec.name!r} takes no {option} "
                                f"(--{option.replace('_', '-')}): {why.get(option, 'its reader has no such option')}")
        return cls(replace(spec, **options), reader_cls(**options), existing_root(root))

    @property
    def name(self) -> str:
        return self.spec.name

    def domains(self, names: list[str] | None = None, severity: int | None = None) -> list[Domain]:
        """The domains to run, in order; validates names and severity."""
        chosen = list(names or self.spec.domains or self.reader.default_domains or self.reader.domains)
        unknown = [d for d in chosen if d not in self.reader.domains]
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], self.reader.domains, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"protocol {self.name!r} has no domain {unknown[0]!r}{hint}")
        if not self.reader.has_severity:
            return [Domain(d) for d in chosen]
        level = severity if severity is not None else self.spec.severity or 5
        if level not in (1, 2, 3, 4, 5):
            raise UserError(f"severity must be 1..5, got {level}")
        return [Domain(d, level) for d in chosen]

    def with_overrides(self, **changes) -> "Protocol":
        return replace(self, spec=replace(self.spec, **{k: v for k, v in changes.items() if v is not None}))
