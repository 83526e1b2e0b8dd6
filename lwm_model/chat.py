"""Streaming text decoding for chat: prefill the prompt once, then yield new tokens chunk by chunk.

`generate.generate` runs the whole answer in one compiled loop; a chat wants the first words on
screen while the rest is computed. `stream_generate` does the same work in pieces: one compiled
prefill (RingAttention over the mesh's "sp" axis when the config says "ring"), then compiled
chunks of `chunk` decoding steps, each handing back its tokens. Token choice, RNG use (step k
draws with `fold_in(rng, k)`), padding and EOS handling are `generate`'s, so the streamed tokens
equal `generate(...).tokens` up to the first EOS of each row.

Example:
    >>> batch = prompt_batch(model, [vision_chat_prompt(tok, "What is this?", field)])
    >>> for piece in stream_generate(model, params, batch, SamplingConfig(256, temperature=0.2, eos_id=2)):
    ...     print(piece)      # int32 [1, m]: the next m tokens (pad_id after a row's EOS)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from lwmkit.lwm_model.generate import SamplingConfig, _choose, _Knobs, init_cache, pad_prompts
from lwmkit.lwm_model.mesh import constrain, sequence_parallel
from lwmkit.lwm_model.model import LWM
from lwmkit.lwm_model.prompts import TokenSeq

PROMPT_FIELDS = ("tokens", "vision_mask", "tokens_segment_ids")


def ring_size(model: LWM) -> int:
    """The sequence shards of the model's mesh, "sp" x "ulysses" (1 without a mesh): prompts must
    divide by it for ring prefill."""
    sp, ulysses = sequence_parallel(model.mesh)
    return sp * ulysses


def prompt_batch(model: LWM, prompts: Sequence[TokenSeq], bucket: int = 1, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Left-pads prompts into one batch whose length divides by `bucket` and by the ring size.

    Returns:
      `pad_prompts`' fields: tokens, vision_mask, tokens_segment_ids [B, T].
    """
    multiple = math.lcm(max(1, bucket), ring_size(model))
    return pad_prompts([p.tokens for p in prompts], [p.vision_mask for p in prompts], multiple, pad_id)


def decoding_model(model: LWM, prompt_length: int, new_tokens: int) -> tuple[LWM, int]:
    """The model to decode with (a ring runs contiguous on a prompt in token order) and the cache length.

    Raises:
      ValueError: if the prompt cannot be split over the ring, or prompt + new tokens exceed the
        config's max_sequence_length.
    """
    config, sp = model.config, ring_size(model)
    if prompt_length + new_tokens > config.max_sequence_length:
        raise ValueError(
            f"prompt of {prompt_length} tokens + {new_tokens} new tokens exceeds the model's "
            f"max_sequence_length {config.max_sequence_length}"
        )
    if config.attention_impl == "ring":
        if prompt_length % sp:
            raise ValueError(f"prompt length {prompt_length} must divide by the mesh's sp x ulysses={sp} for ring "
                             f"prefill")
        model = model.clone(config=dataclasses.replace(config, ring_layout="contiguous"))
    return model, -(-(prompt_length + new_tokens) // sp) * sp


def empty_cache(model: LWM, batch: int, length: int):
    """A zeroed KV cache, sharded like the model's activations when it has a mesh."""
    cache = init_cache(model.config, batch, length)
    if model.mesh is not None:
        cache = cache._replace(k=constrain(cache.k, "cache", model.mesh), v=constrain(cache.v, "cache", model.mesh))
    return cache


def positions_of(segment_ids: jax.Array) -> jax.Array:
    """RoPE positions of a left-padded prompt: real tokens count 0, 1, 2, ...; padding gets 0."""
    return jnp.maximum(jnp.cumsum(segment_ids != 0, axis=1) - 1, 0).astype(jnp.int32)


@partial(jax.jit, static_argnames=("model", "cache_length"))
def _prefill(model: LWM, params, prompt, rng, knobs: _Knobs, cache_length: int):
    tokens, vision_mask, seg = (prompt[k] for k in PROMPT_FIELDS)
    b = tokens.shape[0]
    positions = positions_of(seg)
    cache = empty_cache(model, b, cache_length)
    out = model.apply({"params": params}, tokens, vision_mask, seg, positions, cache=cache)
    logits = out.text_logits[:, -1].astype(jnp.float32)
    token, done = _choose(
        logits, jnp.int32(0), jax.random.fold_in(rng, 0), jnp.zeros((b,), bool), knobs, model.config, "text"
    )
    return token, done, out.cache, positions[:, -1:]


@partial(jax.jit, static_argnames=("model", "n", "chunk"))
def _decode(model: LWM, params, cache, token, done, last, rng, knobs: _Knobs, start, n: int, chunk: int):
    """Steps start, start+1, ... (at most `chunk`, stopping at n or when every row is done)."""
    b = token.shape[0]

    def cond(state):
        k, _, done, _, _ = state
        return (k < start + chunk) & (k < n) & ~jnp.all(done)

    def body(state):
        k, token, done, cache, out = state
        step = model.apply(
            {"params": params},
            token[:, None],
            jnp.zeros((b, 1), bool),
            jnp.ones((b, 1), jnp.int32),
            last + k,
            cache=cache,
        )
        logits = step.text_logits[:, -1].astype(jnp.float32)
        token, done = _choose(logits, k, jax.random.fold_in(rng, k), done, knobs, model.config, "text")
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, k - start))
        return k + 1, token, done, step.cache, out

    out = jnp.full((b, chunk), knobs.pad_id, jnp.int32)
    k, token, done, cache, out = jax.lax.while_loop(cond, body, (start, token, done, cache, out))
    return k, token, done, cache, out


