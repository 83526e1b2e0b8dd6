"""Text-to-image and text-to-video sampling with classifier-free guidance (CFG), as LWM does it.

LWM (`lwm/vision_llama.py` `_sample_vision`, `lwm/vision_generation.py`) runs every prompt twice,
conditional rows first and unconditional rows ("<s><vision>") after, and at every step combines
the two rows' vision logits before sampling:

    guided = uncond + scale * (cond - uncond)     computed as  cond + (scale - 1) * (cond - uncond)

(the same number, and exactly `cond` at scale 1). The chosen token is fed to both rows. Every
257th generated token is forced to <eof> (256 codes per frame), the last frame's included.
Temperature and top-k then filter the guided logits (HF's warpers, LWM's settings). Unlike LWM,
codes are drawn among the VQGAN codes only (never <eof>, <eov> or an unused id inside a frame).

A video is LWM's two stages: the first frame from the image prompt with the image settings, then
the other frames from the video prompt followed by that first frame, with the video settings:

    image stage   cond   [BOS] "... Generate an image of {p} ASSISTANT: <vision>"   -> 257 tokens
                  uncond [BOS] "<vision>"
    video stage   cond   [BOS] "... Generate a video of {p} ASSISTANT: <vision>" f0 <eof>
                  uncond [BOS] "<vision>" f0 <eof>                                  -> (n-1) x 257

Example:
    >>> codes = generate_frames(model, params, [generation_prompt(tok, "a red fox")],
    ...                         unconditional_prompt(tok), frames=8,
    ...                         video_prompts=[generation_prompt(tok, "a red fox", "video")])
    >>> codes.shape                                   # int32 [1, 8, 16, 16], ready for the VQGAN
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from lwmkit.lwm_model.chat import decoding_model, empty_cache, positions_of, prompt_batch
from lwmkit.lwm_model.generate import SamplingConfig, _Knobs, _pick
from lwmkit.lwm_model.model import LWM
from lwmkit.lwm_model.prompts import TokenSeq, frame_tokens


@dataclass(frozen=True)
class GuidanceConfig:
    """How one stage samples vision tokens.

    Attributes:
      cfg_scale: classifier-free guidance scale (1 = no guidance: the unconditional rows are skipped).
      temperature: logits are divided by it; 0 = greedy (argmax of the guided logits).
      top_k: sample among the k most likely codes (0 = all).
    """

    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        for name in ("cfg_scale", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"GuidanceConfig.{name}={value!r}: must be a finite number >= 0")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"GuidanceConfig.top_k={self.top_k!r}: must be an int >= 0 (0 = all codes)")


# LWM's scripts/run_sample_image.sh and run_sample_video.sh.
IMAGE_GUIDANCE = GuidanceConfig(cfg_scale=5.0, temperature=1.0, top_k=8192)
VIDEO_GUIDANCE = GuidanceConfig(cfg_scale=1.0, temperature=1.0, top_k=1000)


class VisionSample(NamedTuple):
    """tokens int32 [B, n] (vision ids); with return_logits, float32 [B, n, vision_vocab] logits of
    the conditional rows, the unconditional rows (None without guidance) and the guided mix that
    was sampled from (before temperature and top-k)."""

    tokens: np.ndarray
    cond_logits: np.ndarray | None
    uncond_logits: np.ndarray | None
    guided_logits: np.ndarray | None


def guide(cond: jax.Array, uncond: jax.Array, scale: jax.Array | float) -> jax.Array:
    """LWM's CFG on logits: uncond + scale * (cond - uncond), written so that scale 1 gives cond exactly."""
    return cond + (scale - 1.0) * (cond - uncond)


def _choose(logits, k, rng, knobs: _Knobs, config) -> jax.Array:
    """Token k (0-based) of every row from guided float32 logits [B, V]: a code, or the forced <eof>."""
    codes = jnp.arange(logits.shape[-1]) < config.vision_codes
    token = _pick(jnp.where(codes, logits, -jnp.inf), jax.random.fold_in(rng, k), knobs)
    eof = (k + 1) % (config.frame_codes + 1) == 0
    return jnp.where(eof, config.eof_id, token)


