"""The dense reference attention (masking, grouped-query heads, padding) and the blockwise feed-forward."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lwmkit.lwm_model.attention import attention_mask, blockwise_ffn, dense_attention


def naive_attention(q, k, v, seg_q, seg_k, causal, pos_q=None, pos_k=None):
    """Loop-by-loop float64 attention: what every row should see, written out."""
    b, t, h, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    pos_q = np.arange(t) if pos_q is None else pos_q
    pos_k = np.arange(s) if pos_k is None else pos_k
    out = np.zeros((b, t, h, d))
    for bi in range(b):
        for ti in range(t):
            if seg_q[bi, ti] == 0:
                continue
            keys = [
                si
                for si in range(s)
                if seg_k[bi, si] == seg_q[bi, ti] and (not causal or pos_k[si] <= pos_q[ti])
            ]
            for hi in range(h):
                kh = hi // (h // kvh)
                scores = np.array([q[bi, ti, hi] @ k[bi, si, kh] for si in keys]) / np.sqrt(d)
                if len(keys):
                    w = np.exp(scores - scores.max())
                    out[bi, ti, hi] = (w / w.sum()) @ np.stack([v[bi, si, kh] for si in keys])
    return out


def _inputs(rng, b=2, t=12, h=4, kvh=2, d=8, s=None):
    s = t if s is None else s
    return (
        rng.standard_normal((b, t, h, d)),
        rng.standard_normal((b, s, kvh, d)),
        rng.standard_normal((b, s, kvh, d)),
    )


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_dense_matches_a_loop_reference_with_documents_padding_and_grouped_heads(causal, kv_heads):
    rng = np.random.default_rng(kv_heads)
    q, k, v = _inputs(rng, kvh=kv_heads)
    seg = np.array([[1, 1, 1, 2, 2, 3, 3, 3, 3, 3, 0, 0], [5, 5, 5, 5, 5, 5, 7, 7, 7, 7, 7, 7]])
    with jax.enable_x64(True):
        out = np.asarray(jax.jit(dense_attention, static_argnames="causal")(q, k, v, seg, seg, causal=causal))
    np.testing.assert_allclose(out, naive_attention(q, k, v, seg, seg, causal), rtol=1e-10, atol=1e-12)
    assert (out[0, 10:] == 0).all()  # padding queries output zeros


def test_float32_inputs_compute_in_float32_and_bfloat16_comes_back_as_bfloat16():
    q, k, v = _inputs(np.random.default_rng(0))
    seg = np.ones((2, 12), np.int32)
    dense = jax.jit(dense_attention)
    out32 = dense(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), seg, seg)
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out32), naive_attention(q, k, v, seg, seg, True), rtol=2e-5, atol=2e-6)
    out16 = dense(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), seg, seg)
    assert out16.dtype == jnp.bfloat16


def test_positions_drive_causality_and_cross_attention_to_a_longer_cache():
    # A decoding step: 2 new queries at positions 6 and 7 over an 8-slot cache holding one document.
    rng = np.random.default_rng(1)
    q, k, v = _inputs(rng, t=2, s=8)
    seg_q, seg_k = np.ones((2, 2), int), np.array([[1] * 8, [1] * 5 + [0] * 3])
    pos_q, pos_k = np.array([6, 7]), np.arange(8)
    with jax.enable_x64(True):
        out = np.asarray(jax.jit(dense_attention)(q, k, v, seg_q, seg_k, positions_q=pos_q, positions_kv=pos_k))
    np.testing.assert_allclose(out, naive_attention(q, k, v, seg_q, seg_k, True, pos_q, pos_k), rtol=1e-10)
    mask = np.asarray(attention_mask(seg_q, seg_k, positions_q=pos_q, positions_kv=pos_k))
    assert mask[0].sum(-1).tolist() == [7, 8] and mask[1].sum(-1).tolist() == [5, 5]


def test_gradients_are_finite_when_rows_see_nothing():
    q, k, v = (jnp.asarray(x, jnp.float32) for x in _inputs(np.random.default_rng(2)))
    seg = jnp.asarray([[0] * 12, [1] * 6 + [0] * 6])

    def loss(q, k, v):
        return jnp.sum(dense_attention(q, k, v, seg, seg) ** 2)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    assert all(bool(jnp.isfinite(g).all()) for g in grads)
    assert float(jnp.abs(grads[0][0]).max()) == 0.0 and float(jnp.abs(grads[0][1, :6]).max()) > 0


def test_dense_rejects_mismatched_heads_and_segment_shapes():
    q, k, v = _inputs(np.random.default_rng(3), h=4, kvh=3)
    with pytest.raises(ValueError, match="H % KVH == 0"):
        dense_attention(q, k, v, None, None)
    q, k, v = _inputs(np.random.default_rng(3))
    with pytest.raises(ValueError, match=r"segment ids \(2, 11\)"):
        dense_attention(q, k, v, np.ones((2, 11), int), np.ones((2, 12), int))


def _mlp(params, x):
    return jnp.tanh(x @ params["w1"]) @ params["w2"]  # [..., d] -> [..., 4d] -> [..., d]


@pytest.mark.parametrize("remat", [True, False])
def test_blockwise_ffn_equals_the_whole_sequence_in_values_and_gradients(remat):
    rng = np.random.default_rng(4)
    params = {"w1": jnp.asarray(rng.standard_normal((8, 32)), jnp.float32) / 3, "w2": jnp.asarray(rng.standard_normal((32, 8)), jnp.float32) / 6}
    x = jnp.asarray(rng.standard_normal((2, 64, 8)), jnp.float32)

    def whole(p, x):
        return jnp.sum(jnp.sin(_mlp(p, x)))

    def chunked(p, x):
        return jnp.sum(jnp.sin(blockwise_ffn(lambda h: _mlp(p, h), x, 16, remat=remat)))

    np.testing.assert_allclose(
        np.asarray(blockwise_ffn(lambda h: _mlp(params, h), x, 16, remat=remat)), np.asarray(_mlp(params, x)), rtol=1e-6, atol=1e-6
    )
    g_whole = jax.jit(jax.grad(whole, argnums=(0, 1)))(params, x)
    g_chunk = jax.jit(jax.grad(chunked, argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(g_chunk), jax.tree.leaves(g_whole), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # the map really runs per chunk: the jaxpr loops over 4 chunks of 16 tokens
    jaxpr = str(jax.make_jaxpr(lambda x: blockwise_ffn(lambda h: _mlp(params, h), x, 16, remat=remat))(x))
    assert "scan" in jaxpr and "f32[2,16,32]" in jaxpr and "f32[2,64,32]" not in jaxpr


class _Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(8, name="w2")(nn.gelu(nn.Dense(32, name="w1")(x)))


class _Block(nn.Module):
    chunk: int

    @nn.compact
    def __call__(self, x):
        mlp = _Mlp(name="feed_forward")
        return blockwise_ffn(mlp, x, self.chunk) if self.chunk else mlp(x)


def test_blockwise_ffn_runs_a_flax_submodule_with_shared_parameters():
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 64, 8)), jnp.float32)
    params = jax.jit(_Block(chunk=0).init)(jax.random.key(0), x)
    # the same parameter tree serves both (no per-chunk copies)
    shapes = jax.eval_shape(_Block(chunk=16).init, jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, params)
    whole = jax.jit(_Block(chunk=0).apply)(params, x)
    chunked = jax.jit(_Block(chunk=16).apply)(params, x)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), rtol=1e-6, atol=1e-6)
    g_whole = jax.jit(jax.grad(lambda p: jnp.sum(_Block(chunk=0).apply(p, x) ** 2)))(params)
    g_chunk = jax.jit(jax.grad(lambda p: jnp.sum(_Block(chunk=16).apply(p, x) ** 2)))(params)
    for a, b in zip(jax.tree.leaves(g_chunk), jax.tree.leaves(g_whole), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_blockwise_ffn_rejects_a_chunk_that_does_not_divide_the_sequence():
    with pytest.raises(ValueError, match="chunk=24 must be >= 1 and divide the sequence length 64"):
        blockwise_ffn(jnp.tanh, jnp.zeros((1, 64, 4)), 24)
