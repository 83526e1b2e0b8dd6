"""The LWM decoder in Flax: LLaMA-2 blocks plus LWM's vision embedding and vision head.

Parameter names and layouts are LWM's (`lwm/llama.py`, `lwm/vision_llama.py`), so its released
Jax parameters load without renaming:
    transformer/wte/embedding [vocab, hidden]        transformer/vte/embedding [vision_vocab, hidden]
    transformer/h/scan_decoder/... (scanned: a leading layer axis) or transformer/h/<i>/...
        attention/{wq,wk,wv,wo}/kernel, feed_forward/{w1,w2,w3}/kernel,
        attention_norm/kernel, ffn_norm/kernel
    transformer/ln_f/kernel, lm_head/kernel [hidden, vocab], vision_head/kernel [hidden, vision_vocab]
RoPE rotates interleaved pairs (x[2i], x[2i+1]) as LWM and Meta's LLaMA do; Hugging Face's
checkpoints permute wq/wk rows to rotate halves instead, which `checkpoint.py` undoes on loading.

The forward takes the loader's packed fields. Each token is embedded by the table its
`vision_mask` names; attention never crosses documents (`tokens_segment_ids`, 0 = padding) and
RoPE uses `tokens_positions`, which restart at 0 for every document:
    tokens             [1, 5, 6 | 1, 7 | 0]      vision_mask  [F, T, T | F, F | F]
    tokens_segment_ids [1, 1, 1 | 2, 2 | 0]      positions    [0, 1, 2 | 0, 1 | 0]
 -> text_logits [B, T, vocab] and vision_logits [B, T, vision_vocab] at every token; the loss reads
    the text head where the target is text and the vision head where it is vision.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from lwmkit.lwm_model.attention import dense_attention, ring_attention
from lwmkit.lwm_model.config import LWMConfig
from lwmkit.lwm_model.mesh import constrain


class KVCache(NamedTuple):
    """Keys and values of the tokens seen so far, for decoding.

    Attributes:
      k, v: [layers, batch, length, kv_heads, head_dim], RoPE already applied to k.
      segment_ids: int32 [batch, length]; 0 marks a slot that holds no token (empty or padding).
      index: int32 scalar, the number of slots written (the next token goes there).
    """

    k: jax.Array
    v: jax.Array
    segment_ids: jax.Array
    index: jax.Array


class ModelOutput(NamedTuple):
    """text_logits [B, T, vocab]; vision_logits [B, T, vision_vocab] or None (text-only model);
    cache: the updated KVCache when one was passed."""

    text_logits: jax.Array
    vision_logits: jax.Array | None
    cache: KVCache | None


def _dtype(name: str) -> Any:
    return jnp.dtype(name)


def _dense(features: int, config: LWMConfig, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=False,
        dtype=_dtype(config.dtype),
        param_dtype=_dtype(config.param_dtype),
        kernel_init=nn.initializers.normal(config.initializer_range),
        name=name,
    )


class RMSNorm(nn.Module):
    """x / rms(x) * kernel, computed in float32 (LWM's and LLaMA's RMSNorm)."""

    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param("kernel", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return normed.astype(self.dtype) * jnp.asarray(weight, self.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotates interleaved pairs (x[..., 2i], x[..., 2i+1]) by positions * theta^(-2i/head_dim).

    Args:
      x: [batch, seq, heads, head_dim]; positions: int [batch, seq].

    Returns:
      x rotated, in x's dtype (the rotation itself runs in float32).
    """
    dim = x.shape[-1]
    inv_freq = jnp.asarray(
        1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim), jnp.float32
    )
    angle = positions.astype(jnp.float32)[..., None, None] * inv_freq  # [batch, seq, 1, head_dim/2]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x32 = x.astype(jnp.float32)
    x0, x1 = x32[..., 0::2], x32[..., 1::2]
    out = jnp.stack(
        [x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1
    )  # [batch, seq, heads, head_dim/2, 2]
    return out.reshape(x.shape).astype(x.dtype)


class _Meta(NamedTuple):
    """What every layer shares: per-token fields and, when decoding, the cache's bookkeeping."""

    segment_ids: jax.Array  # [batch, seq]
    positions: jax.Array  # [batch, seq]
    token_index: jax.Array | None  # [batch, seq] original token order (for causality) or None
    cache_segment_ids: jax.Array | None  # [batch, cache_len], after writing this call's tokens
    cache_index: jax.Array | None  # int32 scalar, first slot this call writes


class _Layer(nn.Module):
    """A part of the model: its config, and the mesh its activations are constrained on (or None)."""

    config: LWMConfig
    mesh: Mesh | None = None


class Attention(_Layer):
    @nn.compact
    def __call__(self, x: jax.Array, meta: _Meta, kv: tuple[jax.Array, jax.Array] | None):
        c = self.config
        b, t, _ = x.shape
        q = _dense(c.num_heads * c.head_dim, c, "wq")(x).reshape(b, t, c.num_heads, c.head_dim)
        k = _dense(c.kv_heads * c.head_dim, c, "wk")(x).reshape(b, t, c.kv_heads, c.head_dim)
        v = _dense(c.kv_heads * c.head_dim, c, "wv")(x).reshape(b, t, c.kv_heads, c.head_dim)
        q = constrain(rope(q, meta.positions, c.rope_theta), "heads", self.mesh)
        k = constrain(rope(k, meta.positions, c.rope_theta), "heads", self.mesh)
        v = constrain(v, "heads", self.mesh)
        new_kv = None
        if kv is None:
            out = self._attend(q, k, v, meta.segment_ids, meta.token_index)
        else:
            ck, cv = kv
            start = (0, meta.cache_index, 0, 0)
            ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), start)
            cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), start)
            new_kv = (ck, cv)
            if t > 1 and c.attention_impl == "ring":
                # Prefill: the cache is empty before it (generate.py always prefills at slot 0), so
                # the prompt attends to itself, sharded over the ring.
                out = self._attend(q, k, v, meta.segment_ids, meta.token_index)
            else:
                q_index = meta.cache_index + jnp.broadcast_to(
                    jnp.arange(t, dtype=jnp.int32), (b, t)
                )
                kv_index = jnp.broadcast_to(
                    jnp.arange(ck.shape[1], dtype=jnp.int32), (b, ck.shape[1])
                )
                out = dense_attention(
                    q,
                    ck.astype(q.dtype),
                    cv.astype(q.dtype),
                    meta.segment_ids,
                    meta.cache_segment_ids,
                    causal=True,
                    positions_q=q_index,
                    positions_kv=kv_index,
                )
        out = constrain(out.astype(x.dtype), "heads", self.mesh).reshape(
            b, t, c.num_heads * c.head_dim
        )
        return _dense(c.hidden_size, c, "wo")(out), new_kv

    def _attend(self, q, k, v, segment_ids, token_index):
        c = self.config
        if c.attention_impl == "dense":
            return dense_attention(
                q,
                k,
                v,
                segment_ids,
                segment_ids,
                causal=True,
                positions_q=token_index,
                positions_kv=token_index,
            )
        if self.mesh is None:
            raise ValueError(
                "LWMConfig.attention_impl='ring' needs a mesh: LWM(config, mesh=make_mesh(...))"
            )
        return ring_attention(
            q,
            k,
            v,
            segment_ids,
            mesh=self.mesh,
            causal=True,
            axis="sp",
            block_q=c.ring_block_q,
            block_k=c.ring_block_k,
            layout=c.ring_layout,
            token_index=token_index,
            ulysses_axis="ulysses" if "ulysses" in self.mesh.axis_names else None,
        )