@partial(jax.jit, static_argnames=("model", "n", "cache_length", "guided", "return_logits"))
def _sample(model: LWM, params, prompt, rng, knobs: _Knobs, scale, n: int, cache_length: int, guided: bool,
            return_logits: bool):  # fmt: skip
    config = model.config
    tokens, vision_mask, seg = prompt["tokens"], prompt["vision_mask"], prompt["tokens_segment_ids"]
    rows = tokens.shape[0]
    b = rows // 2 if guided else rows
    positions = positions_of(seg)
    out = model.apply(
        {"params": params}, tokens, vision_mask, seg, positions, cache=empty_cache(model, rows, cache_length)
    )

    def mix(vision_logits):  # [rows, 1, V] -> cond, uncond, guided [b, V]
        logits = vision_logits[:, -1].astype(jnp.float32)
        if not guided:
            return logits, None, logits
        cond, uncond = logits[:b], logits[b:]
        return cond, uncond, guide(cond, uncond, scale)

    vocab = out.vision_logits.shape[-1]
    record = jnp.zeros((3, b, n, vocab) if return_logits else (0,), jnp.float32)

    def keep(record, parts, k):
        if not return_logits:
            return record
        cond, uncond, guided_logits = parts
        stack = jnp.stack([cond, cond if uncond is None else uncond, guided_logits])[:, :, None]  # [3, b, 1, V]
        return jax.lax.dynamic_update_slice(record, stack, (0, 0, k, 0))

    parts = mix(out.vision_logits)
    token = _choose(parts[2], jnp.int32(0), rng, knobs, config)
    generated = jnp.zeros((b, n), jnp.int32).at[:, 0].set(token)
    record = keep(record, parts, 0)

    def body(k, state):
        token, cache, generated, record = state
        feed = jnp.concatenate([token, token]) if guided else token  # both rows see the chosen token
        step = model.apply(
            {"params": params},
            feed[:, None],
            jnp.ones((rows, 1), bool),
            jnp.ones((rows, 1), jnp.int32),
            positions[:, -1:] + k,
            cache=cache,
        )
        parts = mix(step.vision_logits)
        token = _choose(parts[2], k, rng, knobs, config)
        generated = jax.lax.dynamic_update_slice(generated, token[:, None], (0, k))
        return token, step.cache, generated, keep(record, parts, k)

    _, _, generated, record = jax.lax.fori_loop(1, n, body, (token, out.cache, generated, record))
    return generated, record if return_logits else None


def sample_vision(
    model: LWM,
    params: Any,
    prompts: Sequence[TokenSeq],
    num_tokens: int,
    guidance: GuidanceConfig = GuidanceConfig(),
    rng: jax.Array | None = None,
    *,
    uncond: Sequence[TokenSeq] | None = None,
    return_logits: bool = False,
) -> VisionSample:
    """Samples `num_tokens` vision tokens after each prompt, guided by `uncond` when it is given.

    Args:
      model: the LWM module (vision=True; with its mesh for ring prefill).
      params: its parameters.
      prompts: the conditional prompts (B of them).
      num_tokens: tokens to generate per prompt; token k is <eof> when (k + 1) % 257 == 0.
      guidance: CFG scale, temperature and top-k.
      rng: PRNG key (default key 0); step k samples with `fold_in(rng, k)`, like `generate`, so
        without `uncond` the tokens equal `generate(..., sample_mode="vision")`'s.
      uncond: one unconditional prompt per conditional one; None samples from the conditional
        logits alone (what scale 1 amounts to, at half the cost).
      return_logits: also return every step's logits (3 x B x num_tokens x vision_vocab floats).

    Raises:
      ValueError: a text-only model, mismatched prompt counts, or a prompt too long for the model.
    """
    config = model.config
    if not config.vision:
        raise ValueError("vision sampling needs a model with vision=True (a vision head and vision embeddings)")
    if not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_tokens={num_tokens!r}: must be an int >= 1")
    if uncond is not None and len(uncond) != len(prompts):
        raise ValueError(f"{len(uncond)} unconditional prompts for {len(prompts)} conditional ones")
    rows = list(prompts) + list(uncond or [])
    batch = prompt_batch(model, rows)
    model, length = decoding_model(model, int(batch["tokens"].shape[1]), num_tokens)
    knobs = _Knobs.of(SamplingConfig(1, "vision", guidance.temperature, guidance.top_k, 1.0, None, 0))
    rng = jax.random.key(0) if rng is None else rng
    fields = {k: jnp.asarray(v) for k, v in batch.items()}
    tokens, record = _sample(
        model, params, fields, rng, knobs, jnp.float32(guidance.cfg_scale), num_tokens, length,
        uncond is not None, return_logits,
    )  # fmt: skip
    if record is None:
        return VisionSample(np.asarray(tokens), None, None, None)
    record = np.asarray(record)
    return VisionSample(np.asarray(tokens), record[0], record[1] if uncond is not None else None, record[2])


