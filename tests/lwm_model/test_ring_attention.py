"""RingAttention against the dense float64 reference: values and q/k/v gradients, on 8 virtual devices.

Every compiled case runs one batch whose rows cover the input kinds at once: a single document, a
packed row of many short documents, documents crossing device boundaries followed by padding, and
reused, scattered segment ids. Cases vary the ring size (1, 2, 4, 8), causality, the layout, block
sizes, the other mesh axes (batch over dp/fsdp, heads over tp) and the mesh's axis types.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from lwmkit.lwm_model.attention import ring_attention
from lwmkit.lwm_model.layout import apply_layout, attention_work, undo_layout
from lwmkit.lwm_model.ring import ring_attention_with_work

from tests.lwm_model.test_layout import attention_inputs, dense_reference, packed_segments

B, T, H, KVH, D = 4, 256, 4, 2, 16


def _segments() -> np.ndarray:
    rng = np.random.default_rng(0)
    one_document = np.ones(T, np.int32)
    packed = packed_segments(rng, T, 40)  # 40 documents, many of a few tokens
    crossing = np.repeat([1, 2, 3, 0], [45, 77, 100, 34]).astype(np.int32)  # boundaries off the device grid
    scattered = rng.integers(0, 3, T).astype(np.int32)  # ids reused far apart, padding anywhere
    return np.stack([one_document, packed, crossing, scattered])


SEG = _segments()


def _data():
    return attention_inputs(1, B, T, H, KVH, D)


@functools.cache
def _reference(causal: bool):
    """Dense attention in float64: output and the q, k, v gradients of <out, g>."""
    return dense_reference(SEG, causal, *_data())


def _mesh(dims: dict[str, int], axis_type: AxisType):
    devices = jax.devices()[: int(np.prod(list(dims.values())))]
    return jax.make_mesh(tuple(dims.values()), tuple(dims), axis_types=(axis_type,) * len(dims), devices=devices)


def _relative_error(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


CASES = [
    # (mesh axes, causal, layout, block_q, block_k, axis type)
    ({"sp": 8}, True, "zigzag", 8, 8, AxisType.Explicit),
    ({"sp": 8}, True, "striped", 8, 16, AxisType.Auto),
    ({"sp": 8}, True, "contiguous", 16, 8, AxisType.Explicit),
    ({"sp": 8}, False, "zigzag", 16, 16, AxisType.Auto),
    ({"dp": 2, "sp": 4}, True, "striped", 16, 16, AxisType.Explicit),
    ({"dp": 2, "sp": 4}, False, "contiguous", 32, 16, AxisType.Auto),
    ({"dp": 2, "tp": 2, "sp": 2}, True, "zigzag", 32, 32, AxisType.Explicit),
    ({"fsdp": 4, "sp": 1}, True, "contiguous", 64, 32, AxisType.Auto),
]


@pytest.mark.parametrize(
    "dims,causal,layout,block_q,block_k,axis_type",
    CASES,
    ids=[f"{'x'.join(f'{a}{n}' for a, n in c[0].items())}-{'causal' if c[1] else 'full'}-{c[2]}" for c in CASES],
)
def test_ring_matches_dense_float64_in_values_and_gradients(dims, causal, layout, block_q, block_k, axis_type):
    mesh = _mesh(dims, axis_type)
    n = dims["sp"]
    q, k, v, g = (apply_layout(x, layout, n) for x in _data())
    seg = apply_layout(SEG, layout, n)

    @jax.jit
    def run(q, k, v, g):
        def attend(q, k, v):
            return ring_attention_with_work(
                q, k, v, seg, mesh=mesh, causal=causal, layout=layout, block_q=block_q, block_k=block_k
            )

        out, vjp, work = jax.vjp(attend, q, k, v, has_aux=True)
        return out, vjp(g), work

    out, grads, work = run(q, k, v, g)
    ref_out, ref_grads = _reference(causal)
    assert out.dtype == jnp.float32
    assert _relative_error(undo_layout(np.asarray(out), layout, n), ref_out) < 1e-5
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        assert _relative_error(undo_layout(np.asarray(got), layout, n), want) < 1e-5, f"d{name}"
    # The kernel's loops ran exactly the block pairs attention_work counts (summed over batch shards;
    # head shards repeat the same pairs).
    per_device = np.asarray(work).reshape(n, *mesh.devices.shape)
    names = list(mesh.axis_names)
    if "tp" in names:
        per_device = np.take(per_device, 0, axis=1 + names.index("tp"))
        names.remove("tp")
    per_ring_device = per_device.sum(axis=tuple(1 + i for i, a in enumerate(names) if a != "sp"))
    expected = attention_work(SEG, n, layout, (min(block_q, T // n), min(block_k, T // n)), causal)
    np.testing.assert_array_equal(per_ring_device, expected)


def test_explicit_token_index_handles_any_permutation_of_the_tokens():
    # A layout the module does not know: a random shuffle, with each token's original index passed
    # in, sharded like the segment ids.
    mesh = _mesh({"sp": 4}, AxisType.Auto)
    perm = np.random.default_rng(2).permutation(T)
    q, k, v, g = (x[:, perm] for x in _data())
    token_index = np.broadcast_to(perm, (B, T)).astype(np.int32)

    @jax.jit
    def run(q, k, v, g):
        def attend(q, k, v):
            return ring_attention(q, k, v, SEG[:, perm], mesh=mesh, token_index=token_index, block_q=16, block_k=16)

        out, vjp = jax.vjp(attend, q, k, v)
        return out, vjp(g)

    out, grads = run(q, k, v, g)
    ref_out, ref_grads = _reference(True)
    inverse = np.argsort(perm)
    assert _relative_error(np.asarray(out)[:, inverse], ref_out) < 1e-5
    for got, want in zip(grads, ref_grads, strict=True):
        assert _relative_error(np.asarray(got)[:, inverse], want) < 1e-5


def _rope(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rotary embedding of x [B, T, heads, D] at integer positions [B, T] (float64)."""
    half = x.shape[-1] // 2
    angle = positions[..., None, None] * (10000.0 ** (-np.arange(half) / half))  # [B, T, 1, half]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle), x1 * np.sin(angle) + x2 * np.cos(angle)], -1)


