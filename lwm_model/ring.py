"""RingAttention: exact blockwise attention over a sequence sharded on a ring of devices.

`ring_attention` (its public entry, in lwmkit.lwm_model.attention) and `ring_attention_with_work`
here are called on global arrays (outside any shard_map) that are already in the ring
layout (`lwmkit.lwm_model.layout.apply_layout`, applied once to the batch). Inside, `jax.shard_map`
gives every device its slice of the sequence: q, k, v [b, L, h, D] and segment ids [b, L] are all
sharded the same way, so no full-length array is replicated. Each of the n ring steps:

  1. decides, from per-block summaries of segment ids and original token indices, which
     (batch row, query block, key block) triples hold any unmasked score (`block_pair_mask`);
  2. runs a while loop over exactly those triples (fully masked pairs cost nothing: causality and
     document boundaries both count), folding each into a float32 online softmax;
  3. passes k, v and their segment ids to the next device with `ppermute` (the keys' original
     token indices follow from the layout and the step; only an explicit `token_index` travels).

The backward pass is a `custom_vjp`: it keeps only q, k, v, the output and the log-sum-exp per
query (O(L) per device, never an L x L matrix), recomputes scores block by block, and sends
dk and dv around the ring with their keys, so they arrive home after n hops.

2D sequence parallelism (`ulysses_axis`, lwmkit.lwm_model.ulysses): the sequence is sharded over
(ring axis, Ulysses axis); inside the shard_map q, k, v are all-to-all'ed over the Ulysses axis
from sequence shards to head groups of whole ring chunks (segment ids and token indices are
all-gathered the same way), the ring below runs over the ring axis unchanged, and the inverse
all-to-all restores the output's sequence sharding. The all-to-alls send (U-1)/U of each device's
q, k, v and output shards once per call, and the ring takes R-1 steps instead of R*U-1.

Causality compares ORIGINAL token indices: derived inside each device from the layout name and the
device's ring index (`layout=`), or passed as `token_index` [B, T] sharded like the segment ids.
Document-restarting RoPE positions are applied to q and k by the caller before this function.

Example (8 devices, one ring of 8, a packed batch in zigzag order):

    mesh = jax.make_mesh((8,), ("sp",), axis_types=(jax.sharding.AxisType.Explicit,))
    q, k, v, seg = (apply_layout(x, "zigzag", 8) for x in (q, k, v, segment_ids))
    out = undo_layout(ring_attention(q, k, v, seg, mesh=mesh, layout="zigzag"), "zigzag", 8)
    # out == dense_attention(q0, k0, v0, segment_ids, segment_ids) up to float32 rounding
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from lwmkit.lwm_model.layout import ROW_LAYOUTS, block_pair_mask, check_layout, local_token_index
from lwmkit.lwm_model.ulysses import UlyssesPlan, gather_sequence, plan_heads, to_heads, to_sequence


@dataclasses.dataclass(frozen=True)
class _Ring:
    """Static facts of one ring call (hashable: it is a nondiff argument of the custom_vjp)."""

    axis: str
    size: int
    causal: bool
    block_q: int
    block_k: int
    layout: str | None  # derives every token index from the layout; None: token indices travel with keys


def _varying(x: jax.Array) -> frozenset:
    aval = jax.typeof(x)
    vma = getattr(aval, "vma", None)
    return frozenset(vma if vma is not None else aval.manual_axis_type.varying)


def _vary_like(x: jax.Array, ref: jax.Array) -> jax.Array:
    """Mark `x` varying over every mesh axis `ref` varies over (loop carries must agree)."""
    missing = tuple(sorted(_varying(ref) - _varying(x)))
    return jax.lax.pcast(x, missing, to="varying") if missing else x


def _pair_list(ring: _Ring, seg_q, tok_q, seg_k, tok_k):
    """Flat indices of the (row, q block, k block) triples to compute (padded with 0), and how many."""
    keep = block_pair_mask(seg_q, tok_q, seg_k, tok_k, ring.block_q, ring.block_k, ring.causal).reshape(-1)
    (index,) = jnp.nonzero(keep, size=keep.size, fill_value=0)
    return index.astype(jnp.int32), keep.sum(dtype=jnp.int32)


def _run_pairs(ring: _Ring, pairs, nq: int, nk: int, pair, state):
    """A while loop over exactly the listed pairs: skipped pairs cost nothing."""
    index, count = pairs

    def body(i, st):
        row, rest = jnp.divmod(index[i], nq * nk)
        qi, kj = jnp.divmod(rest, nk)
        return pair(st, row, qi * ring.block_q, kj * ring.block_k)

    return jax.lax.fori_loop(0, count, body, state)


def _rows(x, row, start, size):
    """x[row, :, start:start+size] for head-major x [b, kvh, L, ...] -> [kvh, size, ...]."""
    starts = (row, 0, start) + (0,) * (x.ndim - 3)
    return jax.lax.dynamic_slice(x, starts, (1, x.shape[1], size) + x.shape[3:])[0]


def _put_rows(x, row, start, value):
    starts = (row, 0, start) + (0,) * (x.ndim - 3)
    return jax.lax.dynamic_update_slice(x, value.reshape((1, x.shape[1], -1) + x.shape[3:]).astype(x.dtype), starts)


def _tokens(x, row, start, size):
    return jax.lax.dynamic_slice(x, (row, start), (1, size))[0]


def _mask(ring: _Ring, seg_q, tok_q, seg_k, tok_k, row, q0, k0):
    """[bq, bk] visibility of one block pair."""
    sq, sk = _tokens(seg_q, row, q0, ring.block_q), _tokens(seg_k, row, k0, ring.block_k)
    mask = (sq[:, None] == sk[None, :]) & (sq[:, None] != 0)
    if ring.causal:
        mask &= _tokens(tok_q, row, q0, ring.block_q)[:, None] >= _tokens(tok_k, row, k0, ring.block_k)[None, :]
    return mask


def _where_visible(mask, x, fill, g: int):
    """Apply a [bq, bk] mask to x [kvh, bq*g, bk] (rows are query-major, then the group's heads)."""
    kvh, rows, bk = x.shape
    return jnp.where(mask[None, :, None, :], x.reshape(kvh, rows // g, g, bk), fill).reshape(x.shape)


def _travelling(ring: _Ring, k, v, seg, tok):
    """What goes round the ring: keys, values, their segment ids, and their token indices unless
    each device can derive those from the layout and the step."""
    return (k, v, seg) if ring.layout else (k, v, seg, tok)


def _key_tokens(ring: _Ring, kv, step, like):
    """Original token indices of the keys held at ring step `step` (they came from device r - step)."""
    if not ring.layout:
        return kv[3]
    source = (jax.lax.axis_index(ring.axis) - step) % ring.size
    tok = local_token_index(ring.layout, ring.size, like.shape[1], source)
    return _vary_like(jnp.broadcast_to(tok, like.shape), like)


def _arrived(ring: _Ring, kv, step, seg, tok):
    """k, v, segment ids, token indices held at ring step `step`, and the block pairs to compute."""
    k_cur, v_cur, seg_k = kv[:3]
    tok_k = _key_tokens(ring, kv, step, seg)
    return k_cur, v_cur, seg_k, tok_k, _pair_list(ring, seg, tok, seg_k, tok_k)


def _blocks(ring: _Ring, q, k, v, row, q0, k0):
    """One block pair in float32: q [kvh, bq*g, D] (query-major rows), k and v [kvh, bk, D]."""
    _, kvh, _, g, dim = q.shape
    qb = _rows(q, row, q0, ring.block_q).astype(jnp.float32).reshape(kvh, ring.block_q * g, dim)
    return qb, _rows(k, row, k0, ring.block_k).astype(jnp.float32), _rows(v, row, k0, ring.block_k).astype(jnp.float32)


def _rotate(ring: _Ring, xs):
    perm = [(i, (i + 1) % ring.size) for i in range(ring.size)]
    return tuple(jax.lax.ppermute(x, ring.axis, perm) for x in xs)


def _forward(ring: _Ring, q, k, v, seg, tok):
    """Per-device forward, head-major: q [b,kvh,L,g,D]; k, v [b,kvh,L,D]; seg, tok [b,L].

    Returns out float32 [b,kvh,L,g,D], lse float32 [b,kvh,L,g], pairs computed per step int32 [n].
    """
    b, kvh, length, g, dim = q.shape
    nq, nk = length // ring.block_q, length // ring.block_k
    rows, scale = ring.block_q * g, 1.0 / math.sqrt(dim)
    acc = jnp.zeros_like(q, dtype=jnp.float32)
    m = jnp.zeros_like(q[..., 0], dtype=jnp.float32) - jnp.inf  # running max per (query, head)
    denom = jnp.zeros_like(q[..., 0], dtype=jnp.float32)

    def one_step(state, kv, step):
        k_cur, v_cur, seg_k, tok_k, pairs = _arrived(ring, kv, step, seg, tok)

        def pair(st, row, q0, k0):
            acc, m, denom = st
            qb, kb, vb = _blocks(ring, q, k_cur, v_cur, row, q0, k0)
            s = jnp.einsum("hqd,hkd->hqk", qb, kb) * scale  # [kvh, bq*g, bk]
            s = _where_visible(_mask(ring, seg, tok, seg_k, tok_k, row, q0, k0), s, -jnp.inf, g)
            m_old = _rows(m, row, q0, ring.block_q).reshape(kvh, rows)
            m_new = jnp.maximum(m_old, s.max(-1))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows with nothing visible yet
            p = jnp.exp(s - m_safe[..., None])  # masked scores give exp(-inf) = 0
            corr = jnp.exp(m_old - m_safe)
            o_old = _rows(acc, row, q0, ring.block_q).reshape(kvh, rows, dim)
            acc = _put_rows(acc, row, q0, o_old * corr[..., None] + jnp.einsum("hqk,hkd->hqd", p, vb))
            l_new = _rows(denom, row, q0, ring.block_q).reshape(kvh, rows) * corr + p.sum(-1)
            return acc, _put_rows(m, row, q0, m_new), _put_rows(denom, row, q0, l_new)

        return _run_pairs(ring, pairs, nq, nk, pair, state), pairs[1]

    kv = _travelling(ring, k, v, seg, tok)
    state, count = one_step((acc, m, denom), kv, 0)
    counts = _vary_like(jnp.zeros((ring.size,), jnp.int32), count).at[0].set(count)

    def ring_step(t, carry):
        state, kv, counts = carry
        kv = _rotate(ring, kv)
        state, count = one_step(state, kv, t)
        return state, kv, counts.at[t].set(count)

    if ring.size > 1:
        state, _, counts = jax.lax.fori_loop(1, ring.size, ring_step, (state, kv, counts))
    acc, m, denom = state
    seen = denom > 0  # a query with no visible key (padding) outputs 0
    out = acc / jnp.where(seen, denom, 1.0)[..., None]
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, denom, 1.0)), 0.0)
    return out, lse, counts


