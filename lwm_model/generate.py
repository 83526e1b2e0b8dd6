"""Decoding for evaluation: greedy or sampled generation with a KV cache, text or vision tokens.

The prompt is run once (prefill; with `attention_impl="ring"` it runs as RingAttention over the
mesh's "sp" axis, so long prompts spread over devices), writing every layer's keys and values into
a `KVCache`; each new token then attends to the cache. Prompts of different lengths are padded on
the left (segment id 0) and their RoPE positions count real tokens only.

`sample_mode` follows LWM (`vision_llama.py`): "text" reads the text head and feeds text ids;
"vision" reads the vision head, feeds vision ids, and forces <eof> as every 257th generated token
(256 codes per frame). Unlike LWM, vision mode samples codes only among the VQGAN codes, so a frame
never holds a stray <eof>/<eov> or an unused id.

Example, greedy text for two prompts:
    prompt = pad_prompts([[1, 450, 4996], [1, 306]])   # tokens [[1, 450, 4996], [0, 1, 306]]
    out = generate(LWM(config), params, prompt, SamplingConfig(max_new_tokens=32))
    out.tokens                                          # [2, 32], pad_id after a row's EOS
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from lwmkit.lwm_model.config import LWMConfig
from lwmkit.lwm_model.mesh import constrain, sequence_parallel
from lwmkit.lwm_model.model import LWM, KVCache

SAMPLE_MODES = ("text", "vision")


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens.

    Attributes:
      max_new_tokens: tokens to generate per row.
      sample_mode: "text" or "vision" (see the module docstring).
      temperature: 0 = greedy (argmax); otherwise logits are divided by it before sampling.
      top_k: sample among the k most likely tokens only (0 = all).
      top_p: sample from the smallest set whose probability reaches top_p (1.0 = all).
      eos_id: text mode: a row that emits it is finished and gets pad_id afterwards (None = never).
      pad_id: the id written after a row finished.
    """

    max_new_tokens: int
    sample_mode: str = "text"
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    eos_id: int | None = 2
    pad_id: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(
                f"SamplingConfig.max_new_tokens={self.max_new_tokens!r}: must be an int >= 1"
            )
        if self.sample_mode not in SAMPLE_MODES:
            raise ValueError(
                f"SamplingConfig.sample_mode={self.sample_mode!r}: must be one of {list(SAMPLE_MODES)}"
            )
        if self.temperature < 0:
            raise ValueError(
                f"SamplingConfig.temperature={self.temperature}: must be >= 0 (0 = greedy)"
            )
        if self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k={self.top_k}: must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p={self.top_p}: must be in (0, 1]")


class Generation(NamedTuple):
    """tokens int32 [B, N]; vision_mask bool [B, N] (True for vision ids); logits float32 [B, N, vocab]
    of the head that picked each token (only with return_logits) or None; the final cache."""

    tokens: jax.Array
    vision_mask: jax.Array
    logits: jax.Array | None
    cache: KVCache


def init_cache(config: LWMConfig, batch: int, length: int, dtype: Any = None) -> KVCache:
    """An empty cache of `length` slots (dtype: the config's compute dtype by default)."""
    shape = (config.num_layers, batch, length, config.kv_heads, config.head_dim)
    dtype = jnp.dtype(config.dtype) if dtype is None else dtype
    return KVCache(
        jnp.zeros(shape, dtype),
        jnp.zeros(shape, dtype),
        jnp.zeros((batch, length), jnp.int32),
        jnp.zeros((), jnp.int32),
    )


