"""Chat prompts in LWM's layout (golden, from LWM-FORMAT-NOTES.md and lwm/vision_chat.py) and
streaming decoding: the streamed tokens are `generate`'s, in pieces, dense or ring-prefilled."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import sentencepiece as spm
from flax.traverse_util import flatten_dict, unflatten_dict
from lwmkit.lwm_model.chat import generate_text, prompt_batch, stream_generate
from lwmkit.lwm_model.config import preset
from lwmkit.lwm_model.generate import SamplingConfig, generate, pad_prompts
from lwmkit.lwm_model.mesh import make_mesh, shard_params
from lwmkit.lwm_model.model import LWM, init_params
from lwmkit.lwm_model.prompts import TokenSeq, text_chat_prompt, vision_chat_prompt
from lwmkit.tokenizers.text import SentencePieceTokenizer
from lwmkit.tokenizers.vision import vision_field

TINY = preset("tiny")
PROMPTS = [[1, 17, 93, 40, 7, 250], [1, 61, 5]]
GREEDY = SamplingConfig(max_new_tokens=12, eos_id=None)


@pytest.fixture(scope="module")
def sp(bpe_model):
    return spm.SentencePieceProcessor(model_file=bpe_model)


@pytest.fixture(scope="module")
def tok(bpe_model):
    return SentencePieceTokenizer.from_file(bpe_model)


def fast_params(config, seed: int = 0):
    """`init_params`' distributions drawn with numpy: no compilation (tests compile enough already)."""
    shapes = flatten_dict(jax.eval_shape(lambda: init_params(LWM(config), jax.random.key(0))), sep="/")
    rng = np.random.default_rng(seed)
    return unflatten_dict({
        k: np.ones(v.shape, v.dtype) if k.endswith(("norm/kernel", "ln_f/kernel"))
        else (rng.standard_normal(v.shape, np.float32) * config.initializer_range).astype(v.dtype)
        for k, v in shapes.items()
    }, sep="/")  # fmt: skip


@pytest.fixture(scope="module")
def params():
    return fast_params(TINY)


def test_vision_chat_prompt_is_lwms_template(sp, tok):
    # lwm/vision_chat.py: encode("<s>You are a helpful assistant. USER: {q}\n") + encode("<vision>") + vision
    # + encode("</vision>") + encode(" ASSISTANT:"); "<s>" is BOS and no piece gets another BOS.
    # Vision (LWM-FORMAT-NOTES.md): per frame 256 row-major codes then <eof>=8192, the last <eov>=8193.
    codes = np.random.default_rng(0).integers(0, 8192, size=(2, 16, 16))
    question = "What is in the image?"
    head = [1] + sp.encode(f"You are a helpful assistant. USER: {question}\n")
    vision = list(codes[0].ravel()) + [8192] + list(codes[1].ravel()) + [8193]
    tail = sp.encode("</vision>") + sp.encode(" ASSISTANT:")
    expected = head + sp.encode("<vision>") + vision + tail
    mask = [False] * (len(head) + len(sp.encode("<vision>"))) + [True] * 514 + [False] * len(tail)

    p = vision_chat_prompt(tok, question, TokenSeq(*vision_field(codes, tok)))
    assert p.tokens.tolist() == expected
    assert p.vision_mask.tolist() == mask
    assert p.tokens.dtype == np.int32 and len(p) == len(expected)
    text = p.tokens[~p.vision_mask]
    assert text[0] == 1 and (text[1:] != 1).all()  # one BOS, at the start
    assert sp.decode(text[1 : len(head)].tolist()) == "You are a helpful assistant. USER: What is in the image?\n"