def tokens_to_codes(tokens: np.ndarray, config) -> np.ndarray:
    """Generated vision tokens [B, F x 257] (frames ending in <eof>) -> codes int32 [B, F, side, side].

    Raises:
      ValueError: if the tokens are not whole frames, or a frame does not end in <eof>.
    """
    tokens = np.asarray(tokens)
    per = config.frame_codes + 1
    if tokens.ndim != 2 or tokens.shape[1] % per:
        raise ValueError(f"vision tokens {tokens.shape}: need [B, F x {per}]")
    frames = tokens.reshape(tokens.shape[0], -1, per)  # [B, F, 257]
    if (frames[:, :, -1] != config.eof_id).any():
        raise ValueError(f"a generated frame does not end in <eof>={config.eof_id}")
    side = math.isqrt(config.frame_codes)
    if side * side != config.frame_codes:
        raise ValueError(f"frame_codes={config.frame_codes} is not a square grid")
    return frames[:, :, :-1].reshape(tokens.shape[0], -1, side, side).astype(np.int32)


def generate_frames(
    model: LWM,
    params: Any,
    image_prompts: Sequence[TokenSeq],
    uncond: TokenSeq,
    frames: int = 1,
    *,
    video_prompts: Sequence[TokenSeq] | None = None,
    image: GuidanceConfig = IMAGE_GUIDANCE,
    video: GuidanceConfig = VIDEO_GUIDANCE,
    rng: jax.Array | None = None,
) -> np.ndarray:
    """LWM's text-to-image (frames=1) and text-to-video: codes int32 [B, frames, 16, 16].

    Args:
      image_prompts: `generation_prompt(tok, p, "image")` per prompt (draws the first frame).
      uncond: the unconditional prompt (`unconditional_prompt(tok)`), shared by all rows.
      frames: frames to generate.
      video_prompts: `generation_prompt(tok, p, "video")` per prompt; needed when frames > 1.
      image, video: guidance of the first frame and of the others (LWM's defaults).
      rng: PRNG key (default key 0); the two stages use `fold_in(rng, 0)` and `fold_in(rng, 1)`.

    Raises:
      ValueError: frames < 1, or frames > 1 without matching video prompts.
    """
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames={frames!r}: must be an int >= 1")
    b = len(image_prompts)
    if frames > 1 and (video_prompts is None or len(video_prompts) != b):
        raise ValueError(f"frames={frames} needs one video prompt per image prompt ({b})")
    per = model.config.frame_codes + 1
    rng = jax.random.key(0) if rng is None else rng

    def unconditional(stage: GuidanceConfig, tail: list[TokenSeq] | None = None):
        if stage.cfg_scale == 1.0:  # guided == cond exactly: skip the unconditional rows
            return None
        return [uncond + (tail[i] if tail else TokenSeq.text([])) for i in range(b)]

    first = sample_vision(
        model, params, image_prompts, per, image, jax.random.fold_in(rng, 0), uncond=unconditional(image)
    ).tokens  # [B, 257]
    if frames == 1:
        return tokens_to_codes(first, model.config)
    assert video_prompts is not None
    heads = [frame_tokens(first[i, :-1], model.config.eof_id) for i in range(b)]
    rest = sample_vision(
        model, params, [p + h for p, h in zip(video_prompts, heads, strict=True)], (frames - 1) * per, video,
        jax.random.fold_in(rng, 1), uncond=unconditional(video, heads),
    ).tokens  # fmt: skip
    return tokens_to_codes(np.concatenate([first, rest], axis=1), model.config)
