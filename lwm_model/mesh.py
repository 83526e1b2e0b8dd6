"""The device mesh (axes dp, fsdp, tp, sp, like LWM's `mesh_dim`) and every sharding rule, in one place.

Parameters are sharded by regular expressions over their '/'-joined path (LWM's partition rules):
matrices split their model-width side over ("fsdp", "sp") and their heads / MLP side over "tp"; a
scanned layer stack gets a leading unsharded layer axis. Activations use the named specs in
`ACTIVATION_SPECS`: batch over ("dp", "fsdp"), sequence over "sp", heads and vocabulary over "tp".
A mesh axis that does not divide its dimension is dropped from that dimension (replicated), so the
same rules serve the tiny test model and 7B.

Example, 8 devices:
    mesh = make_mesh("1,2,1,4")          # dp=1, fsdp=2, tp=1, sp=4
    mesh = make_mesh({"sp": -1})         # every device on the sequence axis
    params = shard_params(params, mesh)  # wq kernel [64, 64] -> P(("fsdp", "sp"), "tp")
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from lwmkit.lwm_model.mesh_spec import AXES, mesh_sizes

BATCH = ("dp", "fsdp")
FSDP = ("fsdp", "sp")

# (regex over the parameter path, spec of the unscanned parameter); the first match wins.
PARAM_RULES: tuple[tuple[str, P], ...] = (
    (r"transformer/(wte|vte)/embedding$", P("tp", FSDP)),
    (r"attention/(wq|wk|wv)/kernel$", P(FSDP, "tp")),
    (r"attention/wo/kernel$", P("tp", FSDP)),
    (r"feed_forward/(w1|w3)/kernel$", P(FSDP, "tp")),
    (r"feed_forward/w2/kernel$", P("tp", FSDP)),
    (r"(attention_norm|ffn_norm|ln_f)/kernel$", P(None)),
    (r"(lm_head|vision_head)/kernel$", P(FSDP, "tp")),
    (r".*", P()),
)

ACTIVATION_SPECS: dict[str, P] = {
    "tokens": P(BATCH, "sp"),  # [batch, seq]
    # [batch, seq, hidden], replicated over "tp" (Megatron style). Not P(BATCH, "sp", "tp"): with
    # XLA in jax 0.10.2 a row-parallel matmul (kernel P("tp", "fsdp")) resharded to that spec
    # swaps batch rows on a dp=2, fsdp=2, tp=2 mesh (tests/lwm_model/test_model.py checks meshes).
    "hidden": P(BATCH, "sp", None),
    "heads": P(BATCH, "sp", "tp", None),  # [batch, seq, heads, head_dim]
    "logits": P(BATCH, "sp", "tp"),  # [batch, seq, vocab]
    "cache": P(None, BATCH, "sp", "tp", None),  # [layers, batch, cache_len, kv_heads, head_dim]
}


def make_mesh(
    dims: str | Mapping[str, int] | Sequence[int] = "1,-1,1,1", devices: Sequence[Any] | None = None
) -> Mesh:
    """A mesh with axes ("dp", "fsdp", "tp", "sp").

    Args:
      dims: sizes in that order as "1,-1,1,1" or a sequence, or a dict naming some axes (the rest
        are 1). One size may be -1: it takes the devices left over.
      devices: the devices to use (default: all).

    Returns:
      A `jax.sharding.Mesh`.

    Raises:
      ValueError: for a malformed spec, an unknown axis, or sizes whose product is not the number
        of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_sizes(dims)
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh dims {dims!r}: {len(devices)} devices do not divide by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"mesh dims {dims!r} = {sizes} need {int(np.prod(sizes))} devices, have {len(devices)}"
            + _cpu_hint(int(np.prod(sizes)), devices)
        )
    return Mesh(np.asarray(devices, dtype=object).reshape(sizes), AXES)


