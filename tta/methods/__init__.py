"""Built-in test-time methods; importing this package registers them.

Every module of this package is imported here, so a built-in method is one new file with a
``@register_method`` class (no list to edit). Modules whose name starts with ``_`` are skipped.
"""

import importlib
import pkgutil

from tta.methods.base import Method

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Method"]