def test_packed_documents_with_restarting_positions_match_each_document_alone():
    # RoPE positions restart at 0 in every document, so a document packed anywhere in a row, on
    # any devices, gets exactly the attention it gets alone at the start of a row.
    q, k, v, _ = (x.astype(np.float64) for x in _data())
    starts = np.concatenate([np.ones((B, 1), bool), SEG[:, 1:] != SEG[:, :-1]], axis=1)
    index = np.arange(T)[None].repeat(B, 0)
    positions = index - np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    mesh = _mesh({"sp": 8}, AxisType.Explicit)
    laid = [apply_layout(x.astype(np.float32), "zigzag", 8) for x in (_rope(q, positions), _rope(k, positions), v)]
    out = ring_attention(*laid, apply_layout(SEG, "zigzag", 8), mesh=mesh, layout="zigzag", block_q=8, block_k=8)
    out = undo_layout(np.asarray(out), "zigzag", 8)
    for row in (1, 2):  # the packed row and the row whose documents cross device boundaries
        for doc in np.unique(SEG[row][SEG[row] != 0]):
            at = np.flatnonzero(SEG[row] == doc)
            alone = np.arange(len(at))[None]
            qd, kd = _rope(q[row : row + 1, at], alone)[0], _rope(k[row : row + 1, at], alone)[0]
            kd, vd = (np.repeat(x, H // KVH, axis=1) for x in (kd, v[row, at]))  # [t, H, D]
            scores = np.einsum("qhd,khd->hqk", qd, kd) / np.sqrt(D)
            scores = np.where(np.tril(np.ones((len(at), len(at)), bool)), scores, -np.inf)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            want = np.einsum("hqk,khd->qhd", weights / weights.sum(-1, keepdims=True), vd)
            np.testing.assert_allclose(out[row, at], want, rtol=1e-4, atol=1e-5)
    assert (out[2][SEG[2] == 0] == 0).all()  # padding outputs zeros


def test_segment_ids_stay_sharded_only_k_v_and_their_ids_travel_the_ring():
    # The reference `ringattention` package needs segment ids replicated on every device; here they
    # are sharded like q, k and v, and the compiled program has no all-gather or all-reduce at all.
    mesh = _mesh({"sp": 8}, AxisType.Explicit)
    q, k, v, _ = (jnp.asarray(x[:1]) for x in _data())
    seg = jnp.asarray(SEG[1:2])
    fn = jax.jit(lambda q, k, v, s: ring_attention(q, k, v, s, mesh=mesh, layout="zigzag", block_q=16, block_k=16))
    hlo = fn.lower(q, k, v, seg).compile().as_text()
    assert "collective-permute" in hlo
    assert "all-gather" not in hlo and "all-reduce" not in hlo and "all-to-all" not in hlo


def test_bad_arguments_name_the_problem():
    mesh = _mesh({"sp": 8}, AxisType.Auto)
    q, k, v, _ = _data()
    with pytest.raises(ValueError, match="axis='seq' is not a mesh axis; mesh axes: sp"):
        ring_attention(q, k, v, SEG, mesh=mesh, axis="seq")
    with pytest.raises(ValueError, match="block_q=12 must be >= 1 and divide the 16 contiguous tokens"):
        ring_attention(q, k, v, SEG, mesh=mesh, layout="zigzag", block_q=12)
    with pytest.raises(ValueError, match="multiple of 16 for layout 'zigzag'"):
        ring_attention(q[:, :120], k[:, :120], v[:, :120], SEG[:, :120], mesh=mesh, layout="zigzag")
    with pytest.raises(ValueError, match="segment_ids \\(4, 128\\) must be"):
        ring_attention(q, k, v, SEG[:, :128], mesh=mesh)
    with pytest.raises(ValueError, match="2 key/value heads do not split over tp=4"):
        ring_attention(q, k, v, SEG, mesh=_mesh({"tp": 4, "sp": 2}, AxisType.Auto))
