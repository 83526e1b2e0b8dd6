"""Parameter files: LWM's released Jax parameters (streaming msgpack), Orbax save/restore, and the
scanned <-> unrolled layer layouts.

LWM (via tux/EasyLM `StreamingCheckpointer`) writes a parameter tree as a stream of msgpack pairs
`(key path, flax.serialization.to_bytes(array))`, one per leaf, e.g.
    (["transformer", "wte", "embedding"], <msgpack ext: shape, dtype name, raw bytes>)
A train-state file has the same pairs under ("params", "params", ...) next to optimizer state.
`read_lwm_params` reads that stream with msgpack's Unpacker and Flax's array extension type only
(never pickle); `save_lwm_params` writes it. Orbax trees (`save_params`, the trainer's checkpoints)
restore onto whatever devices this process has (`restore_params`), never into the saved shardings. Layer stacks convert both ways:
    transformer/h/0/attention/wq/kernel [E, E], transformer/h/1/...      (unrolled)
 <-> transformer/h/scan_decoder/attention/wq/kernel [layers, E, E]      (scanned)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import msgpack
import numpy as np
from flax.serialization import msgpack_restore, msgpack_serialize
from flax.traverse_util import flatten_dict, unflatten_dict
from lwmkit.lwm_model.config import LWMConfig

PARAM_ROOTS = ("transformer", "lm_head", "vision_head")
_LAYER = re.compile(r"^transformer/h/(\d+)/(.+)$")
_SCANNED = "transformer/h/scan_decoder/"


def expected_shapes(config: LWMConfig) -> dict[str, tuple[tuple[int, ...], Any]]:
    """'/'-joined parameter path -> (shape, dtype) of the model `config` builds (nothing is allocated)."""
    from lwmkit.lwm_model.model import LWM, init_params

    abstract = jax.eval_shape(lambda: init_params(LWM(config), jax.random.key(0)))
    return {k: (tuple(v.shape), v.dtype) for k, v in flatten_dict(abstract, sep="/").items()}


def stack_layers(flat: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """'/'-joined unrolled parameters (transformer/h/<i>/...) -> scanned (transformer/h/scan_decoder/...)."""
    out, layers = {}, {}
    for path, value in flat.items():
        m = _LAYER.match(path)
        if m:
            layers.setdefault(m.group(2), {})[int(m.group(1))] = value
        else:
            out[path] = value
    for name, per_layer in layers.items():
        if sorted(per_layer) != list(range(num_layers)):
            raise ValueError(
                f"transformer/h/*/{name}: have layers {sorted(per_layer)}, need 0..{num_layers - 1}"
            )
        out[_SCANNED + name] = np.stack([np.asarray(per_layer[i]) for i in range(num_layers)])
    return out


def unstack_layers(flat: dict[str, Any]) -> dict[str, Any]:
    """'/'-joined scanned parameters -> unrolled ones (the inverse of `stack_layers`)."""
    out = {}
    for path, value in flat.items():
        if path.startswith(_SCANNED):
            for i in range(np.shape(value)[0]):
                out[f"transformer/h/{i}/{path[len(_SCANNED) :]}"] = value[i]
        else:
            out[path] = value
    return out


def vocab_fields(flat: dict[str, Any]) -> dict[str, Any]:
    """The LWMConfig fields a parameter set fixes: text rows (`vocab_size`), whether it has a vision
    table (`vision`) and, if so, its rows (`vision_vocab_size`). `flat` is '/'-joined paths -> arrays."""
    found: dict[str, Any] = {}
    if "transformer/wte/embedding" in flat:
        found["vocab_size"] = int(np.shape(flat["transformer/wte/embedding"])[0])
    vte = flat.get("transformer/vte/embedding")
    found["vision"] = vte is not None
    if vte is not None:
        found["vision_vocab_size"] = int(np.shape(vte)[0])
    return found


def fit_params(flat: dict[str, Any], config: LWMConfig, source: str) -> Any:
    """'/'-joined parameters in either layer layout -> the tree `config` builds, cast to its param dtype.

    Raises:
      ValueError: naming `source` and the missing, unexpected or misshapen parameters.
    """
    scanned = any(p.startswith(_SCANNED) for p in flat)
    if config.scan_layers and not scanned:
        flat = stack_layers(flat, config.num_layers)
    elif not config.scan_layers and scanned:
        flat = unstack_layers(flat)
    want = expected_shapes(config)
    missing, extra = sorted(set(want) - set(flat)), sorted(set(flat) - set(want))
    if missing or extra:
        raise ValueError(
            f"{source}: parameters do not match the config: missing {missing}, unexpected {extra}"
        )
    bad = [
        f"{k} {tuple(np.shape(v))} (want {want[k][0]})"
        for k, v in flat.items()
        if tuple(np.shape(v)) != want[k][0]
    ]
    if bad:
        raise ValueError(f"{source}: wrong shapes: {', '.join(bad)}")
    return unflatten_dict({k: np.asarray(v).astype(want[k][1]) for k, v in flat.items()}, sep="/")


def iter_lwm_records(
    path: str | os.PathLike, max_buffer_size: int = 64 << 30
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (key path, value) pair of an LWM/EasyLM streaming msgpack file, in file order.

    Args:
      path: the file (LWM's `params` or `streaming_train_state`).
      max_buffer_size: the largest single record accepted, in bytes.

    Raises:
      ValueError: naming the file and record for malformed or truncated data.
    """
    size = os.path.getsize(path)
    done = 0  # records read so far; the next one (0-based) is record `done`
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(
            f, read_size=1 << 24, max_buffer_size=max_buffer_size, raw=False
        )
        try:
            for record in unpacker:
                if not (
                    isinstance(record, list | tuple)
                    and len(record) == 2
                    and isinstance(record[1], bytes)
                ):
                    raise ValueError("expected a (key path, bytes) pair")
                key = record[0]
                if not (
                    isinstance(key, list | tuple)
                    and key
                    and all(isinstance(k, str | int) for k in key)
                ):
                    raise ValueError(f"key {key!r} is not a path of names")
                try:
                    value = msgpack_restore(record[1])
                except msgpack.StackError:
                    raise ValueError("its value is msgpack nested too deeply") from None
                except (TypeError, ValueError, msgpack.UnpackException) as e:  # a hostile array ext
                    raise ValueError(f"malformed value: {e!r}") from None
                done += 1
                yield tuple(str(k) for k in key), value
        except msgpack.StackError:  # a ValueError with no message
            raise ValueError(f"{path}: record {done}: msgpack nested too deeply") from None
        except ValueError as e:
            raise ValueError(f"{path}: record {done}: {e}") from e
        except (msgpack.UnpackException, msgpack.ExtraData) as e:
            raise ValueError(f"{path}: record {done}: malformed msgpack: {e}") from e
        if unpacker.tell() != size:
            raise ValueError(
                f"{path}: truncated or trailing data after {done} records (read {unpacker.tell()} of {size} bytes)"
            )