def _backward(ring: _Ring, q, k, v, seg, tok, out, lse, dout):
    """Per-device backward: dq, dk, dv in float32, with dk and dv travelling the ring with k and v."""
    b, kvh, length, g, dim = q.shape
    nq, nk = length // ring.block_q, length // ring.block_k
    rows, scale = ring.block_q * g, 1.0 / math.sqrt(dim)
    dout = dout.astype(jnp.float32)
    delta = jnp.sum(dout * out, -1)  # [b, kvh, L, g]
    dq = jnp.zeros_like(q, dtype=jnp.float32)

    def one_step(dq, carried, step):
        kv, (dk, dv) = carried
        k_cur, v_cur, seg_k, tok_k, pairs = _arrived(ring, kv, step, seg, tok)

        def pair(st, row, q0, k0):
            dq, dk, dv = st
            qb, kb, vb = _blocks(ring, q, k_cur, v_cur, row, q0, k0)
            dob = _rows(dout, row, q0, ring.block_q).reshape(kvh, rows, dim)
            lse_b = _rows(lse, row, q0, ring.block_q).reshape(kvh, rows)
            delta_b = _rows(delta, row, q0, ring.block_q).reshape(kvh, rows)
            p = jnp.exp(jnp.einsum("hqd,hkd->hqk", qb, kb) * scale - lse_b[..., None])  # [kvh, bq*g, bk]
            p = _where_visible(_mask(ring, seg, tok, seg_k, tok_k, row, q0, k0), p, 0.0, g)
            ds = p * (jnp.einsum("hqd,hkd->hqk", dob, vb) - delta_b[..., None]) * scale
            dq_b = _rows(dq, row, q0, ring.block_q).reshape(kvh, rows, dim) + jnp.einsum("hqk,hkd->hqd", ds, kb)
            dk_b = _rows(dk, row, k0, ring.block_k) + jnp.einsum("hqk,hqd->hkd", ds, qb)
            dv_b = _rows(dv, row, k0, ring.block_k) + jnp.einsum("hqk,hqd->hkd", p, dob)
            return _put_rows(dq, row, q0, dq_b), _put_rows(dk, row, k0, dk_b), _put_rows(dv, row, k0, dv_b)

        dq, dk, dv = _run_pairs(ring, pairs, nq, nk, pair, (dq, dk, dv))
        return dq, (kv, (dk, dv))

    zeros_kv = jnp.zeros_like(k, dtype=jnp.float32)
    dq, carried = one_step(dq, (_travelling(ring, k, v, seg, tok), (zeros_kv, zeros_kv)), 0)

    def ring_step(t, carry):
        dq, (kv, dkv) = carry
        return one_step(dq, (_rotate(ring, kv), _rotate(ring, dkv)), t)

    if ring.size > 1:
        dq, carried = jax.lax.fori_loop(1, ring.size, ring_step, (dq, carried))
        dk, dv = _rotate(ring, carried[1])  # the n-th hop brings every dk, dv back to its keys' device
    else:
        dk, dv = carried[1]
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring_core(ring: _Ring, q, k, v, seg, tok):
    out, _, counts = _forward(ring, q, k, v, seg, tok)
    return out.astype(q.dtype), counts


