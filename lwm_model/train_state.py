"""Checkpoints of a training stage (Orbax), and the parameters a run starts from.

One `StageCheckpoints` directory per stage, one sub-directory per saved step, written together and
asynchronously (the trainer goes on while Orbax writes), the newest `keep` kept:
    runs/tiny/checkpoints/tiny-512/20/params      the parameters (an Orbax StandardCheckpointer tree:
                                                  `checkpoint.restore_params` and `init_from=orbax:` read it)
                                     /opt_state   the optimiser state
                                     /loader      the Grain iterator's state (JSON): the next batch
                                     /meta        stage, step, seq_len (JSON)
Restoring all four continues the stage bit-identically: the same parameters and moments, the same
learning-rate step, the same next batch.

`initial_params` builds the first stage's parameters: random from the seed, or pretrained
(`orbax:DIR`, `lwm:FILE` for LWM's released streaming msgpack, `hf:DIR` for a Hugging Face LLaMA);
parameters the source lacks (a text model's missing vision tables) start random, and a source
parameter the model lacks, or of another shape, is an error naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from lwmkit.lwm_model.config import LWMConfig


class StageCheckpoints:
    """The checkpoints of one stage in `directory` (created when first saved)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, asynchronous: bool = True):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).absolute()
        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Mapping[str, Any], loader_state: Mapping[str, Any],
             meta: Mapping[str, Any]) -> None:
        """Starts writing {params, opt_state, loader, meta} for `step`; returns once the arrays are copied."""
        args = self._ocp.args
        self._manager.save(step, args=args.Composite(
            params=args.StandardSave(state["params"]),
            opt_state=args.StandardSave(state["opt_state"]),
            loader=args.JsonSave(dict(loader_state)),
            meta=args.JsonSave(dict(meta)),
        ), force=True)

    def restore(self, step: int, abstract_state: Mapping[str, Any]) -> tuple[dict[str, Any], dict, dict]:
        """(state, loader_state, meta) at `step`; arrays land with `abstract_state`'s shardings.

        Raises:
          ValueError: naming the checkpoint when it does not fit the state (another model or optimiser).
        """
        args = self._ocp.args
        try:
            out = self._manager.restore(step, args=args.Composite(
                params=args.StandardRestore(abstract_state["params"]),
                opt_state=args.StandardRestore(abstract_state["opt_state"]),
                loader=args.JsonRestore(),
                meta=args.JsonRestore(),
            ))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self.directory}/{step}: does not fit this stage's model and optimiser: {e}") from e
        step_array = jax.device_put(np.int32(step), abstract_state["step"].sharding)
        state = {"params": out["params"], "opt_state": out["opt_state"], "step": step_array}
        return state, dict(out["loader"]), dict(out["meta"])

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Only the parameters at `step` (a later stage starts from them)."""
        args = self._ocp.args
        return self._manager.restore(step, args=args.Composite(params=args.StandardRestore(abstract_params)))["params"]

    def wait(self) -> None:
        """Blocks until every checkpoint started has been written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _read_orbax(path: Path, abstract: Mapping[str, Any]) -> dict[str, Any]:
    """'/'-joined parameters of an Orbax tree (saved on any mesh), restored straight into `abstract`'s shardings."""
    from lwmkit.lwm_model.checkpoint import orbax_params_dir, orbax_shapes, restore_params

    path = orbax_params_dir(path)
    shapes = {k: tuple(v.shape) for k, v in orbax_shapes(path).items()}
    _check_fit(shapes, {k: tuple(v.shape) for k, v in abstract.items()}, str(path))
    target = unflatten_dict({k: abstract[k] for k in shapes}, sep="/")
    return flatten_dict(restore_params(path, target), sep="/")


def _check_fit(shapes: Mapping[str, tuple], want: Mapping[str, tuple], source: str) -> None:
    extra = sorted(set(shapes) - set(want))
    bad = [f"{k} {shapes[k]} (model: {want[k]})" for k in shapes if k in want and shapes[k] != want[k]]
    if extra or bad:
        raise ValueError(f"{source}: parameters that do not fit the model: unknown {extra}, wrong shape {bad}")


def initial_params(init_from: str, config: LWMConfig, shardings: Any, rng: jax.Array) -> tuple[Any, list[str]]:
    """The first stage's parameters, placed with `shardings`, and the names of those that start random.

    Args:
      init_from: "" (all random), "orbax:DIR", "lwm:FILE" or "hf:DIR".
      config: the first stage's model.
      shardings: NamedShardings of the parameter tree (`mesh.param_shardings`).
      rng: the random init's key.

    Raises:
      ValueError: for an unknown source kind, or parameters that do not fit the model (naming them).
    """
    from lwmkit.lwm_model.train_step import init_model_params

    fresh = jax.jit(lambda key: init_model_params(config, key), out_shardings=shardings)(rng)
    if not init_from:
        return fresh, sorted(flatten_dict(fresh, sep="/"))
    kind, _, location = init_from.partition(":")
    fresh_flat = flatten_dict(fresh, sep="/")
    flat_shardings = flatten_dict(shardings, sep="/")
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=flat_shardings[k]) for k, v in fresh_flat.items()}
    if kind == "orbax":
        loaded = _read_orbax(Path(location), abstract)
    elif kind in ("lwm", "hf"):
        loaded = _read_host_params(kind, location, config, abstract)
    else:
        raise ValueError(f"init_from={init_from!r}: the kind must be orbax, lwm or hf")
    _check_fit({k: tuple(np.shape(v)) for k, v in loaded.items()}, {k: v.shape for k, v in abstract.items()},
               init_from)
    merged = {k: loaded.get(k, v) for k, v in fresh_flat.items()}
    return unflatten_dict(merged, sep="/"), sorted(set(fresh_flat) - set(loaded))


def _read_host_params(kind: str, location: str, config: LWMConfig, abstract: Mapping[str, Any]) -> dict[str, Any]:
    """LWM msgpack or Hugging Face parameters, read on the host and placed by `abstract`'s shardings."""
    import dataclasses

    from lwmkit.lwm_model.checkpoint import read_lwm_params, stack_layers, unstack_layers

    if kind == "lwm":
        flat = read_lwm_params(location)
    else:
        from lwmkit.lwm_model.hf_llama import load_hf_llama

        # Loaded into a text-only twin of the model: the checkpoint has no vision tables.
        _, params = load_hf_llama(location, dataclasses.replace(config, vision=False))
        flat = flatten_dict(params, sep="/")
    scanned = any("/scan_decoder/" in k for k in flat)
    if config.scan_layers and not scanned:
        flat = stack_layers(flat, config.num_layers)
    elif not config.scan_layers and scanned:
        flat = unstack_layers(flat)
    _check_fit({k: tuple(np.shape(v)) for k, v in flat.items()}, {k: v.shape for k, v in abstract.items()},
               f"{kind}:{location}")
    return {k: jax.device_put(np.asarray(v).astype(abstract[k].dtype), abstract[k].sharding) for k, v in flat.items()}