def read_lwm_params(
    path: str | os.PathLike, max_buffer_size: int = 64 << 30
) -> dict[str, np.ndarray]:
    """The model parameters of an LWM streaming msgpack file, '/'-joined paths -> arrays.

    A train-state file's ("params", "params", ...) prefix is removed and its optimizer state skipped.

    Raises:
      ValueError: naming the file and record for malformed data or a value that is not an array.
    """
    out = {}
    for key, value in iter_lwm_records(path, max_buffer_size):
        while key and key[0] == "params":
            key = key[1:]
        if not key or key[0] not in PARAM_ROOTS:
            continue
        name = "/".join(key)
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{path}: {name}: expected an array, got {type(value).__name__}")
        out[name] = value
    return out


def load_lwm_params(
    path: str | os.PathLike, config: LWMConfig, max_buffer_size: int = 64 << 30
) -> Any:
    """LWM's released Jax parameters as the parameter tree of `LWM(config)` (numpy arrays).

    Either layer layout loads into either `config.scan_layers`.

    Raises:
      ValueError: naming the file for malformed data or parameters that do not fit `config`.
    """
    return fit_params(read_lwm_params(path, max_buffer_size), config, str(path))


def save_lwm_params(path: str | os.PathLike, params: Any) -> None:
    """Writes `params` as an LWM streaming msgpack file (what LWM's StreamingCheckpointer reads)."""
    packer = msgpack.Packer()
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as f:
        for key, value in flatten_dict(params).items():
            f.write(packer.pack((list(key), msgpack_serialize(np.asarray(jax.device_get(value))))))
    tmp.replace(path)


