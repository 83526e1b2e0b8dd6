"""Token layouts for load-balanced ring attention, and the block-pair work they leave to each device."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lwmkit.lwm_model.attention import dense_attention
from lwmkit.lwm_model.layout import (
    LAYOUTS,
    apply_layout,
    attention_work,
    block_pair_mask,
    busiest_over_average,
    layout_permutation,
    local_token_index,
    undo_layout,
)


def packed_segments(rng: np.random.Generator, length: int, docs: int, min_len: int = 1, pad: int = 0) -> np.ndarray:
    """Segment ids 1..docs of random lengths (multiples of min_len) filling `length - pad` tokens, then padding 0."""
    slots = (length - pad) // min_len
    cuts = np.sort(rng.choice(np.arange(1, slots), docs - 1, replace=False)) * min_len
    lengths = np.diff(np.concatenate([[0], cuts, [length - pad]]))
    return np.concatenate([np.repeat(np.arange(1, docs + 1), lengths), np.zeros(pad, int)]).astype(np.int32)


def attention_inputs(seed: int, batch: int, length: int, heads: int, kv_heads: int, head_dim: int):
    """Random float32 q [B, T, H, D], k and v [B, T, KVH, D], and an output cotangent g [B, T, H, D]."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, length, heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((batch, length, kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((batch, length, kv_heads, head_dim)).astype(np.float32)
    g = rng.standard_normal((batch, length, heads, head_dim)).astype(np.float32)
    return q, k, v, g


def dense_reference(segment_ids: np.ndarray, causal: bool, q, k, v, g):
    """Dense attention in float64: output and the q, k, v gradients of <out, g>."""
    with jax.enable_x64(True):
        seg = jnp.asarray(segment_ids)

        @jax.jit
        def run(q, k, v, g):
            out, vjp = jax.vjp(lambda q, k, v: dense_attention(q, k, v, seg, seg, causal=causal), q, k, v)
            return out, vjp(g)

        out, grads = run(*(jnp.asarray(x, jnp.float64) for x in (q, k, v, g)))
        return np.asarray(out), [np.asarray(x) for x in grads]


