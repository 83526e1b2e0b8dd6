"""Token layouts that balance causal ring attention, and the block-pair work they leave to each device.

A ring of `n` devices shards the sequence axis into `n` equal, contiguous pieces. Under a causal mask
the contiguous layout gives device 0 almost nothing to do and device n-1 almost everything; a
load-balancing layout reorders the tokens once, before the model runs, so that every device holds
early and late tokens alike, and the outputs are put back in order once at the end:

    contiguous  device r holds tokens [r*L, (r+1)*L)                          (L = T / n)
    zigzag      device r holds chunks r and 2n-1-r of 2n equal chunks
    striped     device r holds tokens r, r+n, r+2n, ...

Example (T = 8, n = 2; the digits are original token indices):

    apply_layout([0 1 2 3 4 5 6 7], "zigzag", 2)  -> [0 1 6 7 | 2 3 4 5]
    apply_layout([0 1 2 3 4 5 6 7], "striped", 2) -> [0 2 4 6 | 1 3 5 7]
    undo_layout(apply_layout(x, layout, n), layout, n) == x

A fourth layout, "balanced" (`lwmkit.lwm_model.balance`), is chosen row by row from the segment ids
of packed records, so it has no fixed permutation: `layout_batch` passes its `token_index`, and
`restore_order` (which serves every layout) puts outputs back.

Inside the ring the causal mask compares ORIGINAL token indices. `local_token_index` derives them
from the layout and the device's ring index (no full-length array is sent anywhere);
`layout_permutation` is the same map for the whole sequence.

This module also owns the decision which (query block, key block) pairs hold any unmasked score,
`block_pair_mask`: the ring kernel computes exactly the pairs it marks, and `attention_work` counts
them per device and ring step, so the benchmark and tests see the work the kernel really does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from lwmkit.lwm_model.config import FIXED_RING_LAYOUTS as LAYOUTS
from lwmkit.lwm_model.config import ROW_RING_LAYOUTS as ROW_LAYOUTS

_BIG = np.iinfo(np.int32).max


def check_layout(layout: str, length: int, ring_size: int) -> None:
    """Raise ValueError unless `length` tokens can be laid out as `layout` over `ring_size` devices."""
    if layout not in LAYOUTS + ROW_LAYOUTS:
        raise ValueError(f"layout={layout!r} is unknown; valid layouts: {', '.join(LAYOUTS + ROW_LAYOUTS)}")
    if ring_size < 1:
        raise ValueError(f"ring_size={ring_size} must be >= 1")
    pieces = 2 * ring_size if layout == "zigzag" else ring_size
    if length % pieces:
        raise ValueError(
            f"sequence length {length} must be a multiple of {pieces} for layout {layout!r} "
            f"on a ring of {ring_size} devices"
        )


def local_token_index(layout: str, ring_size: int, local_len: int, device: int | jax.Array) -> jax.Array:
    """Original token indices of the `local_len` tokens held by ring device `device`.

    Args:
        layout: one of LAYOUTS.
        ring_size: devices on the ring.
        local_len: tokens per device (T / ring_size).
        device: the device's position on the ring; a traced `jax.lax.axis_index` inside shard_map.

    Returns:
        int32 [local_len].
    """
    _check_fixed(layout, local_len * ring_size, ring_size)
    return _local_index(jnp, layout, ring_size, local_len, device)


def _check_fixed(layout: str, length: int, ring_size: int) -> None:
    check_layout(layout, length, ring_size)
    if layout in ROW_LAYOUTS:
        raise ValueError(f"layout={layout!r} is chosen row by row: use its token_index, not a fixed permutation")


def _local_index(xp, layout: str, ring_size: int, local_len: int, device):
    # One formula for numpy (whole-sequence permutations, usable under jit) and jnp (traced device).
    ar = xp.arange(local_len, dtype=xp.int32)
    if layout == "contiguous":
        return device * local_len + ar
    if layout == "striped":
        return ar * ring_size + device
    half = local_len // 2
    first = device * half + ar[:half]
    second = (2 * ring_size - 1 - device) * half + ar[:half]
    return xp.concatenate([first, second])


def layout_permutation(length: int, layout: str, ring_size: int) -> np.ndarray:
    """perm such that laid_out[j] = original[perm[j]]: the original index of every laid-out token."""
    _check_fixed(layout, length, ring_size)
    local = length // ring_size
    return np.concatenate([_local_index(np, layout, ring_size, local, r) for r in range(ring_size)])


def _take(x, index: np.ndarray, axis: int):
    if isinstance(x, jax.Array):
        return jnp.take(x, jnp.asarray(index), axis=axis)
    return np.take(np.asarray(x), index, axis=axis)


def apply_layout(x, layout: str, ring_size: int, axis: int = 1):
    """Reorder `x` along `axis` into `layout` (numpy in, numpy out; jax in, jax out).

    Raises:
        ValueError: unknown layout, or a length the layout cannot split evenly.
    """
    return _take(x, layout_permutation(x.shape[axis], layout, ring_size), axis)


def undo_layout(x, layout: str, ring_size: int, axis: int = 1):
    """Inverse of `apply_layout`: back to the original token order."""
    return _take(x, np.argsort(layout_permutation(x.shape[axis], layout, ring_size)), axis)


def restore_order(x, token_index, axis: int = 1):
    """Put laid-out `x` back in the original token order, row by row, for any layout.

    Args:
        x: [B, T, ...] (numpy or jax) in a laid-out order along `axis` (1 or -ndim+1).
        token_index: int [B, T] or [T], the original index of every laid-out token (what
            `layout_batch` adds as "token_index").

    Returns:
        x in the original order: out[b, token_index[b, j]] = x[b, j].
    """
    if axis not in (1, 1 - np.ndim(x)):
        raise ValueError(f"axis={axis}: restore_order reorders the token axis (1) of [B, T, ...]")
    xp = jnp if isinstance(x, jax.Array) else np
    index = xp.broadcast_to(xp.asarray(token_index), x.shape[:2])
    inverse = xp.argsort(index, axis=1)
    inverse = inverse.reshape(inverse.shape + (1,) * (np.ndim(x) - 2))
    return xp.take_along_axis(xp.asarray(x), inverse, axis=1)


def _block_summary(segment_ids: jax.Array, token_index: jax.Array, block: int):
    """Per block of `block` tokens: lowest/highest non-padding segment id and original token index."""
    xp = np if isinstance(segment_ids, np.ndarray) and isinstance(token_index, np.ndarray) else jnp
    *lead, length = segment_ids.shape
    seg = segment_ids.reshape(*lead, length // block, block)
    tok = xp.broadcast_to(token_index, segment_ids.shape).reshape(seg.shape)
    real = seg != 0
    lo = lambda x: xp.where(real, x, _BIG).min(-1)  # noqa: E731
    hi = lambda x: xp.where(real, x, -1).max(-1)  # noqa: E731
    # An all-padding block gets lo = BIG > hi = -1, so it overlaps nothing.
    return lo(seg), hi(seg), lo(tok), hi(tok)


def block_pair_mask(
    segment_ids_q: jax.Array,
    token_index_q: jax.Array,
    segment_ids_k: jax.Array,
    token_index_k: jax.Array,
    block_q: int,
    block_k: int,
    causal: bool,
) -> jax.Array:
    """Which (query block, key block) pairs may hold an unmasked score: the pairs the ring kernel computes.

    A pair is kept when the blocks' ranges of non-padding segment ids overlap and, if causal, the
    latest query comes at or after the earliest key. Never drops a pair with work in it. It keeps
    exactly the non-empty pairs when every document is one contiguous run of tokens with its own
    id and blocks hold contiguous tokens (contiguous and zigzag layouts), and, for the striped
    layout, when documents are at least ring_size tokens long; otherwise it may keep a few empty
    pairs (their scores are masked element by element, so results never change).

    Args:
        segment_ids_q: int [..., Tq], 0 = padding; token_index_q: int [Tq] or [..., Tq].
        segment_ids_k, token_index_k: the same for keys [..., Tk].
        block_q, block_k: block sizes dividing Tq and Tk.
        (All numpy: computed in numpy; otherwise in jax.numpy, traceable.)

    Returns:
        bool [..., Tq // block_q, Tk // block_k].
    """
    q_lo, q_hi, qt_lo, qt_hi = _block_summary(segment_ids_q, token_index_q, block_q)
    k_lo, k_hi, kt_lo, kt_hi = _block_summary(segment_ids_k, token_index_k, block_k)
    keep = (q_lo[..., :, None] <= k_hi[..., None, :]) & (k_lo[..., None, :] <= q_hi[..., :, None])
    if causal:
        keep &= qt_hi[..., :, None] >= kt_lo[..., None, :]
    return keep


def attention_work(
    segment_ids, ring_size: int, layout: str, block: int | tuple[int, int], causal: bool = True
) -> np.ndarray:
    """Block pairs the ring kernel computes, per ring step and device (masked-out pairs not counted).

    Args:
        segment_ids: int [B, T] or [T] in ORIGINAL token order (0 = padding).
        ring_size: devices on the ring.
        layout: the layout the batch is put in before the ring runs.
        block: block size, or (block_q, block_k); must divide T / ring_size.
        causal: causal masking.

    Returns:
        int64 [ring_size (step), ring_size (device)]: at step t device r holds the keys of device
        (r - t) mod ring_size; entries sum (row, query block, key block) pairs over the batch.
        Busiest/average at step t is work[t].max() / work[t].mean().
    """
    seg = np.atleast_2d(np.asarray(segment_ids))
    length = seg.shape[1]
    check_layout(layout, length, ring_size)
    block_q, block_k = (block, block) if isinstance(block, int) else block
    if layout in ROW_LAYOUTS:
        from lwmkit.lwm_model.balance import balanced_permutations

        perm = balanced_permutations(seg, ring_size, (block_q, block_k), causal)
    else:
        perm = np.broadcast_to(layout_permutation(length, layout, ring_size), seg.shape)
    return permuted_work(np.take_along_axis(seg, perm, 1), perm, ring_size, (block_q, block_k), causal)


def permuted_work(
    laid_segment_ids, token_index, ring_size: int, block: int | tuple[int, int], causal: bool = True
) -> np.ndarray:
    """`attention_work` of a batch already laid out, row by row, by any permutation.

    Args:
        laid_segment_ids: int [B, T] in the laid-out order.
        token_index: int [B, T] or [T], the original index of every laid-out token.
        ring_size, block, causal: as in `attention_work`.

    Returns:
        int64 [ring_size (step), ring_size (device)].
    """
    seg = np.atleast_2d(np.asarray(laid_segment_ids))
    rows, length = seg.shape
    block_q, block_k = (block, block) if isinstance(block, int) else block
    local = length // ring_size
    if length % ring_size or local % block_q or local % block_k:
        raise ValueError(f"block={block} must divide the per-device length {local} (T={length}, ring={ring_size})")
    laid = seg.reshape(rows, ring_size, local)
    tok = np.broadcast_to(np.asarray(token_index), seg.shape).reshape(rows, ring_size, local)
    work = np.zeros((ring_size, ring_size), np.int64)
    for step in range(ring_size):
        src = (np.arange(ring_size) - step) % ring_size
        mask = block_pair_mask(
            laid.transpose(1, 0, 2), tok.transpose(1, 0, 2), laid[:, src].transpose(1, 0, 2),
            tok[:, src].transpose(1, 0, 2), block_q, block_k, causal,
        )  # [device, batch, nq, nk]
        work[step] = mask.reshape(ring_size, -1).sum(-1)
    return work


def busiest_over_average(work: np.ndarray) -> float:
    """Ring steps are synchronous, so each step lasts as long as its busiest device:
    sum over steps of the busiest device's work, over the sum of the average device's work."""
    work = np.asarray(work, np.float64)
    mean = work.mean(-1).sum()
    return float(work.max(-1).sum() / mean) if mean else 1.0