class MLP(nn.Module):
    config: LWMConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        gate = _dense(c.intermediate_size, c, "w1")(x)
        up = _dense(c.intermediate_size, c, "w3")(x)
        return _dense(c.hidden_size, c, "w2")(nn.silu(gate) * up)


class Block(_Layer):
    """One pre-norm LLaMA layer: x + attention(norm(x)), then + SwiGLU(norm(x))."""

    @nn.compact
    def __call__(self, x: jax.Array, meta: _Meta, kv: tuple[jax.Array, jax.Array] | None):
        c = self.config
        norm = dict(eps=c.rms_norm_eps, dtype=_dtype(c.dtype), param_dtype=_dtype(c.param_dtype))
        h, new_kv = Attention(c, self.mesh, name="attention")(
            RMSNorm(**norm, name="attention_norm")(x), meta, kv
        )
        x = constrain(x + h, "hidden", self.mesh)
        h = MLP(c, name="feed_forward")(RMSNorm(**norm, name="ffn_norm")(x))
        return constrain(x + h, "hidden", self.mesh), new_kv


class Blocks(_Layer):
    """The layer stack, scanned (`scan_decoder`, one compiled layer) or unrolled (`0`, `1`, ...)."""

    @nn.compact
    def __call__(self, x: jax.Array, meta: _Meta, kv: tuple[jax.Array, jax.Array] | None):
        c = self.config
        block = Block
        if c.remat_policy != "none":
            policy = getattr(jax.checkpoint_policies, c.remat_policy)
            block = nn.remat(Block, policy=policy, prevent_cse=not c.scan_layers)
        if c.scan_layers:
            scanned = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, 0),
                length=c.num_layers,
            )
            return scanned(c, self.mesh, name="scan_decoder")(x, meta, kv)
        outs = []
        for i in range(c.num_layers):
            layer_kv = None if kv is None else (kv[0][i], kv[1][i])
            x, new_kv = block(c, self.mesh, name=str(i))(x, meta, layer_kv)
            outs.append(new_kv)
        if kv is None:
            return x, None
        return x, (jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs]))