def stream_generate(
    model: LWM,
    params: Any,
    prompt: Mapping[str, Any],
    settings: SamplingConfig,
    rng: jax.Array | None = None,
    *,
    chunk: int = 16,
) -> Iterator[np.ndarray]:
    """Generates text tokens after each prompt row, yielding them as they are decoded.

    Args:
      model: the LWM module (with its mesh for ring prefill and sharded caches).
      params: its parameters (placed on the mesh already, e.g. by `shard_params`).
      prompt: tokens, vision_mask, tokens_segment_ids [B, T], left-padded (`prompt_batch`).
      settings: a text-mode SamplingConfig (temperature, top_k, top_p, eos_id, pad_id).
      rng: PRNG key for sampling (default key 0).
      chunk: decoding steps per compiled call; a piece is yielded after each.

    Yields:
      int32 [B, m] numpy arrays: the first is the token chosen by the prefill (m = 1), then up to
      `chunk` tokens at a time, until max_new_tokens or every row has emitted EOS.

    Raises:
      ValueError: missing prompt fields, a vision-mode setting, a prompt the ring cannot split,
        or a prompt too long for the model.
    """
    missing = [f for f in PROMPT_FIELDS if f not in prompt]
    if missing:
        raise ValueError(f"prompt lacks {missing}; build it with prompt_batch or pad_prompts")
    if settings.sample_mode != "text":
        raise ValueError("stream_generate decodes text; use vision_generate for vision tokens")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk={chunk!r}: must be an int >= 1")
    t = int(np.shape(prompt["tokens"])[1])
    n = settings.max_new_tokens
    model, length = decoding_model(model, t, n)
    fields = {k: jnp.asarray(prompt[k]) for k in PROMPT_FIELDS}
    rng = jax.random.key(0) if rng is None else rng
    knobs = _Knobs.of(settings)
    token, done, cache, last = _prefill(model, params, fields, rng, knobs, length)
    yield np.asarray(token)[:, None]
    k = 1
    while k < n and not bool(np.all(np.asarray(done))):
        k_next, token, done, cache, out = _decode(
            model, params, cache, token, done, last, rng, knobs, jnp.int32(k), n, chunk
        )
        k_next = int(k_next)
        yield np.asarray(out)[:, : k_next - k]
        k = k_next


def generate_text(
    model: LWM,
    params: Any,
    prompt: Mapping[str, Any],
    settings: SamplingConfig,
    rng: jax.Array | None = None,
    *,
    chunk: int = 16,
) -> np.ndarray:
    """All of `stream_generate`'s pieces joined: int32 [B, m], m <= max_new_tokens."""
    return np.concatenate(list(stream_generate(model, params, prompt, settings, rng, chunk=chunk)), axis=1)