def pad_prompts(
    prompts: Sequence[Sequence[int]],
    vision_masks: Sequence[Sequence[bool]] | None = None,
    multiple: int = 1,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """Left-pads prompts into one batch: tokens, vision_mask, tokens_segment_ids (1 real, 0 pad).

    Args:
      prompts: token ids per row; vision_masks: which of them are vision ids (default none).
      multiple: the padded length is rounded up to a multiple of this (ring prefill needs the mesh's
        "sp" size).

    Raises:
      ValueError: an empty prompt, or a vision mask whose length differs from its prompt's.
    """
    width = max(len(p) for p in prompts)
    width = -(-width // multiple) * multiple
    out = {
        "tokens": np.full((len(prompts), width), pad_id, np.int32),
        "vision_mask": np.zeros((len(prompts), width), bool),
        "tokens_segment_ids": np.zeros((len(prompts), width), np.int32),
    }
    for i, p in enumerate(prompts):
        if not len(p):
            raise ValueError(f"prompt {i} is empty")
        out["tokens"][i, width - len(p) :] = p
        out["tokens_segment_ids"][i, width - len(p) :] = 1
        if vision_masks is not None:
            if len(vision_masks[i]) != len(p):
                raise ValueError(
                    f"prompt {i}: vision mask has {len(vision_masks[i])} entries for {len(p)} tokens"
                )
            out["vision_mask"][i, width - len(p) :] = vision_masks[i]
    return out


class _Knobs(NamedTuple):
    """The sampling settings that change no shapes, passed as arrays so one compilation serves all."""

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    eos_id: jax.Array
    pad_id: jax.Array

    @classmethod
    def of(cls, s: SamplingConfig) -> _Knobs:
        eos = -1 if s.eos_id is None else s.eos_id
        return cls(*(jnp.asarray(v) for v in (s.temperature, s.top_k, s.top_p, eos, s.pad_id)))


def _pick(logits: jax.Array, key: jax.Array, knobs: _Knobs) -> jax.Array:
    """One token per row from float32 logits [B, V]: argmax at temperature 0, else a filtered sample."""
    scaled = logits / jnp.where(knobs.temperature > 0, knobs.temperature, 1.0)
    order = jnp.sort(scaled, axis=-1)[:, ::-1]  # [B, V], most likely first
    vocab = logits.shape[-1]
    k = jnp.where(knobs.top_k > 0, jnp.minimum(knobs.top_k, vocab), vocab)
    kth = order[:, k - 1][:, None]
    probs = jax.nn.softmax(order, axis=-1)
    # Keep tokens whose higher-ranked mass is below top_p (the top token always stays).
    before = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(before < knobs.top_p, order, jnp.inf), axis=-1, keepdims=True)
    filtered = jnp.where((scaled < kth) | (scaled < cutoff), -jnp.inf, scaled)
    sampled = jax.random.categorical(key, filtered, axis=-1)
    return jnp.where(knobs.temperature > 0, sampled, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


def _step_logits(out, mode: str) -> jax.Array:
    """Last position's logits of the head `mode` reads, float32 [B, V]."""
    head = out.vision_logits if mode == "vision" else out.text_logits
    return head[:, -1].astype(jnp.float32)


def _choose(logits, k, key, done, knobs: _Knobs, config: LWMConfig, mode: str):
    """Token k (0-based) of every row, and the rows finished after it."""
    if mode == "vision":
        codes = jnp.arange(logits.shape[-1]) < config.vision_codes
        token = _pick(jnp.where(codes, logits, -jnp.inf), key, knobs)
        eof = (k + 1) % (config.frame_codes + 1) == 0
        return jnp.where(eof, config.eof_id, token), done
    token = jnp.where(done, knobs.pad_id, _pick(logits, key, knobs))
    return token, done | (token == knobs.eos_id)


@partial(jax.jit, static_argnames=("model", "n", "mode", "cache_length", "return_logits"))
def _generate(
    model: LWM,
    params,
    prompt,
    rng,
    knobs: _Knobs,
    n: int,
    mode: str,
    cache_length: int,
    return_logits: bool,
):
    config = model.config
    tokens, vision_mask, seg = prompt["tokens"], prompt["vision_mask"], prompt["tokens_segment_ids"]
    b, t = tokens.shape
    positions = jnp.maximum(jnp.cumsum(seg != 0, axis=1) - 1, 0).astype(jnp.int32)
    cache = init_cache(config, b, cache_length)
    if model.mesh is not None:
        cache = cache._replace(
            k=constrain(cache.k, "cache", model.mesh), v=constrain(cache.v, "cache", model.mesh)
        )
    out = model.apply({"params": params}, tokens, vision_mask, seg, positions, cache=cache)
    logits = _step_logits(out, mode)
    token, done = _choose(
        logits, jnp.int32(0), jax.random.fold_in(rng, 0), jnp.zeros((b,), bool), knobs, config, mode
    )
    generated = jnp.full((b, n), knobs.pad_id, jnp.int32).at[:, 0].set(token)
    record = jnp.zeros((b, n, logits.shape[-1]) if return_logits else (0,), jnp.float32)
    if return_logits:
        record = record.at[:, 0].set(logits)
    state = (jnp.int32(1), token, done, out.cache, generated, record)

    def cond(state):
        k, _, done, *_ = state
        return (k < n) & ~jnp.all(done)

    def body(state):
        k, token, done, cache, generated, record = state
        out = model.apply(
            {"params": params},
            token[:, None],
            jnp.full((b, 1), mode == "vision"),
            jnp.ones((b, 1), jnp.int32),
            positions[:, -1:] + k,
            cache=cache,
        )
        logits = _step_logits(out, mode)
        token, done = _choose(logits, k, jax.random.fold_in(rng, k), done, knobs, config, mode)
        generated = jax.lax.dynamic_update_slice(generated, token[:, None], (0, k))
        if return_logits:
            record = jax.lax.dynamic_update_slice(record, logits[:, None], (0, k, 0))
        return k + 1, token, done, out.cache, generated, record

    _, _, _, cache, generated, record = jax.lax.while_loop(cond, body, state)
    return generated, jnp.full((b, n), mode == "vision"), record if return_logits else None, cache


def generate(
    model: LWM,
    params: Any,
    prompt: Mapping[str, Any],
    settings: SamplingConfig,
    rng: jax.Array | None = None,
    *,
    return_logits: bool = False,
) -> Generation:
    """Generates `settings.max_new_tokens` tokens after each prompt row.

    Args:
      model: the LWM module (with its mesh for ring prefill and sharded caches).
      params: its parameters.
      prompt: `tokens`, `vision_mask` and `tokens_segment_ids` [B, T], left-padded with segment id 0
        (see `pad_prompts`). With attention_impl="ring", T must divide by the mesh's "sp" size.
      settings: a SamplingConfig.
      rng: a PRNG key for sampling (default key 0); step k uses fold_in(rng, k), so the same key
        gives the same tokens.
      return_logits: also return each step's logits (memory: B x N x vocab floats).

    Returns:
      A Generation.

    Raises:
      ValueError: missing prompt fields, or a prompt the ring cannot split.
    """
    missing = [f for f in ("tokens", "vision_mask", "tokens_segment_ids") if f not in prompt]
    if missing:
        raise ValueError(f"prompt lacks {missing}; build it with pad_prompts")
    if settings.sample_mode == "vision" and not model.config.vision:
        raise ValueError("sample_mode='vision' needs a model with vision=True")
    config = model.config
    t = int(np.shape(prompt["tokens"])[1])
    sp = math.prod(sequence_parallel(model.mesh))  # sequence shards: ring x Ulysses
    if config.attention_impl == "ring":
        if t % sp:
            raise ValueError(
                f"prompt length {t} must divide by the mesh's sp x ulysses={sp} for ring prefill (pad_prompts multiple)"
            )
        # The prompt arrives in token order, so the ring runs contiguous.
        model = model.clone(config=dataclasses.replace(config, ring_layout="contiguous"))
    length = -(-(t + settings.max_new_tokens) // sp) * sp
    fields = {k: jnp.asarray(prompt[k]) for k in ("tokens", "vision_mask", "tokens_segment_ids")}
    rng = jax.random.key(0) if rng is None else rng
    tokens, vision_mask, logits, cache = _generate(
        model,
        params,
        fields,
        rng,
        _Knobs.of(settings),
        settings.max_new_tokens,
        settings.sample_mode,
        length,
        return_logits,
    )
    return Generation(tokens, vision_mask, logits, cache)