def save_params(path: str | os.PathLike, params: Any) -> None:
    """Saves a parameter tree with Orbax (a directory; an existing one is replaced)."""
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(Path(path).absolute(), params, force=True)
    checkpointer.wait_until_finished()


def orbax_params_dir(path: str | os.PathLike) -> Path:
    """The Orbax parameter tree under `path`: `path` itself, its `params/` (a trainer step
    directory), or the newest step's `params/` (a trainer stage directory, runs/x/checkpoints/<stage>).
    """
    path = Path(path).absolute()
    if (path / "params").is_dir():
        return path / "params"
    children = path.iterdir() if path.is_dir() else ()
    steps = [int(p.name) for p in children if p.name.isdigit() and (p / "params").is_dir()]
    return path / str(max(steps)) / "params" if steps else path


def orbax_shapes(path: str | os.PathLike) -> dict[str, jax.ShapeDtypeStruct]:
    """'/'-joined path -> shape and dtype of every array of an Orbax tree (read from its metadata only).

    Raises:
      ValueError: when `path` holds no Orbax checkpoint.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not path.is_dir():
        raise ValueError(f"{path}: no Orbax checkpoint directory there")
    try:
        meta = ocp.StandardCheckpointer().metadata(path)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a readable Orbax checkpoint: {e}") from e
    meta = getattr(meta, "item_metadata", meta)
    shapes = {
        "/".join(str(getattr(k, "key", k)) for k in keys): jax.ShapeDtypeStruct(tuple(v.shape), v.dtype)
        for keys, v in jax.tree_util.tree_leaves_with_path(meta)
        if hasattr(v, "shape")
    }
    if not shapes:
        raise ValueError(f"{path}: not a readable Orbax checkpoint: no array metadata there")
    return shapes


def restore_params(path: str | os.PathLike, target: Any = None, *, mesh: Any = None) -> Any:
    """Restores an Orbax parameter checkpoint onto this process's devices, whatever mesh saved it.

    A checkpoint written by `lwm-train` on 8 devices restores on 1 and on any other mesh: the saved
    shardings are never used.

    Args:
      path: the directory `save_params` wrote, or a trainer step or stage directory (see
        `orbax_params_dir`).
      target: optional tree of arrays or `jax.ShapeDtypeStruct`s (with shardings, e.g. from
        `mesh.param_shardings`) giving the restored arrays' dtypes and placement.
      mesh: without `target`, place every parameter on this `jax.sharding.Mesh` by the sharding
        rules (`mesh.param_shardings`), straight from the files.

    Returns:
      The parameter tree: numpy arrays on the host when neither `target` nor `mesh` is given.

    Raises:
      ValueError: when `path` holds no Orbax checkpoint.
    """
    import orbax.checkpoint as ocp

    path = orbax_params_dir(path)
    if target is None:
        shapes = orbax_shapes(path)
        if mesh is None:  # host arrays: np.empty reserves no memory until Orbax fills it
            target = unflatten_dict({k: np.empty(v.shape, v.dtype) for k, v in shapes.items()}, sep="/")
        else:
            from lwmkit.lwm_model.mesh import param_shardings

            abstract = unflatten_dict(shapes, sep="/")
            target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract, param_shardings(abstract, mesh))  # fmt: skip
    elif not path.is_dir():
        raise ValueError(f"{path}: no Orbax checkpoint directory there")
    return ocp.StandardCheckpointer().restore(path, target)

