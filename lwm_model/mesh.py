"""The device mesh (axes dp, fsdp, tp, sp, ulysses; LWM's `mesh_dim` plus Ulysses) and every sharding rule.

Parameters are sharded by regular expressions over their '/'-joined path (LWM's partition rules):
matrices split their model-width side over ("fsdp", "sp", "ulysses") and their heads / MLP side
over "tp"; a scanned layer stack gets a leading unsharded layer axis. Activations use the named
specs in `ACTIVATION_SPECS`: batch over ("dp", "fsdp"), sequence over ("sp", "ulysses"), heads
and vocabulary over "tp". A mesh axis that does not divide its dimension is dropped from that
dimension (replicated), so the same rules serve the tiny test model and 7B.

The sequence is sharded over two axes (2D sequence parallelism): "sp" is the RingAttention ring
(k/v travel by ppermute, one neighbour at a time, overlapping compute: fine over slower
inter-node links) and "ulysses" trades sequence for heads with all-to-alls (two per attention
call each way, bandwidth-bound: keep it on fast intra-node links). "ulysses" is the innermost
axis, so its devices are consecutive device ids (one node); a mesh string may leave it out
("dp,fsdp,tp,sp" means ulysses=1).

Example, 8 devices:
    mesh = make_mesh("1,2,1,4")          # dp=1, fsdp=2, tp=1, sp=4 (ulysses=1)
    mesh = make_mesh("1,1,1,2,4")        # a ring of 2 over groups of 4 Ulysses devices
    mesh = make_mesh({"sp": -1})         # every device on the ring
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
SEQUENCE = ("sp", "ulysses")  # the ring's chunk r holds Ulysses pieces r*U .. r*U + U-1
FSDP = ("fsdp", "sp", "ulysses")

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
    "tokens": P(BATCH, SEQUENCE),  # [batch, seq]
    # [batch, seq, hidden], replicated over "tp" (Megatron style). Not P(BATCH, "sp", "tp"): with
    # XLA in jax 0.10.2 a row-parallel matmul (kernel P("tp", "fsdp")) resharded to that spec
    # swaps batch rows on a dp=2, fsdp=2, tp=2 mesh (tests/lwm_model/test_model.py checks meshes).
    "hidden": P(BATCH, SEQUENCE, None),
    "heads": P(BATCH, SEQUENCE, "tp", None),  # [batch, seq, heads, head_dim]
    "logits": P(BATCH, SEQUENCE, "tp"),  # [batch, seq, vocab]
    "cache": P(None, BATCH, SEQUENCE, "tp", None),  # [layers, batch, cache_len, kv_heads, head_dim]
}


def make_mesh(
    dims: str | Mapping[str, int] | Sequence[int] = "1,-1,1,1", devices: Sequence[Any] | None = None
) -> Mesh:
    """A mesh with axes ("dp", "fsdp", "tp", "sp", "ulysses").

    Args:
      dims: sizes in that order as "1,-1,1,1,1" or a sequence, or a dict naming some axes (the rest
        are 1); four sizes (dp, fsdp, tp, sp) mean ulysses=1. One size may be -1: it takes the
        devices left over.
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


def sequence_parallel(mesh: Mesh | None) -> tuple[int, int]:
    """(ring size "sp", Ulysses size "ulysses") of `mesh`; (1, 1) without a mesh. The sequence
    splits into sp x ulysses shards; layouts (zigzag, balanced) are laid over the ring only."""
    if mesh is None:
        return 1, 1
    return int(mesh.shape.get("sp", 1)), int(mesh.shape.get("ulysses", 1))


def layout_batch(
    batch: Mapping[str, Any],
    layout: str,
    ring_size: int,
    block: int | tuple[int, int] | None = None,
    causal: bool = True,
) -> dict[str, Any]:
    """Reorders every [batch, seq] field into a ring layout and adds `token_index` (original order).

    The model then runs on the reordered batch (RoPE reads `tokens_positions`, causality reads
    `token_index`); `restore_order(logits, token_index)` (or `undo_layout(logits, layout,
    ring_size)` for a fixed layout) puts outputs back in order. Fields without a sequence axis are
    kept as they are. With layout "zigzag" over 2 devices:
        tokens [a b c d e f g h] -> [a b g h c d e f], token_index [0 1 6 7 2 3 4 5]
    Layout "balanced" (lwmkit.lwm_model.balance) is chosen per row from `tokens_segment_ids` for the
    ring's `block` size (and `causal`), so that every ring device gets the same attention work.

    Raises:
      ValueError: for an unknown layout, a length it cannot split evenly over `ring_size`, or
        "balanced" without `block`.
    """
    from lwmkit.lwm_model.layout import ROW_LAYOUTS, apply_layout, layout_permutation

    shape = np.shape(batch["tokens"])[:2]
    if layout in ROW_LAYOUTS:
        from lwmkit.lwm_model.balance import balanced_permutations

        if block is None:
            raise ValueError(f"layout={layout!r} is chosen for the ring's block size: pass block=")
        index = balanced_permutations(batch["tokens_segment_ids"], ring_size, block, causal)

        def put(v):
            v = np.asarray(v)
            return np.take_along_axis(v, index.reshape(index.shape + (1,) * (v.ndim - 2)), axis=1)

        out = {k: put(v) if np.ndim(v) >= 2 else v for k, v in batch.items()}
        out["token_index"] = index.astype(np.int32)
        return out
    out = {
        k: apply_layout(v, layout, ring_size) if np.ndim(v) >= 2 else v for k, v in batch.items()
    }
    index = layout_permutation(shape[1], layout, ring_size).astype(np.int32)
    out["token_index"] = np.broadcast_to(index, shape).copy()
    return out
