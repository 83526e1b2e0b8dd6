"""2D sequence parallelism (Ulysses x ring) against the dense float64 reference, on 8 virtual devices.

Every case runs one batch of four rows (one document; a packed row of short documents followed by
padding; documents crossing device boundaries, then padding; reused, scattered segment ids) through `ring_attention` with a
Ulysses axis, forward and backward, and compares the output and dq, dk, dv with dense attention
in float64. Cases cover (Ulysses, ring) = (2, 4), (4, 2), (8, 1), (1, 8), causal and not, 8 query
heads over 4 and over 2 key/value heads (split over the Ulysses devices, or repeated when they do
not divide), the fixed layouts and the per-row "balanced" one, and tp / dp next to the 2D axes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from lwmkit.lwm_model.attention import ring_attention
from lwmkit.lwm_model.balance import balanced_permutations
from lwmkit.lwm_model.layout import attention_work, layout_permutation, restore_order
from lwmkit.lwm_model.ring import ring_attention_with_work
from lwmkit.lwm_model.ulysses import plan_heads

from tests.lwm_model.test_layout import attention_inputs, dense_reference, packed_segments

B, T, H, D = 4, 128, 8, 8
BLOCK = 8


def _segments() -> np.ndarray:
    rng = np.random.default_rng(3)
    one_document = np.ones(T, np.int32)
    packed = packed_segments(rng, T, 12, pad=21)  # 12 documents of a few tokens each, then padding
    crossing = np.repeat([1, 2, 3, 0], [37, 29, 41, 21]).astype(np.int32)
    scattered = rng.integers(0, 3, T).astype(np.int32)  # ids reused far apart, padding anywhere
    return np.stack([one_document, packed, crossing, scattered])


SEG = _segments()


@functools.cache
def _data(kv_heads: int):
    return attention_inputs(kv_heads, B, T, H, kv_heads, D)


@functools.cache
def _reference(causal: bool, kv_heads: int):
    """Dense attention in float64: output and the q, k, v gradients of <out, g>."""
    return dense_reference(SEG, causal, *_data(kv_heads))


def _relative_error(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


CASES = [
    # (mesh axes incl. sp and ulysses, causal, kv heads, layout, axis type)
    ({"sp": 4, "ulysses": 2}, True, 4, "zigzag", AxisType.Explicit),
    ({"sp": 4, "ulysses": 2}, False, 2, "contiguous", AxisType.Auto),
    ({"sp": 2, "ulysses": 4}, True, 2, "striped", AxisType.Explicit),  # 2 kv heads repeated to 4
    ({"sp": 2, "ulysses": 4}, False, 4, "zigzag", AxisType.Auto),
    ({"sp": 1, "ulysses": 8}, True, 2, "contiguous", AxisType.Explicit),  # pure Ulysses, kv x4
    ({"sp": 1, "ulysses": 8}, False, 4, "contiguous", AxisType.Auto),
    ({"sp": 8, "ulysses": 1}, True, 4, "zigzag", AxisType.Explicit),  # pure ring
    ({"sp": 8, "ulysses": 1}, False, 2, "striped", AxisType.Auto),
    ({"tp": 2, "sp": 2, "ulysses": 2}, True, 2, "balanced", AxisType.Explicit),  # 1 kv head per tp shard, x2
    ({"dp": 2, "sp": 2, "ulysses": 2}, True, 4, "balanced", AxisType.Auto),
]


def _laid(layout: str, ring: int, causal: bool):
    """The token_index [B, T] of `layout` (per row for "balanced")."""
    if layout == "balanced":
        return balanced_permutations(SEG, ring, BLOCK, causal)
    return np.broadcast_to(layout_permutation(T, layout, ring), SEG.shape)


def _case_id(case) -> str:
    dims, causal, kv, layout, _ = case
    return f"{'x'.join(f'{a}{n}' for a, n in dims.items())}-{'causal' if causal else 'full'}-gqa8to{kv}-{layout}"


@pytest.mark.parametrize("dims,causal,kv_heads,layout,axis_type", CASES, ids=[_case_id(c) for c in CASES])
def test_2d_matches_dense_float64_in_values_and_gradients(dims, causal, kv_heads, layout, axis_type):
    mesh = jax.make_mesh(tuple(dims.values()), tuple(dims), axis_types=(axis_type,) * len(dims))
    ring, ulysses = dims["sp"], dims["ulysses"]
    index = _laid(layout, ring, causal)
    take = lambda x: np.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), 1)  # noqa: E731
    q, k, v, g = (take(x) for x in _data(kv_heads))
    seg = take(SEG)
    token_index = index.astype(np.int32) if layout == "balanced" else None

    @jax.jit
    def run(q, k, v, g):
        def attend(q, k, v):
            return ring_attention_with_work(
                q, k, v, seg, mesh=mesh, causal=causal, layout=layout, block_q=BLOCK, block_k=BLOCK,
                token_index=token_index, ulysses_axis="ulysses",
            )

        out, vjp, work = jax.vjp(attend, q, k, v, has_aux=True)
        return out, vjp(g), work

    out, grads, work = run(q, k, v, g)
    ref_out, ref_grads = _reference(causal, kv_heads)
    assert _relative_error(restore_order(np.asarray(out), index), ref_out) < 1e-5
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        assert _relative_error(restore_order(np.asarray(got), index), want) < 1e-5, f"d{name}"
    # Every device of a Ulysses group runs the same block pairs (on its own heads), and a ring
    # device's pairs are what attention_work counts for the layout.
    names = list(mesh.axis_names)
    per_device = np.asarray(work).reshape(ring, *mesh.devices.shape)
    for axis in ("ulysses", "tp"):
        if axis in names:
            at = 1 + names.index(axis)
            assert (per_device == np.take(per_device, [0], axis=at)).all(), axis
            per_device = np.take(per_device, 0, axis=at)
            names.remove(axis)
    per_ring_device = per_device.sum(axis=tuple(1 + i for i, a in enumerate(names) if a != "sp"))
    np.testing.assert_array_equal(per_ring_device, attention_work(SEG, ring, layout, BLOCK, causal))


def test_the_program_trades_sequence_for_heads_with_all_to_alls():
    # q, k, v in and the output back: four all-to-alls; segment ids are all-gathered; k and v go
    # round the ring of 2 by collective-permute; nothing else is gathered or reduced.
    mesh = jax.make_mesh((2, 4), ("sp", "ulysses"), axis_types=(AxisType.Explicit,) * 2)
    q, k, v, _ = (jnp.asarray(x) for x in _data(4))
    fn = jax.jit(lambda q, k, v: ring_attention(q, k, v, jnp.asarray(SEG), mesh=mesh, block_q=16, block_k=16,
                                                ulysses_axis="ulysses"))
    hlo = fn.lower(q, k, v).compile().as_text()
    assert hlo.count("all-to-all(") + hlo.count("all-to-all-start(") == 4
    assert "all-gather" in hlo and "collective-permute" in hlo
    assert "all-reduce" not in hlo


@pytest.mark.parametrize(
    "heads,kv_heads,size,repeat",
    [(8, 4, 2, 1), (8, 4, 4, 1), (8, 4, 8, 2), (8, 2, 4, 2), (8, 2, 8, 4), (8, 1, 2, 2), (6, 3, 2, 2)],
)
def test_kv_heads_are_split_when_they_divide_and_repeated_to_the_lcm_otherwise(heads, kv_heads, size, repeat):
    plan = plan_heads("ulysses", size, heads, kv_heads)
    assert plan.kv_repeat == repeat
    assert (kv_heads * plan.kv_repeat) % size == 0  # every device gets whole key/value heads
    per_device = heads // size
    group = heads // (kv_heads * plan.kv_repeat)  # query heads per (repeated) key/value head
    for device in range(size):  # its query heads use exactly the key/value copies it receives
        first_kv = device * (kv_heads * plan.kv_repeat // size)
        for h in range(device * per_device, (device + 1) * per_device):
            assert (h // group) // plan.kv_repeat == h // (heads // kv_heads)
            assert first_kv <= h // group < first_kv + kv_heads * plan.kv_repeat // size


def test_bad_arguments_name_the_problem():
    q, k, v, _ = _data(4)
    mesh = jax.make_mesh((2, 2, 2), ("tp", "sp", "ulysses"), axis_types=(AxisType.Auto,) * 3)
    with pytest.raises(ValueError, match="ulysses_axis='u' is not a mesh axis"):
        ring_attention(q, k, v, SEG, mesh=mesh, ulysses_axis="u")
    with pytest.raises(ValueError, match="must differ from the ring axis"):
        ring_attention(q, k, v, SEG, mesh=mesh, ulysses_axis="sp")
    wide = jax.make_mesh((2, 1, 4), ("tp", "sp", "ulysses"), axis_types=(AxisType.Auto,) * 3)
    with pytest.raises(ValueError, match="2 query heads per device do not split over ulysses=4"):
        ring_attention(q[:, :, :4], k, v, SEG, mesh=wide, ulysses_axis="ulysses")
    with pytest.raises(ValueError, match="multiple of 4: sp=2 ring devices x ulysses=2"):
        ring_attention(q[:, :126], k[:, :126], v[:, :126], SEG[:, :126], mesh=mesh, ulysses_axis="ulysses")
    with pytest.raises(ValueError, match="layout='balanced' differs row by row: pass its token_index"):
        ring_attention(q, k, v, SEG, mesh=mesh, layout="balanced", ulysses_axis="ulysses")
