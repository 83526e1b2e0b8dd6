"""Classifier-free guided vision sampling: LWM's prompts (golden), scale 1 = plain sampling, the
guided logits are the stated mix of the conditional and unconditional model logits, <eof> every
257 tokens, and the two-stage video (first frame, then the rest after it)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import sentencepiece as spm
from lwmkit.lwm_model.chat import prompt_batch
from lwmkit.lwm_model.config import preset
from lwmkit.lwm_model.generate import SamplingConfig, generate
from lwmkit.lwm_model.model import LWM, forward
from lwmkit.lwm_model.prompts import TokenSeq, frame_tokens, generation_prompt, unconditional_prompt
from lwmkit.lwm_model.vision_generate import (
    GuidanceConfig,
    generate_frames,
    guide,
    sample_vision,
    tokens_to_codes,
)
from lwmkit.tokenizers.text import SentencePieceTokenizer

from tests.lwm_model.test_chat import fast_params

TINY = preset("tiny")  # LWM's vision ids: 8192 codes, <eof> = 8192
COND = [TokenSeq.text([1, 17, 93, 40, 7, 250]), TokenSeq.text([1, 61, 5])]
UNCOND = [TokenSeq.text([1, 9, 4])] * 2
N = 260  # one whole frame (its <eof> at index 256) and 3 codes of the next
SAMPLED = GuidanceConfig(cfg_scale=1.0, temperature=0.9, top_k=50)


@pytest.fixture(scope="module")
def params():
    return fast_params(TINY)


@pytest.fixture(scope="module")
def tok(bpe_model):
    return SentencePieceTokenizer.from_file(bpe_model)


def test_generation_prompts_are_lwms(bpe_model, tok):
    # lwm/vision_generation.py: "<s>You are a helpful assistant. USER: Generate an image of {p} ASSISTANT: <vision>",
    # the video one with "a video of", and "<s><vision>" unconditionally; "<s>" is BOS.
    sp = spm.SentencePieceProcessor(model_file=bpe_model)
    system = "You are a helpful assistant. USER: "
    image = generation_prompt(tok, "a red fox", "image")
    assert image.tokens.tolist() == [1] + sp.encode(system + "Generate an image of a red fox ASSISTANT: <vision>")
    video = generation_prompt(tok, "a red fox", "video")
    assert video.tokens.tolist() == [1] + sp.encode(system + "Generate a video of a red fox ASSISTANT: <vision>")
    assert unconditional_prompt(tok).tokens.tolist() == [1] + sp.encode("<vision>")
    assert not (image.vision_mask.any() or video.vision_mask.any())
    with pytest.raises(ValueError, match="allowed"):
        generation_prompt(tok, "x", "audio")


def test_guide_is_uncond_plus_scale_times_difference():
    rng = np.random.default_rng(0)
    cond, uncond = rng.normal(size=(2, 3, 50)).astype(np.float32)
    assert np.array_equal(np.asarray(guide(cond, uncond, 1.0)), cond)  # exactly, not just close
    want = uncond + 2.5 * (cond - uncond)
    np.testing.assert_allclose(np.asarray(guide(cond, uncond, 2.5)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(guide(cond, uncond, 0.0)), uncond, atol=1e-6)


def test_scale_one_is_plain_vision_sampling(params):
    # Plain sampling is `generate` in vision mode; guidance at scale 1 must draw the same tokens.
    model, rng = LWM(TINY), jax.random.key(3)
    guided = sample_vision(model, params, COND, N, SAMPLED, rng, uncond=UNCOND, return_logits=True)
    np.testing.assert_array_equal(guided.guided_logits, guided.cond_logits)
    plain = generate(model, params, prompt_batch(model, COND), SamplingConfig(N, "vision", 0.9, 50, eos_id=None), rng)
    np.testing.assert_array_equal(guided.tokens, np.asarray(plain.tokens))


def test_guided_logits_mix_the_two_models_and_eof_is_forced(params):
    model, scale = LWM(TINY), 3.0
    out = sample_vision(model, params, COND, N, GuidanceConfig(scale, 0.9, 50), jax.random.key(5), uncond=UNCOND,
                        return_logits=True)  # fmt: skip
    np.testing.assert_allclose(
        out.guided_logits, out.uncond_logits + scale * (out.cond_logits - out.uncond_logits), rtol=1e-5, atol=1e-4
    )
    # Both halves see the chosen tokens: teacher-force them after each prompt and compare logits.
    rows = COND + UNCOND
    batch = prompt_batch(model, [p + TokenSeq.vision(out.tokens[i % 2]) for i, p in enumerate(rows)])
    seg = batch["tokens_segment_ids"]
    batch["tokens_positions"] = np.maximum(np.cumsum(seg != 0, 1) - 1, 0)
    logits = np.asarray(jax.jit(lambda p, b: forward(model, p, b))(params, batch).vision_logits)
    t = batch["tokens"].shape[1]
    predicting = logits[:, t - N - 1 : t - 1]  # [4, N, V]: the logits before each generated token
    np.testing.assert_allclose(out.cond_logits, predicting[:2], atol=2e-4)
    np.testing.assert_allclose(out.uncond_logits, predicting[2:], atol=2e-4)
    # <eof> exactly at every 257th token; codes elsewhere.
    is_eof = (np.arange(N) + 1) % 257 == 0
    assert (out.tokens[:, is_eof] == TINY.eof_id).all()
    assert (out.tokens[:, ~is_eof] < TINY.vision_codes).all()
    # At temperature 0 the token is the argmax of the guided logits over the codes.
    greedy = sample_vision(model, params, COND, N, GuidanceConfig(scale, 0.0), uncond=UNCOND, return_logits=True)
    best = greedy.guided_logits[..., : TINY.vision_codes].argmax(-1)
    np.testing.assert_array_equal(greedy.tokens[:, ~is_eof], best[:, ~is_eof])


def test_video_is_first_frame_then_the_rest_after_it(params, tok):
    model, rng = LWM(TINY), jax.random.key(11)
    image, video = GuidanceConfig(3.0, 0.0), GuidanceConfig(2.0, 0.0)
    prompts = dict(image_prompts=[generation_prompt(tok, "a red fox")], uncond=unconditional_prompt(tok))
    codes = generate_frames(model, params, **prompts, frames=3, image=image, video=video, rng=rng,
                            video_prompts=[generation_prompt(tok, "a red fox", "video")])  # fmt: skip
    assert codes.shape == (1, 3, 16, 16) and codes.dtype == np.int32
    assert (codes >= 0).all() and (codes < TINY.vision_codes).all()
    one = generate_frames(model, params, **prompts, frames=1, image=image, rng=rng)
    np.testing.assert_array_equal(one[0, 0], codes[0, 0])
    # The video stage, laid out by hand: LWM's video prompt, then frame 0's codes and <eof>.
    first = TokenSeq.vision(list(codes[0, 0].ravel()) + [TINY.eof_id])
    cond = TokenSeq.text([1] + tok.encode("You are a helpful assistant. USER: Generate a video of a red fox "
                                          "ASSISTANT: <vision>")) + first  # fmt: skip
    uncond = TokenSeq.text([1] + tok.encode("<vision>")) + first
    rest = sample_vision(model, params, [cond], 2 * 257, video, jax.random.fold_in(rng, 1), uncond=[uncond])
    np.testing.assert_array_equal(tokens_to_codes(rest.tokens, TINY)[0], codes[0, 1:])


def test_refusals(params):
    for bad in (dict(cfg_scale=-1.0), dict(temperature=float("nan")), dict(top_k=-1), dict(top_k=1.5)):
        with pytest.raises(ValueError, match="GuidanceConfig"):
            GuidanceConfig(**bad)
    text_only = LWM(preset("tiny", vision=False))
    with pytest.raises(ValueError, match="vision=True"):
        sample_vision(text_only, params, COND, 4)
    with pytest.raises(ValueError, match="unconditional"):
        sample_vision(LWM(TINY), params, COND, 4, uncond=UNCOND[:1])
    with pytest.raises(ValueError, match="does not end in <eof>"):
        tokens_to_codes(np.zeros((1, 257), np.int32), TINY)
    with pytest.raises(ValueError, match="video prompt"):
        generate_frames(LWM(TINY), params, COND[:1], UNCOND[0], frames=2, image=GuidanceConfig(1.0, 0.0))
    np.testing.assert_array_equal(frame_tokens(np.arange(512).reshape(2, 16, 16) % 256, 256).tokens[[255, 256, 513]],
                                  [255, 256, 256])  # fmt: skip
