"""Attention for the LWM model: the dense reference path, the ring path's entry points, and the
blockwise feed-forward that keeps long sequences' MLP activations to one chunk at a time.

The model picks an implementation by name (`ATTENTION_IMPLS`, config `attention_impl`):
  "dense"  `dense_attention`: materialises the [T, S] scores; the reference the tests trust.
  "ring"   `ring_attention` (lwmkit.lwm_model.ring): sequence sharded over a mesh axis, blockwise;
           with `ulysses_axis`, 2D: Ulysses all-to-alls over a second axis around the ring.

Masking contract shared by both: a query sees a key only when both carry the same non-zero segment
id and, if causal, the key's position is not after the query's; padding (segment id 0) queries see
nothing and output zeros. Segment ids and positions follow the packed records' `<field>_segment_ids`
(0 = padding) and `<field>_positions` (restart at 0 for every document, used for RoPE by the model).

Example (one row holding two packed documents and a padding token):

    segment_ids = [[1, 1, 2, 2, 0]]
    out = dense_attention(q, k, v, segment_ids, segment_ids)
    # out[0, 2] attends to keys 2 only; out[0, 3] to keys 2-3; out[0, 4] == 0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from lwmkit.lwm_model.layout import LAYOUTS, apply_layout, attention_work, undo_layout
from lwmkit.lwm_model.ring import ring_attention_with_work

ATTENTION_IMPLS = ("dense", "ring")

__all__ = [
    "ATTENTION_IMPLS",
    "LAYOUTS",
    "apply_layout",
    "attention_mask",
    "attention_work",
    "blockwise_ffn",
    "dense_attention",
    "ring_attention",
    "ring_attention_with_work",
    "undo_layout",
]


def attention_mask(
    segment_ids_q: jax.Array,
    segment_ids_kv: jax.Array,
    *,
    causal: bool = True,
    positions_q: jax.Array | None = None,
    positions_kv: jax.Array | None = None,
) -> jax.Array:
    """bool [B, T, S]: True where query t may see key s (same non-zero segment, and causal order)."""
    seg_q, seg_kv = jnp.asarray(segment_ids_q), jnp.asarray(segment_ids_kv)
    mask = (seg_q[:, :, None] == seg_kv[:, None, :]) & (seg_q[:, :, None] != 0)
    if causal:
        pos_q = jnp.arange(seg_q.shape[1]) if positions_q is None else jnp.asarray(positions_q)
        pos_kv = jnp.arange(seg_kv.shape[1]) if positions_kv is None else jnp.asarray(positions_kv)
        pos_q = jnp.broadcast_to(pos_q, seg_q.shape)
        pos_kv = jnp.broadcast_to(pos_kv, seg_kv.shape)
        mask &= pos_kv[:, None, :] <= pos_q[:, :, None]
    return mask


def dense_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids_q: jax.Array | None,
    segment_ids_kv: jax.Array | None,
    *,
    causal: bool = True,
    positions_q: jax.Array | None = None,
    positions_kv: jax.Array | None = None,
) -> jax.Array:
    """Reference attention with segment masking and grouped-query heads.

    Args:
        q: [B, T, H, D]; k, v: [B, S, KVH, D] with H % KVH == 0 (each key/value head serves
            H / KVH consecutive query heads).
        segment_ids_q, segment_ids_kv: int [B, T] / [B, S]; 0 = padding. None = one segment.
        causal: hide keys whose position is after the query's.
        positions_q, positions_kv: int [T]/[B, T] and [S]/[B, S], the order used by the causal
            mask; default 0..T-1 and 0..S-1. Pass ORIGINAL token indices for laid-out sequences.

    Returns:
        [B, T, H, D] in q's dtype. Softmax in float32 (float64 for float64 inputs); a query with no
        visible key outputs zeros.

    Raises:
        ValueError: shapes that do not match.
    """
    batch, length, heads, dim = q.shape
    if k.ndim != 4 or k.shape != v.shape or k.shape[0] != batch or k.shape[3] != dim or heads % k.shape[2]:
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape}: expected k = v [B,S,KVH,D] with H % KVH == 0")
    kv_heads, kv_len = k.shape[2], k.shape[1]
    seg_q = jnp.ones((batch, length), jnp.int32) if segment_ids_q is None else segment_ids_q
    seg_kv = jnp.ones((batch, kv_len), jnp.int32) if segment_ids_kv is None else segment_ids_kv
    if seg_q.shape != (batch, length) or seg_kv.shape != (batch, kv_len):
        raise ValueError(f"segment ids {seg_q.shape} / {seg_kv.shape} must be [B,T] / [B,S] = {(batch, length)} / "
                         f"{(batch, kv_len)}")
    mask = attention_mask(seg_q, seg_kv, causal=causal, positions_q=positions_q, positions_kv=positions_kv)
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    qg = q.astype(dtype).reshape(batch, length, kv_heads, heads // kv_heads, dim)  # [B, T, kvh, g, D]
    s = jnp.einsum("bthgd,bshd->bhgts", qg, k.astype(dtype)) / math.sqrt(dim)  # [B, kvh, g, T, S]
    mask = mask[:, None, None]
    s = jnp.where(mask, s, -jnp.inf)
    m = jax.lax.stop_gradient(s.max(-1, keepdims=True))
    p = jnp.where(mask, jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
    denom = p.sum(-1, keepdims=True)
    p = p / jnp.where(denom > 0, denom, 1.0)
    out = jnp.einsum("bhgts,bshd->bthgd", p, v.astype(dtype))
    return out.reshape(batch, length, heads, dim).astype(q.dtype)


def blockwise_ffn(
    fn: Callable[[jax.Array], jax.Array] | nn.Module, x: jax.Array, chunk: int, *, remat: bool = True
) -> jax.Array:
    """Apply a position-wise `fn` to `x` [B, T, ...] in sequence chunks of `chunk` tokens.

    Only one chunk's intermediate activations (e.g. the MLP's [B, chunk, 4d] hidden layer) exist at a
    time; with `remat` the backward pass recomputes them per chunk instead of storing all T.
    `fn` is a function of one array (`jax.lax.map` over chunks) or a bound Flax linen module called
    from inside another module's method (lifted `nn.scan`, parameters shared across chunks).

    Example: blockwise_ffn(mlp, x [2, 8192, 512], 1024) == mlp(x), computed as 8 chunks [2, 1024, 512].

    Raises:
        ValueError: T is not a multiple of chunk.
    """
    batch, length = x.shape[:2]
    if chunk < 1 or length % chunk:
        raise ValueError(f"chunk={chunk} must be >= 1 and divide the sequence length {length}")
    chunks = jnp.moveaxis(x.reshape(batch, length // chunk, chunk, *x.shape[2:]), 1, 0)  # [n, B, chunk, ...]
    if isinstance(fn, nn.Module):

        def step(module, carry, xs):
            return carry, module(xs)

        body = nn.remat(step) if remat else step
        scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False, "dropout": True})
        _, ys = scan(fn, None, chunks)
    else:
        ys = jax.lax.map(jax.checkpoint(fn) if remat else fn, chunks)
    ys = jnp.moveaxis(ys, 0, 1)
    return ys.reshape(batch, length, *ys.shape[3:])


def ring_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, **options: Any) -> jax.Array:
    """Exact attention over a sequence sharded on the mesh axis `axis`, by RingAttention
    (lwmkit.lwm_model.ring: blockwise float32 online softmax, fully masked block pairs skipped,
    k/v and their segment ids passed round the ring, custom memory-efficient backward).

    Args:
        q: [B, T, H, D] queries, already in `layout` order; k, v: [B, T, KVH, D] (H % KVH == 0).
        segment_ids: int [B, T] in the same order; 0 = padding (its query outputs 0, its key is
            never seen); a query sees only keys of its own segment.
        options: keyword-only, typed and defaulted by `ring_attention_with_work`: `mesh` (required),
            causal=True, axis="sp", block_q=block_k=512, batch_axes=("dp", "fsdp"), head_axis="tp",
            layout="contiguous", token_index=None, ulysses_axis=None; each one is:
        mesh: a mesh with axis `axis`; batch is sharded over the `batch_axes` present in it and heads
            over `head_axis` if present. Explicit-axis meshes get their inputs resharded to match.
        causal: mask keys whose original token index is after the query's.
        block_q, block_k: block sizes of the online softmax (clamped to one device's layout piece;
            must divide it). Block pairs with nothing visible are skipped.
        layout: the token layout the inputs are in ("contiguous", "zigzag", "striped"); gives the
            original token indices unless `token_index` is passed.
        token_index: optional int [B, T] original token index of every position (sharded like
            segment_ids); overrides the one derived from `layout`, and then travels the ring
            with the keys (one more ppermute per step), so pass None for a batch in `layout`.
            Required for layout "balanced" (chosen per row, `layout_batch` adds it).
        ulysses_axis: a second sequence axis for 2D sequence parallelism (lwmkit.lwm_model.ulysses):
            the sequence is sharded over (axis, ulysses_axis), an all-to-all over it trades
            sequence for heads before the ring and back after, so the ring runs over `axis` on
            whole ring chunks with H / U heads per device. The query heads per device (after
            `head_axis`) must divide by its size U; key/value heads are split when they divide
            by U, else repeated to lcm(KVH, U). None, or an axis of size 1: ring only.

    Returns:
        [B, T, H, D] in q's dtype and layout. Softmax runs in float32; gradients flow to q, k, v
        through a memory-efficient custom backward pass.

    Raises:
        ValueError: unknown axis or layout, shapes that do not split over the ring (or the Ulysses
            axis), heads that do not split over the Ulysses axis, mismatched shapes.
    """
    out, _ = ring_attention_with_work(q, k, v, segment_ids, **options)
    return out
