"""LWM's pickled Flax parameter tree, read without running what a pickle could run.

`RestrictedUnpickler.find_class` admits only the globals a pickled tree of arrays needs (numpy's
array and scalar reconstructors, `numpy.dtype`, `dict`, `collections.OrderedDict`, flax's
`FrozenDict` and jax's array reconstructor, the last two rebuilt as dict and numpy without
importing flax or jax); any other global (os.system, builtins.eval, subprocess.Popen, ...) raises
`WeightsError` naming the file and the global before the pickle can call it.

Example:
    {'encoder': FrozenDict({'Conv_0': {'kernel': jax.Array [3,3,3,128], ...}}), ...}  (LWM's pickle)
    -> {'encoder/Conv_0/kernel': np.ndarray float32 [3,3,3,128], ...}                  (checked params)
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from typing import Any

import numpy as np
from lwmkit.tokenizers.vqgan_config import VQGANConfig
from lwmkit.tokenizers.vqgan_weights import WeightsError, check_params, flatten_tree


def _frozen_dict(*args: Any) -> dict:
    return dict(*args)


def _jax_array(fun: Any, args: Any, arr_state: Any, aval_state: Any) -> np.ndarray:
    # jax.Array.__reduce__ is (_reconstruct_array, (ndarray reconstructor, args, ndarray state, aval)):
    # rebuild the numpy value only, without importing jax or placing anything on a device.
    if fun not in _NUMPY_RECONSTRUCTORS:
        raise pickle.UnpicklingError(f"jax array rebuilt with {fun!r}, not numpy's reconstructor")
    value = fun(*args)
    value.__setstate__(arr_state)
    return value


def _bytes_from_latin1(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1'); admit that spelling only.
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not a protocol-2 bytes value")
    return text.encode("latin1")


_NUMPY_RECONSTRUCTORS = (np._core.multiarray._reconstruct,)  # noqa: SLF001 (what ndarray.__reduce__ names)
_NUMPY_FROMBUFFER = np._core.numeric._frombuffer  # noqa: SLF001 (ndarray.__reduce_ex__ with protocol 5)

_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED = {
    # numpy arrays, dtypes and scalars (numpy 2 names, and numpy 1's `numpy.core` for older pickles)
    **{(m, "_reconstruct"): np._core.multiarray._reconstruct for m in _MULTIARRAY},
    **{(m, "scalar"): np._core.multiarray.scalar for m in _MULTIARRAY},
    **{(m, "_frombuffer"): _NUMPY_FROMBUFFER for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _bytes_from_latin1,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "dict"): dict,
    ("flax.core.frozen_dict", "FrozenDict"): _frozen_dict,
    ("jax._src.array", "_reconstruct_array"): _jax_array,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose `find_class` admits only what a pickled tree of arrays needs.

    Anything else (os.system, builtins.eval, subprocess.Popen, ...) raises WeightsError naming
    the file and the refused global, before the pickle can call it.
    """

    def __init__(self, file: Any, name: str):
        super().__init__(file)
        self.name = name

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise WeightsError(
                f"{self.name}: refused pickle global {module}.{name}: only numpy arrays and dicts are allowed"
            ) from None


def load_lwm_pickle(path: str, config: VQGANConfig) -> dict[str, np.ndarray]:
    """Reads LWM's pickled Flax parameter tree through `RestrictedUnpickler` and checks it.

    Raises:
      WeightsError: for a refused global, a corrupt pickle, or parameters that do not fit `config`.
    """
    try:
        with open(path, "rb") as f:
            tree = RestrictedUnpickler(f, path).load()
    except WeightsError:
        raise
    except Exception as e:  # a corrupt pickle raises anything from UnpicklingError to EOFError
        raise WeightsError(f"{path}: cannot unpickle: {type(e).__name__}: {e}") from e
    if not hasattr(tree, "items"):
        raise WeightsError(f"{path}: the pickle holds a {type(tree).__name__}, not a parameter tree")
    if set(tree) == {"params"}:  # a variables dict {'params': ...} rather than the params themselves
        tree = tree["params"]
    return check_params(flatten_tree(tree, path), config, path)
