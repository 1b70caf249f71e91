"""RobustBench model-zoo checkpoints: ``--checkpoint robustbench:[<dataset>/<threat_model>/]<name>``.

RobustBench (Croce et al., NeurIPS 2021 Datasets and Benchmarks) keeps each zoo checkpoint at
``<model_dir>/<dataset>/<threat_model>/<name>.pt`` (``robustbench/utils.py`` ``load_model``,
lines 146-147 at commit 78fcc9e4; ``model_dir`` defaults to ``./models``, line 107; the
``corruptions_3d`` threat model reads the ``corruptions`` folder, line 129) and fetches a missing
one from Google Drive by the entry's ``gdrive_id`` (lines 58-66 and 85: the URL
``https://docs.google.com/uc?export=download&confirm=t&id=<gdrive_id>``).

Here the model dir is ``$TTA_ROBUSTBENCH_DIR`` (point it at an existing RobustBench
``models`` folder to reuse its files), else ``<tta user home>/robustbench-models``
(:func:`tta.paths.user_home`: ``$TTA_HOME``, else ``~/.local/share/tta``); never the working
directory. A missing file is downloaded there when online; offline, one :class:`UserError`
line names the file, the folder to place it in and the URL to get it from.

Only zoo entries whose architecture *and* input normalization exist here are built
(:data:`ENTRIES`); every other name is refused in one line with the reason. A reference
without ``<dataset>/<threat_model>/`` names the ``corruptions`` entry of that name (the one
test-time adaptation papers use; RobustBench's ``Standard`` is the same file in every threat
model of CIFAR-10). ``tta.run`` creates the entry's model itself (:func:`tta.models.pretrained.qualify`):

* CIFAR-10 ``Standard`` (``Linf``, ``L2``, ``corruptions``): WideResNet-28-10,
  ``WideResNet(depth=28, widen_factor=10)`` without input normalization, i.e. it takes
  images in [0, 1] (``robustbench/model_zoo/cifar10.py`` lines 763-766, 962-965, 1179-1182;
  one ``gdrive_id``) -> ``wrn28_10`` (:mod:`tta.models.wide_resnet`, registered with identity
  mean and std). The file's ``state_dict`` wrapper and ``module.`` prefixes are removed by
  the checkpoint adaptors (:mod:`tta.models.checkpoint`), as ``load_model`` does (lines 170-176).
* ImageNet ``Standard_R50`` (``Linf``, ``corruptions``): torchvision's ResNet-50 with
  ``pretrained=True`` behind an input normalizer with the ImageNet mean and std
  (``robustbench/model_zoo/imagenet.py`` lines 16-17, 47-51, 233-237; ``load_model``
  returns it without reading ``model_dir``, line 158). ``pretrained=True`` is torchvision's
  ``ResNet50_Weights.IMAGENET1K_V1``, so the file is the one ``torchvision:`` resolves (the
  torch.hub cache, :mod:`tta.models.pretrained`) -> timm's ``resnet50`` (same key layout,
  created with timm's ImageNet mean and std).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tta.errors import UserError
from tta.models.registry import IDENTITY_MEAN, IDENTITY_STD, IMAGENET_MEAN, IMAGENET_STD
from tta.paths import user_home

SCHEME = "robustbench:"
ENV_DIR = "TTA_ROBUSTBENCH_DIR"
GDRIVE_URL = "https://docs.google.com/uc?export=download&confirm=t&id={}"
DATASETS = ("cifar10", "cifar100", "imagenet")
THREAT_MODELS = ("Linf", "L2", "corruptions", "corruptions_3d")
#: the threat model a reference without ``<dataset>/<threat_model>/`` names
DEFAULT_THREAT_MODEL = "corruptions"
#: the Google Drive file of CIFAR-10 ``Standard`` (the same id under Linf, L2 and corruptions)
STANDARD_WRN_GDRIVE = "1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC"


@dataclass(frozen=True)
class ZooEntry:
    """One RobustBench zoo entry built here: the tta model it loads into and its input normalization."""

    dataset: str
    threat_model: str
    name: str
    model: str
    architecture: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    gdrive_id: str | None = None
    #: torchvision weights enum, for entries RobustBench builds from torchvision's pretrained weights
    torchvision: str | None = None

    @property
    def ref(self) -> str:
        return f"{SCHEME}{self.dataset}/{self.threat_model}/{self.name}"

    def normalization(self) -> str:
        if self.mean == IDENTITY_MEAN and self.std == IDENTITY_STD:
            return "inputs in [0, 1], no normalization"
        return f"inputs normalized with mean {self.mean} and std {self.std}"


def _standard_wrn(threat_model: str) -> ZooEntry:
    return ZooEntry("cifar10", threat_model, "Standard", "wrn28_10", "WideResNet-28-10",
                    IDENTITY_MEAN, IDENTITY_STD, gdrive_id=STANDARD_WRN_GDRIVE)


def _standard_r50(threat_model: str) -> ZooEntry:
    return ZooEntry("imagenet", threat_model, "Standard_R50", "resnet50", "torchvision ResNet-50",
                    IMAGENET_MEAN, IMAGENET_STD, torchvision="ResNet50_Weights.IMAGENET1K_V1")


#: (dataset, threat model, name) -> the entry, for every zoo entry whose architecture exists here
ENTRIES: dict[tuple[str, str, str], ZooEntry] = {
    (e.dataset, e.threat_model, e.name): e
    for e in (*map(_standard_wrn, ("Linf", "L2", "corruptions")), *map(_standard_r50, ("Linf", "corruptions")))
}

#: why zoo entries that test-time adaptation papers use are not built here
#: (``robustbench/model_zoo/cifar10.py`` lines 29-55, 1151-1158; ``cifar100.py`` lines 586-593)
NOT_HERE = {
    "Hendrycks2020AugMix_WRN": "a WideResNet-40-2 that normalizes its input with mean 0.5 and std 0.5 inside the "
                               "model; no WideResNet-40-2 is registered here",
    "Hendrycks2020AugMix_ResNeXt": "a ResNeXt-29 (cardinality 4, base width 32) that normalizes its input with mean "
                                   "0.5 and std 0.5 inside the model; no ResNeXt is registered here",
}


def model_dir() -> Path:
    """RobustBench's ``model_dir``: ``$TTA_ROBUSTBENCH_DIR``, else ``<user home>/robustbench-models``."""
    explicit = os.environ.get(ENV_DIR)
    return Path(explicit).expanduser().resolve() if explicit else user_home() / "robustbench-models"