def test_text_chat_prompt_is_lwms_template(sp, tok):
    plain = text_chat_prompt(tok, "Who wrote it?")
    assert plain.tokens.tolist() == [1] + sp.encode("You are a helpful assistant. USER: Who wrote it? ASSISTANT:")
    ctx = text_chat_prompt(tok, "Who wrote it?", context="A long letter.")
    want = [1] + sp.encode("You are a helpful assistant. USER: A long letter. Who wrote it? ASSISTANT:")
    assert ctx.tokens.tolist() == want and not ctx.vision_mask.any()
    with pytest.raises(ValueError, match="no vision tokens"):
        vision_chat_prompt(tok, "q", TokenSeq.text([5, 6]))


def test_streamed_pieces_are_generates_tokens(params):
    model = LWM(TINY)
    batch = prompt_batch(model, [TokenSeq.text(p) for p in PROMPTS], bucket=4)
    assert batch["tokens"].shape == (2, 8)
    sampled = SamplingConfig(max_new_tokens=12, temperature=0.8, top_k=20, eos_id=None)
    for settings, rng in ((GREEDY, None), (sampled, jax.random.key(7))):
        pieces = list(stream_generate(model, params, batch, settings, rng, chunk=5))
        assert [p.shape for p in pieces] == [(2, 1), (2, 5), (2, 5), (2, 1)]
        want = np.asarray(generate(model, params, batch, settings, rng).tokens)
        np.testing.assert_array_equal(np.concatenate(pieces, axis=1), want)


def test_stream_stops_once_every_row_has_ended(params):
    model = LWM(TINY)
    same = pad_prompts([PROMPTS[0], PROMPTS[0]], multiple=4)  # two equal rows end at the same step
    greedy = generate_text(model, params, same, GREEDY, chunk=5)
    eos = int(greedy[0, 3])
    first = greedy[0].tolist().index(eos)  # the first time the greedy answer emits it
    settings = SamplingConfig(max_new_tokens=12, eos_id=eos, pad_id=0)
    out = generate_text(model, params, same, settings, chunk=5)
    assert out.shape == (2, first + 1)  # decoding stopped at the step that emitted EOS in every row
    np.testing.assert_array_equal(out, greedy[:, : first + 1])
    full = np.asarray(generate(model, params, same, settings).tokens)
    np.testing.assert_array_equal(full[:, : first + 1], out)
    assert (full[:, first + 1 :] == 0).all()  # generate pads what the stream never computed


@pytest.mark.parametrize("dims,devices", [("1,1,1,4", 4), ("1,1,1,2,4", 8)])  # a ring; Ulysses x ring (2D)
def test_ring_prefill_streams_the_same_answer(params, dims, devices):
    mesh = make_mesh(dims, jax.devices()[:devices])
    ring = LWM(preset("tiny", attention_impl="ring", ring_block_q=4, ring_block_k=4), mesh)
    prompts = [TokenSeq.text(p) for p in PROMPTS]
    batch = prompt_batch(ring, prompts)
    assert batch["tokens"].shape[1] % devices == 0  # prompts pad to the sequence shards, sp x ulysses
    got = generate_text(ring, shard_params(params, mesh), batch, GREEDY, chunk=6)
    want = generate_text(LWM(TINY), params, prompt_batch(LWM(TINY), prompts, bucket=4), GREEDY, chunk=5)
    np.testing.assert_array_equal(got, want)


def test_stream_refuses_what_it_cannot_decode(params):
    model = LWM(TINY)
    batch = pad_prompts(PROMPTS)
    with pytest.raises(ValueError, match="max_sequence_length"):
        next(stream_generate(model, params, batch, SamplingConfig(max_new_tokens=TINY.max_sequence_length)))
    with pytest.raises(ValueError, match="decodes text"):
        next(stream_generate(model, params, batch, SamplingConfig(4, sample_mode="vision")))
    with pytest.raises(ValueError, match="lacks"):
        next(stream_generate(model, params, {"tokens": batch["tokens"]}, GREEDY))
    ring = LWM(preset("tiny", attention_impl="ring"), make_mesh("1,1,1,4", jax.devices()[:4]))
    with pytest.raises(ValueError, match="divide"):
        next(stream_generate(ring, params, pad_prompts(PROMPTS), GREEDY))  # length 6 over sp=4
