"""Out-of-tree method and model plugins.

Three ways in, all ending in :func:`tta.registry.register_method` (methods) or
:func:`tta.models.registry.register_model` (models):

* an installed distribution that declares an entry point in the group ``tta.methods``
  (``name = "package.module:MethodClass"`` or ``"package.module"``), or ``tta.models``
  (``name = "package.module:factory"``: a factory registered with ``@register_model``, or
  a plain ``factory(num_classes=...)`` registered under the entry point's name with the
  ImageNet normalization; or ``"package.module"``, a module whose import registers), or
  ``tta.datasets`` (a :class:`~tta.protocols.base.DatasetReader` subclass, or a module that
  registers readers with ``@DATASETS.register``);
* a drop-in ``*.py`` file in a directory listed in ``$TTA_PLUGIN_PATH`` (``os.pathsep``
  separated) or in the source checkout's ``methods/`` folder;
* ``--plugin path/to/file.py`` on the command line.

Whatever a plugin raises while it is imported, ``sys.exit(...)`` included, becomes one
:class:`UserError` line naming the plugin: a plugin's own failure never reads as a tta
traceback, nor ends the process without an ``error:`` line.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Callable

from tta.errors import UserError
from tta.registry import METHODS

ENTRY_POINT_GROUP = "tta.methods"
MODEL_ENTRY_POINT_GROUP = "tta.models"
TRAINING_ENTRY_POINT_GROUP = "tta.training_methods"
DATASET_ENTRY_POINT_GROUP = "tta.datasets"
CHECKOUT_PLUGIN_DIR = Path(__file__).resolve().parents[1] / "methods"


def failure(exc: BaseException) -> str:
    """What a plugin raised, on one line: ``sys.exit(...)`` as such, else ``Type: message``."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_group(group: str, adopt: Callable[[str, object], None]) -> list[str]:
    """Import every entry point of ``group``; ``adopt(name, obj)`` registers what the plugin did
    not register itself. Whatever an import raises is one :class:`UserError` line."""
    loaded = []
    for ep in importlib.metadata.entry_points(group=group):
        try:
            obj = ep.load()
        except UserError:
            raise
        except (Exception, SystemExit) as exc:  # a plugin's own bug must not read as a tta traceback
            raise UserError(f"plugin entry point {ep.name!r} ({ep.value}) failed to import: {failure(exc)}") from None
        adopt(ep.name, obj)
        loaded.append(ep.name)
    return loaded


def _adopt_method(name: str, obj: object) -> None:
    from tta.registry import register_method

    if inspect.isclass(obj) and name not in METHODS:
        register_method(name)(obj)


def _adopt_training_method(name: str, obj: object) -> None:
    from tta.registry import TRAINING_METHODS, register_training_method

    if inspect.isclass(obj) and name not in TRAINING_METHODS:
        register_training_method(name)(obj)


def _adopt_model(name: str, obj: object) -> None:
    from tta.models.registry import register_model
    from tta.registry import MODELS

    registered = any(entry.factory is obj for _, entry in MODELS.items())
    if callable(obj) and not inspect.ismodule(obj) and not registered and name not in MODELS:
        register_model(name)(obj)


def _adopt_dataset(name: str, obj: object) -> None:
    from tta.registry import DATASETS

    registered = any(cls is obj for _, cls in DATASETS.items())
    if inspect.isclass(obj) and not registered and name not in DATASETS:
        DATASETS.register(name)(obj)


def load_entry_points() -> list[str]:
    """Import every ``tta.methods`` entry point (method classes)."""
    return _load_group(ENTRY_POINT_GROUP, _adopt_method)


def load_training_entry_points() -> list[str]:
    """Import every ``tta.training_methods`` entry point (DG training methods, :mod:`tta.training`)."""
    return _load_group(TRAINING_ENTRY_POINT_GROUP, _adopt_training_method)


def load_model_entry_points() -> list[str]:
    """Import every ``tta.models`` entry point (model factories)."""
    return _load_group(MODEL_ENTRY_POINT_GROUP, _adopt_model)


def load_dataset_entry_points() -> list[str]:
    """Import every ``tta.datasets`` entry point (:class:`~tta.protocols.base.DatasetReader` classes,
    validated on load like the built-in readers; a reader's ``classes`` name the per-class columns)."""
    return _load_group(DATASET_ENTRY_POINT_GROUP, _adopt_dataset)


def load_file(path: str | os.PathLike) -> None:
    """Execute a plugin file; its ``@register_method`` / ``@register_model`` decorators register
    its methods and models."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"plugin file {str(path)!r} does not exist")
    module_name = f"tta_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"plugin file {str(path)!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except UserError:
        sys.modules.pop(module_name, None)
        raise
    except (Exception, SystemExit) as exc:
        sys.modules.pop(module_name, None)
        raise UserError(f"plugin file {str(path)!r} failed to import: {failure(exc)}") from None


def drop_in_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("TTA_PLUGIN_PATH", "").split(os.pathsep) if p]
    if CHECKOUT_PLUGIN_DIR.is_dir():
        dirs.append(CHECKOUT_PLUGIN_DIR)
    return dirs


def load_drop_ins() -> None:
    for directory in drop_in_dirs():
        for file in sorted(directory.glob("*.py")):
            if not file.name.startswith("_"):
                load_file(file)


def load_all(files: list[str] | tuple[str, ...] = ()) -> None:
    """Load entry points, drop-in directories and explicit plugin files, in that order."""
    load_entry_points()
    load_training_entry_points()
    load_model_entry_points()
    load_dataset_entry_points()
    load_drop_ins()
    for file in files:
        load_file(file)