def _ring_core_fwd(ring: _Ring, q, k, v, seg, tok):
    out, lse, counts = _forward(ring, q, k, v, seg, tok)
    return (out.astype(q.dtype), counts), (q, k, v, seg, tok, out, lse)


def _ring_core_bwd(ring: _Ring, res, cotangents):
    q, k, v, seg, tok, out, lse = res
    dout, _ = cotangents
    dq, dk, dv = _backward(ring, q, k, v, seg, tok, out, lse, dout)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_ring_core.defvjp(_ring_core_fwd, _ring_core_bwd)


def _fit_block(name: str, block: int, local: int, layout: str) -> int:
    """The block size used: at most one layout piece (a zigzag device holds two separate chunks)."""
    piece = local // 2 if layout == "zigzag" else local
    fitted = min(block, piece)
    if block < 1 or piece % fitted:
        raise ValueError(
            f"{name}={block} must be >= 1 and divide the {piece} contiguous tokens each device holds per "
            f"{layout!r} piece (or exceed them)"
        )
    return fitted


def _present(mesh, axes: Sequence[str] | str | None) -> tuple[str, ...]:
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return tuple(a for a in axes if a in mesh.axis_names)


def ring_attention_with_work(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    mesh: jax.sharding.Mesh,
    causal: bool = True,
    axis: str = "sp",
    block_q: int = 512,
    block_k: int = 512,
    batch_axes: Sequence[str] = ("dp", "fsdp"),
    head_axis: str | None = "tp",
    layout: str = "contiguous",
    token_index: jax.Array | None = None,
    ulysses_axis: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`ring_attention`, plus the block pairs each device computed at each ring step.

    Returns:
        (out [B, T, H, D] in q's dtype, work int32 [ring_size (step), devices]) where devices run
        over every device of the mesh in the mesh's (row-major) order; on a mesh with only the ring
        axis, work matches `attention_work` on the segment ids in their original order.
    """
    for name, value in (("axis", axis), ("ulysses_axis", ulysses_axis)):
        if value is not None and value not in mesh.axis_names:
            raise ValueError(f"{name}={value!r} is not a mesh axis; mesh axes: {', '.join(mesh.axis_names)}")
    if ulysses_axis == axis:
        raise ValueError(f"ulysses_axis={ulysses_axis!r} must differ from the ring axis {axis!r}")
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape}: expected q [B,T,H,D] and k = v [B,T,KVH,D]")
    batch, length, heads, dim = q.shape
    kv_heads = k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"q has {heads} heads, not a multiple of the {kv_heads} key/value heads")
    if segment_ids.shape != (batch, length):
        raise ValueError(f"segment_ids {segment_ids.shape} must be [B, T] = {(batch, length)}")
    n = mesh.shape[axis]
    check_layout(layout, length, n)
    if layout in ROW_LAYOUTS and token_index is None:
        raise ValueError(f"layout={layout!r} differs row by row: pass its token_index (see layout_batch)")
    local = length // n
    ring = _Ring(
        axis,
        n,
        causal,
        _fit_block("block_q", block_q, local, layout),
        _fit_block("block_k", block_k, local, layout),
        None if token_index is not None else layout,
    )

    batch_spec = _present(mesh, batch_axes) or None
    head_spec = (_present(mesh, head_axis) or (None,))[0]
    tp = mesh.shape[head_spec] if head_spec is not None else 1
    if kv_heads % tp:
        raise ValueError(f"{kv_heads} key/value heads do not split over {head_axis}={tp}")
    plan = None
    if ulysses_axis is not None and mesh.shape[ulysses_axis] > 1:
        u = mesh.shape[ulysses_axis]
        if local % u:
            raise ValueError(f"sequence length {length} must be a multiple of {n * u}: {axis}={n} ring devices "
                             f"x {ulysses_axis}={u} Ulysses devices")
        plan = plan_heads(ulysses_axis, u, heads // tp, kv_heads // tp)
    if token_index is not None and token_index.shape != (batch, length):
        raise ValueError(f"token_index {token_index.shape} must be [B, T] = {(batch, length)}")
    # With a Ulysses axis (even of size 1) the sequence is sharded over both axes, in and out, like
    # the model's activations ("sp", "ulysses"): explicit-sharding meshes tell the two specs apart.
    seq = (axis, ulysses_axis) if ulysses_axis is not None else axis
    fn = _sharded(mesh, ring, batch_spec, head_spec, seq, plan)
    return fn(q, k, v, segment_ids, *([] if token_index is None else [token_index]))


@functools.lru_cache(maxsize=64)
def _sharded(mesh, ring: _Ring, batch_spec, head_spec, seq, plan: UlyssesPlan | None = None):
    """The jitted shard_map for one configuration (cached, so eager calls compile once)."""
    # seq: the ring axis, or (ring axis, Ulysses axis): device (r, j) holds chunk r*U + j
    x_spec, s_spec = P(batch_spec, seq, head_spec, None), P(batch_spec, seq)
    specs = (x_spec, x_spec, x_spec, s_spec) + (() if ring.layout else (s_spec,))
    explicit = any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)

    def body(q, k, v, seg, *tok):
        seg = seg.astype(jnp.int32)
        tok = tok[0].astype(jnp.int32) if tok else None
        if plan:  # trade sequence for heads: this device's head group over the whole ring chunk
            q, k, v = to_heads(q, plan), to_heads(k, plan, kv=True), to_heads(v, plan, kv=True)
            seg = gather_sequence(seg, plan)
            tok = None if tok is None else gather_sequence(tok, plan)
        b, loc = seg.shape
        if tok is None:
            tok = _key_tokens(ring, (), 0, seg)  # this device's own tokens
        h, kvh, dim = q.shape[2], k.shape[2], q.shape[3]
        # Head-major inside the kernel, so every block product is a plain batched matmul over the
        # key/value heads: q [b, kvh, L, g, D] (g query heads share one key head), k, v [b, kvh, L, D].
        qh = q.reshape(b, loc, kvh, h // kvh, dim).transpose(0, 2, 1, 3, 4)
        kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        out, counts = _ring_core(ring, qh, kh, vh, seg, tok)
        out = out.transpose(0, 2, 1, 3, 4).reshape(q.shape)
        return (to_sequence(out, plan) if plan else out), counts[:, None]

    sharded = jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=(x_spec, P(None, tuple(mesh.axis_names))))

    def call(*args):
        if explicit:  # explicit-axis meshes do not reshard implicitly at a shard_map boundary
            args = [jax.sharding.reshard(a, NamedSharding(mesh, spec)) for a, spec in zip(args, specs, strict=True)]
        return sharded(*args)

    return jax.jit(call)