def _cpu_hint(needed: int, devices: Sequence[Any]) -> str:
    """What to set when a CPU host has too few devices (XLA makes N virtual ones when asked)."""
    if needed <= len(devices) or not devices or getattr(devices[0], "platform", "") != "cpu":
        return ""
    return (f"; on CPU, start the process with XLA_FLAGS=--xla_force_host_platform_device_count={needed} "
            "(set before JAX starts)")


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """`spec` for an array of `shape`, without the mesh axes that do not divide their dimension.

    Axes the mesh lacks are dropped too; a spec shorter than the shape is padded with None.
    """
    out = []
    entries = tuple(spec) + (None,) * (len(shape) - len(spec))
    for dim, entry in zip(shape, entries, strict=True):
        names = (entry,) if isinstance(entry, str) else tuple(entry or ())
        kept, size = [], 1
        for name in names:
            n = mesh.shape.get(name, 0)
            if n and dim % (size * n) == 0:
                kept.append(name)
                size *= n
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return P(*out)


def param_specs(params: Any, mesh: Mesh | None = None) -> Any:
    """PartitionSpec of every parameter (same tree), from `PARAM_RULES`.

    A parameter with one more dimension than its rule (a scanned layer stack) gets a leading None.
    With `mesh`, axes that do not divide their dimension are dropped (see `fit_spec`).
    """
    flat = flatten_dict(params, sep="/")
    specs = {}
    for path, value in flat.items():
        spec = next(s for pattern, s in PARAM_RULES if re.search(pattern, path))
        ndim = len(np.shape(value))
        if len(spec) and ndim == len(spec) + 1:
            spec = P(None, *spec)
        specs[path] = fit_spec(spec, np.shape(value), mesh) if mesh is not None else spec
    return unflatten_dict(specs, sep="/")


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """NamedSharding of every parameter (params may be arrays or `jax.ShapeDtypeStruct`s)."""
    specs = param_specs(params, mesh)
    return jax.tree_util.tree_map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P)
    )


def shard_params(params: Any, mesh: Mesh) -> Any:
    """Places every parameter on `mesh` by the rules."""
    return jax.device_put(params, param_shardings(params, mesh))


def activation_sharding(name: str, shape: Sequence[int], mesh: Mesh) -> NamedSharding:
    """The sharding of activation `name` (a key of ACTIVATION_SPECS) for an array of `shape`."""
    if name not in ACTIVATION_SPECS:
        raise ValueError(f"unknown activation {name!r}; known: {list(ACTIVATION_SPECS)}")
    return NamedSharding(mesh, fit_spec(ACTIVATION_SPECS[name], shape, mesh))


def constrain(x: jax.Array, name: str, mesh: Mesh | None) -> jax.Array:
    """`with_sharding_constraint` by activation name; a no-op without a mesh."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, activation_sharding(name, x.shape, mesh))


def layout_batch(batch: Mapping[str, Any], layout: str, ring_size: int) -> dict[str, Any]:
    """Reorders every [batch, seq] field into a ring layout and adds `token_index` (original order).

    The model then runs on the reordered batch (RoPE reads `tokens_positions`, causality reads
    `token_index`); `undo_layout(logits, layout, ring_size)` puts outputs back in order. Fields
    without a sequence axis are kept as they are. With layout "zigzag" over 2 devices:
        tokens [a b c d e f g h] -> [a b g h c d e f], token_index [0 1 6 7 2 3 4 5]

    Raises:
      ValueError: for an unknown layout or a length it cannot split evenly over `ring_size`.
    """
    from lwmkit.lwm_model.layout import apply_layout, layout_permutation

    length = int(np.shape(batch["tokens"])[1])
    out = {
        k: apply_layout(v, layout, ring_size) if np.ndim(v) >= 2 else v for k, v in batch.items()
    }
    index = layout_permutation(length, layout, ring_size).astype(np.int32)
    out["token_index"] = np.broadcast_to(index, np.shape(batch["tokens"])[:2]).copy()
    return out
