"""Read the CIFAR "python version" batches without running code from the file.

A pickle can name any importable callable (``os.system``...) and have the unpickler call
it, so :func:`load` admits only the globals the CIFAR format needs and refuses every other
one *before* anything is called:

* ``numpy.core.multiarray._reconstruct`` (the name in the authors' Python 2 files; numpy 2
  writes ``numpy._core.multiarray._reconstruct``), ``numpy.ndarray`` and ``numpy.dtype``:
  how a pickled ``ndarray`` rebuilds itself;
* ``numpy._core.numeric._frombuffer``: how numpy writes an array at protocol 5;
* ``_codecs.encode``: how Python 3 writes ``bytes`` at protocol 2 (a re-pickled batch).

Dicts, lists, strings, bytes and numbers need no global. Persistent ids are refused by
:class:`pickle.Unpickler` itself.
"""

from __future__ import annotations

import codecs
import pickle
from typing import IO, Any

import numpy as np

_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's own functions, whatever their module is called
_FROMBUFFER = np.zeros(0).__reduce_ex__(5)[0]

ADMITTED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class RefusedGlobal(pickle.UnpicklingError):
    """The file names a global outside :data:`ADMITTED`; nothing it names was imported or called."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"references {module}.{name}, which the CIFAR format never uses")
        self.module, self.name = module, name


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ADMITTED[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None


def load(handle: IO[bytes], encoding: str = "latin1") -> Any:
    """``pickle.load`` admitting only dicts, lists, str/bytes, numbers and numpy arrays."""
    return _Restricted(handle, encoding=encoding).load()