class Transformer(_Layer):
    @nn.compact
    def __call__(self, tokens: jax.Array, vision_mask: jax.Array, meta: _Meta, kv):
        c = self.config
        embed = dict(
            features=c.hidden_size,
            dtype=_dtype(c.dtype),
            param_dtype=_dtype(c.param_dtype),
            embedding_init=nn.initializers.normal(c.initializer_range),
        )
        wte = nn.Embed(c.vocab_size, **embed, name="wte")
        x = wte(jnp.where(vision_mask, 0, tokens))  # [batch, seq, hidden]
        if c.vision:
            vision = nn.Embed(c.vision_vocab_size, **embed, name="vte")(
                jnp.where(vision_mask, tokens, 0)
            )
            x = jnp.where(vision_mask[..., None], vision, x)
        x = constrain(x, "hidden", self.mesh)
        x, new_kv = Blocks(c, self.mesh, name="h")(x, meta, kv)
        x = RMSNorm(c.rms_norm_eps, _dtype(c.dtype), _dtype(c.param_dtype), name="ln_f")(x)
        return x, new_kv, wte


class LWM(nn.Module):
    """The LWM model. `apply(params, tokens, vision_mask, segment_ids, positions)` -> ModelOutput.

    Attributes:
      config: the model's LWMConfig.
      mesh: the device mesh; needed for attention_impl="ring", and it adds the activation
        sharding constraints of `mesh.py`.
    """

    config: LWMConfig
    mesh: Mesh | None = None

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        vision_mask: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        *,
        token_index: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> ModelOutput:
        """Logits of both heads at every token.

        Args:
          tokens: int [batch, seq], text or vision ids as `vision_mask` says.
          vision_mask: bool [batch, seq] (default: all text).
          segment_ids: int [batch, seq], 0 = padding (default: one document, all ones).
          positions: int [batch, seq] RoPE positions (default: 0, 1, 2, ...).
          token_index: int [batch, seq], each token's index in the original order when the batch
            was reordered by `layout_batch` (dense attention masks causally by it; ring attention
            derives it from a fixed `config.ring_layout`, and needs it for "balanced"). Default:
            the order given.
          cache: a KVCache to extend (decoding, see generate.py); its updated copy is returned.
        """
        c = self.config
        tokens = jnp.asarray(tokens, jnp.int32)
        b, t = tokens.shape
        vision_mask = (
            jnp.zeros((b, t), bool) if vision_mask is None else jnp.asarray(vision_mask, bool)
        )
        if not c.vision:
            vision_mask = jnp.zeros_like(vision_mask)
        segment_ids = (
            jnp.ones((b, t), jnp.int32)
            if segment_ids is None
            else jnp.asarray(segment_ids, jnp.int32)
        )
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        positions = jnp.asarray(positions, jnp.int32)
        tokens, vision_mask, segment_ids, positions = (
            constrain(a, "tokens", self.mesh) for a in (tokens, vision_mask, segment_ids, positions)
        )
        kv, cache_seg = None, None
        if cache is not None:
            kv = (constrain(cache.k, "cache", self.mesh), constrain(cache.v, "cache", self.mesh))
            cache_seg = jax.lax.dynamic_update_slice(
                cache.segment_ids, segment_ids, (0, cache.index)
            )
        meta = _Meta(
            segment_ids, positions, token_index, cache_seg, None if cache is None else cache.index
        )
        x, new_kv, wte = Transformer(c, self.mesh, name="transformer")(
            tokens, vision_mask, meta, kv
        )
        if c.tie_word_embeddings:
            text_logits = wte.attend(x)
        else:
            text_logits = _dense(c.vocab_size, c, "lm_head")(x)
        text_logits = constrain(text_logits, "logits", self.mesh)
        vision_logits = None
        if c.vision:
            vision_logits = constrain(
                _dense(c.vision_vocab_size, c, "vision_head")(x), "logits", self.mesh
            )
        new_cache = None
        if cache is not None:
            k, v = (constrain(a, "cache", self.mesh) for a in new_kv)
            new_cache = KVCache(k, v, cache_seg, cache.index + t)
        return ModelOutput(text_logits, vision_logits, new_cache)


def init_params(model: LWM, rng: jax.Array, seq_len: int = 8) -> Any:
    """Random parameters for `model` (LWM's normal(initializer_range) init, RMSNorm kernels 1)."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    return model.init(rng, tokens, jnp.zeros((1, seq_len), bool))["params"]


def forward(
    model: LWM, params: Any, batch: dict[str, Any], cache: KVCache | None = None
) -> ModelOutput:
    """`model` on a loader batch (its `tokens`, `vision_mask`, `tokens_segment_ids`,
    `tokens_positions`, and `token_index` when `layout_batch` reordered it)."""
    return model.apply(
        {"params": params},
        batch["tokens"],
        batch["vision_mask"],
        batch["tokens_segment_ids"],
        batch["tokens_positions"],
        token_index=batch.get("token_index"),
        cache=cache,
    )