def _supported() -> str:
    names = sorted({f"{e.dataset} {e.name} ({e.architecture} = {e.model})" for e in ENTRIES.values()})
    return ", ".join(names)


def lookup(body: str) -> ZooEntry:
    """The entry ``<name>`` or ``<dataset>/<threat_model>/<name>`` names; else one :class:`UserError` line."""
    parts = body.split("/")
    if len(parts) == 1:
        parts = [next((e.dataset for e in ENTRIES.values() if e.name == body), "cifar10"), DEFAULT_THREAT_MODEL, body]
    if len(parts) != 3 or not all(parts):
        raise UserError(f"--checkpoint robustbench:{body} is not robustbench:<name> or "
                        f"robustbench:<dataset>/<threat_model>/<name>, e.g. robustbench:cifar10/corruptions/Standard")
    dataset, threat_model, name = parts
    for value, allowed, what in ((dataset, DATASETS, "dataset"), (threat_model, THREAT_MODELS, "threat model")):
        if value not in allowed:
            raise UserError(f"robustbench:{body}: RobustBench has no {what} {value!r} ({', '.join(allowed)})")
    threat_model = threat_model.replace("_3d", "")  # RobustBench loads corruptions_3d from the corruptions entries
    entry = ENTRIES.get((dataset, threat_model, name))
    if entry is not None:
        return entry
    reason = NOT_HERE.get(name, "its architecture is not one of the models registered here")
    raise UserError(f"robustbench:{dataset}/{threat_model}/{name} is not built here: {reason}. RobustBench entries "
                    f"tta builds: {_supported()}; for another, register its architecture as a plugin model "
                    f"(register_model, with its input normalization) and give the file's path as --checkpoint")


def checkpoint_path(entry: ZooEntry) -> Path:
    """Where RobustBench's layout keeps ``entry``'s file under :func:`model_dir`."""
    return model_dir() / entry.dataset / entry.threat_model / f"{entry.name}.pt"


def resolve(body: str) -> Path:
    """The local file of ``robustbench:<body>``: found under :func:`model_dir` (also in another
    threat-model folder holding the same Google Drive file), else downloaded there."""
    from tta.models.pretrained import torchvision_weights

    entry = lookup(body)
    if entry.torchvision is not None:
        return torchvision_weights(entry.torchvision)
    target = checkpoint_path(entry)
    same_file = [checkpoint_path(e) for e in ENTRIES.values() if e.gdrive_id == entry.gdrive_id]
    found = next((p for p in dict.fromkeys([target, *same_file]) if p.is_file()), None)
    return found if found is not None else _download(entry, target)


def _download(entry: ZooEntry, target: Path) -> Path:
    from tta.download import download
    from tta.models.pretrained import unreachable

    url = GDRIVE_URL.format(entry.gdrive_id)
    reason = unreachable(url, offline_env=None)
    if reason is not None:
        raise UserError(f"RobustBench checkpoint {entry.dataset}/{entry.threat_model}/{entry.name} is not in "
                        f"{model_dir()} and could not be downloaded ({reason}); offline, place {entry.name}.pt from "
                        f"{url} at {target} (or set ${ENV_DIR} to a RobustBench model_dir that holds it)")
    download(url, target, None, f"RobustBench checkpoint {entry.name}")
    with open(target, "rb") as handle:
        head = handle.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive, or a legacy pickle
        target.unlink()
        raise UserError(f"the download of RobustBench checkpoint {entry.name} from {url} is not a PyTorch file "
                        f"(Google Drive answered with a web page, e.g. its quota notice); open the URL in a "
                        f"browser and place the file at {target}")
    return target
