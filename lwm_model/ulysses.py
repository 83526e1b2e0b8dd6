"""Ulysses resharding for 2D sequence parallelism: all-to-alls that trade sequence for heads.

With the sequence sharded over a ring axis "sp" (size R) and a Ulysses axis (size U), device
(r, j) holds tokens chunk r*U + j of R*U equal chunks, with every head. Attention needs whole
ring chunks, so inside `shard_map` (lwmkit.lwm_model.ring) q, k and v go through one all-to-all
over the Ulysses axis that gathers the ring chunk r (U pieces, in order) and scatters the heads:
device (r, j) then holds tokens of chunk r with head group j, the ring runs over "sp" on those,
and the inverse all-to-all puts the output back in the sequence-sharded layout. Per device:

    q [b, T/(R*U), H, D]  --all-to-all-->  [b, T/R, H/U, D]  --ring over sp-->  out [b, T/R, H/U, D]
    out                   --all-to-all-->  [b, T/(R*U), H, D]
    segment ids, token indices [b, T/(R*U)]  --all-gather-->  [b, T/R]   (no head axis to trade)

Grouped-query heads: query head h uses key/value head h // (H / KVH). When the KVH key/value
heads split over U they are scattered like the query heads; otherwise each is repeated
`kv_repeat` times first (lcm(KVH, U) heads, every device gets the copies its query heads use), so
8 query / 2 key-value heads over U=4 sends each key/value head to the two devices that need it.
The all-to-alls and repeats are linear: their transposes (the backward pass) are the inverse
all-to-alls and a sum over the copies, and keep no residuals, so the ring's memory-efficient
custom backward is all the backward pass stores.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class UlyssesPlan:
    """How one attention call reshards over the Ulysses axis (hashable: part of a jit cache key).

    Attributes:
        axis: the mesh axis name.
        size: devices on it (U).
        kv_repeat: copies of every key/value head sent before the all-to-all (1 = split them).
    """

    axis: str
    size: int
    kv_repeat: int


def plan_heads(axis: str, size: int, heads: int, kv_heads: int) -> UlyssesPlan:
    """The plan for `heads` query and `kv_heads` key/value heads per device (after any tp split).

    Raises:
        ValueError: when the query heads do not split evenly over the Ulysses devices.
    """
    if heads % size:
        raise ValueError(
            f"{heads} query heads per device do not split over {axis}={size}: Ulysses needs the query "
            f"heads (after the tp split) to be a multiple of the {axis} size; use a smaller {axis} "
            f"and a larger ring (sp)"
        )
    repeat = 1 if kv_heads % size == 0 else size // math.gcd(kv_heads, size)
    return UlyssesPlan(axis, size, repeat)


def to_heads(x: jax.Array, plan: UlyssesPlan, kv: bool = False) -> jax.Array:
    """[b, L/U, h, D] sequence-sharded -> [b, L, h*repeat/U, D] head-sharded (inside shard_map)."""
    if kv and plan.kv_repeat > 1:
        x = jnp.repeat(x, plan.kv_repeat, axis=2)  # [b, L/U, lcm(h, U), D]
    return jax.lax.all_to_all(x, plan.axis, split_axis=2, concat_axis=1, tiled=True)


def to_sequence(x: jax.Array, plan: UlyssesPlan) -> jax.Array:
    """The inverse of `to_heads` for the output: [b, L, h/U, D] -> [b, L/U, h, D]."""
    return jax.lax.all_to_all(x, plan.axis, split_axis=1, concat_axis=2, tiled=True)


def gather_sequence(ids: jax.Array, plan: UlyssesPlan) -> jax.Array:
    """Per-token ids [b, L/U] -> the whole ring chunk [b, L] (segment ids, token indices)."""
    return jax.lax.all_gather(ids, plan.axis, axis=1, tiled=True)