def brute_force_pairs(seg_q, tok_q, seg_k, tok_k, bq, bk, causal):
    """Which block pairs hold at least one visible (query, key), decided element by element."""
    visible = (seg_q[:, None] == seg_k[None, :]) & (seg_q[:, None] != 0)
    if causal:
        visible &= tok_q[:, None] >= tok_k[None, :]
    return visible.reshape(len(seg_q) // bq, bq, len(seg_k) // bk, bk).any(axis=(1, 3))


def brute_force_work(seg, ring, layout, block, causal):
    """attention_work recomputed element by element: [step, device] counts of non-empty pairs."""
    local = seg.shape[1] // ring
    laid = apply_layout(seg, layout, ring).reshape(seg.shape[0], ring, local)
    tok = layout_permutation(seg.shape[1], layout, ring).reshape(ring, local)
    work = np.zeros((ring, ring), int)
    for step in range(ring):
        for dev in range(ring):
            src = (dev - step) % ring
            for row in laid:
                work[step, dev] += brute_force_pairs(row[dev], tok[dev], row[src], tok[src], block, block, causal).sum()
    return work


def test_docstring_examples():
    x = np.arange(8)
    assert apply_layout(x, "zigzag", 2, axis=0).tolist() == [0, 1, 6, 7, 2, 3, 4, 5]
    assert apply_layout(x, "striped", 2, axis=0).tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert apply_layout(x, "contiguous", 2, axis=0).tolist() == x.tolist()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ring", [1, 2, 4, 8])
def test_undo_inverts_apply_on_any_axis_for_numpy_and_jax(layout, ring):
    x = np.random.default_rng(ring).standard_normal((3, 32, 5)).astype(np.float32)
    for axis in (1, -2):
        laid = apply_layout(x, layout, ring, axis=axis)
        assert isinstance(laid, np.ndarray) and laid.shape == x.shape
        assert sorted(laid[0, :, 0]) == sorted(x[0, :, 0])
        np.testing.assert_array_equal(undo_layout(laid, layout, ring, axis=axis), x)
    jlaid = apply_layout(jnp.asarray(x), layout, ring)
    assert isinstance(jlaid, jax.Array)
    np.testing.assert_array_equal(np.asarray(jlaid), apply_layout(x, layout, ring))
    np.testing.assert_array_equal(np.asarray(undo_layout(jlaid, layout, ring)), x)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_local_token_index_is_each_devices_slice_of_the_permutation_even_when_traced(layout):
    ring, local = 4, 6
    perm = layout_permutation(ring * local, layout, ring)
    assert sorted(perm.tolist()) == list(range(ring * local))
    traced = jax.jit(lambda d: local_token_index(layout, ring, local, d))
    for dev in range(ring):
        np.testing.assert_array_equal(np.asarray(traced(dev)), perm[dev * local : (dev + 1) * local])


def test_zigzag_and_striped_give_every_device_early_and_late_tokens():
    perm = layout_permutation(16, "zigzag", 4).reshape(4, 4)
    assert perm.tolist() == [[0, 1, 14, 15], [2, 3, 12, 13], [4, 5, 10, 11], [6, 7, 8, 9]]
    assert layout_permutation(8, "striped", 4).reshape(4, 2).tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_bad_layouts_and_lengths_name_the_problem():
    with pytest.raises(ValueError, match="'spiral' is unknown; valid layouts: contiguous, zigzag, striped"):
        apply_layout(np.arange(8), "spiral", 2, axis=0)
    with pytest.raises(ValueError, match="multiple of 8 for layout 'zigzag'"):
        apply_layout(np.arange(12), "zigzag", 4, axis=0)
    with pytest.raises(ValueError, match="must divide the per-device length 4"):
        attention_work(np.ones(16, int), 4, "striped", 3)


def test_block_pair_mask_never_drops_work_even_for_scattered_segment_ids():
    rng = np.random.default_rng(0)
    for causal in (True, False):
        for _ in range(20):
            seg_q, seg_k = rng.integers(0, 4, 32), rng.integers(0, 4, 32)
            tok_q, tok_k = rng.permutation(64)[:32], rng.permutation(64)[:32]
            keep = block_pair_mask(seg_q, tok_q, seg_k, tok_k, 8, 4, causal)
            need = brute_force_pairs(seg_q, tok_q, seg_k, tok_k, 8, 4, causal)
            assert keep.shape == (4, 8) and not (need & ~keep).any()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("causal", [True, False])
def test_attention_work_counts_exactly_the_non_empty_pairs_of_packed_documents(layout, causal):
    # Exact for contiguous documents in contiguous and zigzag layouts, and for striped when every
    # document has at least ring_size tokens (min_len below).
    rng = np.random.default_rng(1)
    ring, block = 4, 4
    seg = np.stack([packed_segments(rng, 128, 9, min_len=ring, pad=12), np.ones(128, np.int32)])
    work = attention_work(seg, ring, layout, block, causal)
    np.testing.assert_array_equal(work, brute_force_work(seg, ring, layout, block, causal))
    # jax inputs give the same decision as numpy ones (the kernel traces the same function)
    local = 128 // ring
    laid, tok = apply_layout(seg, layout, ring)[:, :local], layout_permutation(128, layout, ring)[:local]
    np.testing.assert_array_equal(
        np.asarray(block_pair_mask(jnp.asarray(laid), jnp.asarray(tok), jnp.asarray(laid), jnp.asarray(tok), 4, 4, causal)),
        block_pair_mask(laid, tok, laid, tok, 4, 4, causal),
    )


def test_striped_with_documents_shorter_than_the_ring_keeps_a_superset():
    seg = packed_segments(np.random.default_rng(2), 128, 40)
    work = attention_work(seg, 8, "striped", 4)
    exact = brute_force_work(seg[None], 8, "striped", 4, True)
    assert (work >= exact).all() and work.sum() > exact.sum() * 0.5


def test_causal_balance_contiguous_is_lopsided_zigzag_and_striped_are_even():
    seg = np.ones((1, 1024), np.int32)
    ring, block = 8, 16
    contiguous = attention_work(seg, ring, "contiguous", block)
    assert contiguous[1:, 0].sum() == 0  # device 0 sees only its own keys
    assert busiest_over_average(contiguous) > 1.5
    for layout in ("zigzag", "striped"):
        assert busiest_over_average(attention_work(seg, ring, layout, block)) <= 1.1, layout
    # Zigzag: the same count on every device at every step (2c^2 + c on step 0, 2c^2 after; c = 4
    # blocks per chunk), and no more pairs in all than the contiguous layout computes.
    zig = attention_work(seg, ring, "zigzag", block)
    assert (zig[0] == 36).all() and (zig[1:] == 32).all()
    assert zig.sum() == contiguous.sum() == 64 * 65 // 2
    # Striped: nb(nb+1)/2 pairs per device and step (nb = 8 blocks), its diagonal pairs half masked.
    assert (attention_work(seg, ring, "striped", block) == 36).all()


def test_packed_documents_leave_a_fraction_of_the_work():
    rng = np.random.default_rng(3)
    full = attention_work(np.ones((1, 2048), np.int32), 8, "zigzag", 64).sum()
    packed = attention_work(packed_segments(rng, 2048, 32)[None], 8, "zigzag", 64).sum()
    assert packed < 0.3 * full
