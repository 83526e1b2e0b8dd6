"""Decoding with the KV cache: greedy equals re-forward argmax, seeded sampling, vision mode, ring prefill."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lwmkit.lwm_model.config import preset
from lwmkit.lwm_model.generate import SamplingConfig, _Knobs, _pick, generate, pad_prompts
from lwmkit.lwm_model.mesh import make_mesh, shard_params
from lwmkit.lwm_model.model import LWM, forward, init_params

TINY = preset("tiny")
PROMPTS = [[1, 17, 93, 40, 7, 250], [1, 61, 5]]
# Every text test decodes 8 tokens after these prompts padded to 8, so they share compilations.
TEXT = SamplingConfig(max_new_tokens=8, eos_id=None)


@pytest.fixture(scope="module")
def params():
    return jax.jit(lambda: init_params(LWM(TINY), jax.random.key(0)))()


def reforward_logits(params, prompt, tokens, vision_mask, config=TINY):
    """Logits of a full forward (no cache) over prompt + generated tokens, one compile for all steps."""
    n = tokens.shape[1]
    full = dict(
        tokens=np.concatenate([prompt["tokens"], tokens], 1),
        vision_mask=np.concatenate([prompt["vision_mask"], vision_mask], 1),
        tokens_segment_ids=np.concatenate(
            [prompt["tokens_segment_ids"], np.ones((len(tokens), n), np.int32)], 1
        ),
    )
    full["tokens_positions"] = np.maximum(np.cumsum(full["tokens_segment_ids"] != 0, 1) - 1, 0)
    out = jax.jit(lambda p, b: forward(LWM(config), p, b))(params, full)
    t = prompt["tokens"].shape[1]
    head = out.vision_logits if vision_mask.all() else out.text_logits
    return np.asarray(head)[:, t - 1 : t + n - 1]  # the logits that predicted each generated token


def test_greedy_with_cache_is_argmax_of_full_reforward(params):
    prompt = pad_prompts(PROMPTS, multiple=4)
    assert prompt["tokens"][1].tolist() == [0, 0, 0, 0, 0, 1, 61, 5]  # left padding, segment id 0
    out = generate(LWM(TINY), params, prompt, TEXT, return_logits=True)
    tokens = np.asarray(out.tokens)
    assert tokens.shape == (2, 8) and not np.asarray(out.vision_mask).any()
    ref = reforward_logits(params, prompt, tokens, np.zeros_like(tokens, bool))
    np.testing.assert_allclose(np.asarray(out.logits), ref, atol=1e-5)
    np.testing.assert_array_equal(tokens, ref.argmax(-1))


def text_tokens(params, settings=TEXT, rng=None) -> np.ndarray:
    """Generated tokens after PROMPTS (with return_logits, like the greedy test: one compilation)."""
    out = generate(
        LWM(TINY), params, pad_prompts(PROMPTS, multiple=4), settings, rng, return_logits=True
    )
    return np.asarray(out.tokens)


def test_eos_ends_a_row_and_pads_after_it(params):
    free = text_tokens(params)
    eos = int(free[0, 2])  # make row 0's third token the end of sequence
    out = text_tokens(params, SamplingConfig(max_new_tokens=8, eos_id=eos, pad_id=0))
    assert out[0, :3].tolist() == free[0, :3].tolist() and (out[0, 3:] == 0).all()
    stop = np.nonzero(free[1] == eos)[0]
    end = stop[0] + 1 if len(stop) else 8
    assert out[1, :end].tolist() == free[1, :end].tolist() and (out[1, end:] == 0).all()


def test_sampling_is_reproducible_by_seed(params):
    settings = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=40, top_p=0.95, eos_id=None)
    a = text_tokens(params, settings, jax.random.key(7))
    np.testing.assert_array_equal(a, text_tokens(params, settings, jax.random.key(7)))
    assert (a != text_tokens(params, settings, jax.random.key(8))).any()
    top1 = SamplingConfig(8, temperature=0.7, top_k=1, eos_id=None)
    np.testing.assert_array_equal(text_tokens(params, top1, jax.random.key(9)), text_tokens(params))


def test_vision_mode_emits_codes_and_eof_every_257_tokens(params):
    prompt = pad_prompts(PROMPTS, multiple=4)
    n = 2 * 257 + 5
    settings = SamplingConfig(max_new_tokens=n, sample_mode="vision", temperature=1.0)
    out = generate(LWM(TINY), params, prompt, settings, jax.random.key(3), return_logits=True)
    tokens = np.asarray(out.tokens)
    assert np.asarray(out.vision_mask).all()
    eof = np.zeros(n, bool)
    eof[256::257] = True  # the 257th, 514th, ... generated token
    assert (tokens[:, eof] == TINY.eof_id).all()
    assert (tokens[:, ~eof] < TINY.vision_codes).all() and len(np.unique(tokens[:, ~eof])) > 50
    # The cache fed vision ids through the vision embedding: the first steps match a re-forward.
    ref = reforward_logits(params, prompt, tokens[:, :6], np.ones((2, 6), bool))
    np.testing.assert_allclose(np.asarray(out.logits)[:, :6], ref, atol=1e-5)


def test_ring_prefill_generates_what_dense_does(params):
    mesh = make_mesh("1,1,2,4")
    ring = preset(
        "tiny", attention_impl="ring", ring_layout="zigzag", ring_block_q=4, ring_block_k=4
    )
    # 12 wide (4 more pads per row than the dense run's 8): padding must change nothing either.
    wide = pad_prompts(PROMPTS, multiple=12)
    out = generate(LWM(ring, mesh), shard_params(params, mesh), wide, TEXT, return_logits=True)
    dense = generate(LWM(TINY), params, pad_prompts(PROMPTS, multiple=4), TEXT, return_logits=True)
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(dense.logits), atol=2e-5)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(dense.tokens))
    assert (
        out.cache.k.shape[2] == 20 and out.cache.k.sharding.spec[2] == "sp"
    )  # the cache splits over sp
    with pytest.raises(ValueError, match="must divide by the mesh's sp x ulysses=4"):
        generate(LWM(ring, mesh), params, pad_prompts(PROMPTS), TEXT)


def test_top_k_and_top_p_filter_what_may_be_sampled():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
    keys = jax.random.key(0)

    def draws(**kw):
        knobs = _Knobs.of(SamplingConfig(1, temperature=1.0, eos_id=None, **kw))
        return np.bincount(np.asarray(_pick(logits, keys, knobs)), minlength=4)

    assert draws()[3] > 0  # unfiltered, every token shows up
    assert draws(top_k=2)[2:].sum() == 0 and draws(top_k=2)[1] > 0
    assert draws(top_p=0.7)[2:].sum() == 0  # 0.5 + 0.3 reaches 0.7; the rest is cut
    assert draws(top_p=0.4).tolist() == [2000, 0, 0, 0]


def test_bad_settings_and_prompts_are_errors(params):
    with pytest.raises(ValueError, match="sample_mode='image'"):
        SamplingConfig(4, sample_mode="image")
    with pytest.raises(ValueError, match="top_p=0"):
        SamplingConfig(4, top_p=0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        pad_prompts([[1], []])
    with pytest.raises(ValueError, match="lacks"):
        generate(LWM(TINY), params, {"tokens": np.ones((1, 3), np.int32)}, SamplingConfig(2))
