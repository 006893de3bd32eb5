"""Pickled data files loaded without running code: a restricted unpickler.

CIFAR's "python version" files are pickles, and ``pickle.load`` runs whatever a file asks for. These
files need only built-in containers, strings, bytes and numbers, and numpy arrays; so the unpickler
admits exactly the globals a numpy array is rebuilt from, refuses every other global with one line
naming the file, and the arrays' dtypes are checked afterwards (an object array would carry
arbitrary objects).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .common import DataError

# (module, name) a pickled numpy array refers to, under numpy 1.x and 2.x
ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol 2 writes bytes from Python 3
}
SAFE_DTYPES = (np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32, np.float32, np.float64)


class _Forbidden(pickle.UnpicklingError):
    """A global the data format never needs."""


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise _Forbidden(f"{module}.{name}")


def _check_arrays(obj: Any, path: Path) -> None:
    if isinstance(obj, np.ndarray):
        if obj.dtype.type not in SAFE_DTYPES:
            raise DataError(f"{path} holds a numpy array of dtype {obj.dtype}, not image or label data; refusing it")
    elif isinstance(obj, dict):
        for value in obj.values():
            _check_arrays(value, path)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _check_arrays(value, path)


def load_pickle(path: str | Path, *, encoding: str = "latin1") -> Any:
    """Unpickle ``path`` admitting only containers, strings, numbers and plain numpy arrays."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            obj = _Restricted(handle, encoding=encoding).load()
    except _Forbidden as exc:
        raise DataError(
            f"{path} asks to import {exc} while unpickling, which a data file never needs (it could run code); "
            "refusing it: download the data set again from its official source"
        ) from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DataError(
            f"{path} is unreadable, damaged or truncated ({type(exc).__name__}); delete it and download the data set again"
        ) from exc
    _check_arrays(obj, path)
    return obj
