"""Image-text examples: the per-pair understanding/generation choice, templates, layout and loss weights."""

from __future__ import annotations

import numpy as np
import pytest
from lwmkit.pipelines.examples.vision_text import (
    TEMPLATE_PRESETS,
    ExampleBuilder,
    Templates,
    assemble_example,
    choose_kind,
    parse_template,
)
from lwmkit.tokenizers import SentencePieceTokenizer
from lwmkit.tokenizers.vision import EOV_ID, vision_field

KEYS = [f"{i:09d}" for i in range(4000)]


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.8])
def test_the_mix_follows_the_fraction(fraction):
    share = np.mean([choose_kind(k, 0, fraction) == "generation" for k in KEYS])
    assert abs(share - fraction) < 0.03  # 4000 draws: 3 sigma is about 0.024


def test_the_mix_is_per_pair_and_seeded():
    assert {choose_kind(k, 0, 0.0) for k in KEYS} == {"understanding"}
    assert {choose_kind(k, 0, 1.0) for k in KEYS} == {"generation"}
    kinds = [choose_kind(k, 7, 0.5) for k in KEYS]
    assert [choose_kind(k, 7, 0.5) for k in reversed(KEYS)] == kinds[::-1]  # order does not matter
    assert kinds != [choose_kind(k, 8, 0.5) for k in KEYS]  # the seed does
    # Raising the fraction only turns understanding pairs into generation pairs.
    low, high = ([choose_kind(k, 7, f) for k in KEYS] for f in (0.3, 0.6))
    assert all(h == "generation" for lo, h in zip(low, high, strict=True) if lo == "generation")


def test_parse_template():
    assert parse_template("{vision}{caption}", "understanding") == (("vision", ""), ("caption", ""))
    assert parse_template("Draw{caption} {{ok}}:{vision}", "generation") == (
        ("text", "Draw"), ("caption", ""), ("text", " {ok}:"), ("vision", ""),
    )
    for name, (u, g) in TEMPLATE_PRESETS.items():
        assert Templates.preset(name) == Templates(u, g)


@pytest.mark.parametrize(
    "template, kind, message",
    [
        ("{caption}{vision}", "understanding", "puts {vision} before {caption}"),
        ("{vision}{caption}", "generation", "puts {caption} before {vision}"),
        ("{vision}", "understanding", "exactly once"),
        ("{vision}{caption}{caption}", "understanding", "exactly once"),
        ("{vision}{caption}{title}", "understanding", "unknown placeholder"),
        ("{vision}{caption:>9}", "understanding", "unknown placeholder"),
        ("{vision}{caption", "understanding", "literal braces"),
    ],
)
def test_bad_templates(template, kind, message):
    with pytest.raises(ValueError, match=message):
        parse_template(template, kind)
    with pytest.raises(ValueError, match=f"{kind}_template"):
        Templates(**{kind: template})
    with pytest.raises(ValueError, match="not one of"):
        Templates.preset("llava")


def _assemble(kind, parts, caption=(30, 31, 32)):
    field = np.array([5, 6, *range(100, 356), EOV_ID, 7], np.int32)  # tags [5, 6] and [7]
    mask = np.zeros(len(field), bool)
    mask[2:-1] = True
    return assemble_example(kind, parts, {"Q:": np.array([40, 41]), "A:": np.array([42])},
                            np.array(caption), field, mask, bos_id=1, eos_id=2)


def test_understanding_layout_and_weights():
    ex = _assemble("understanding", parse_template("Q:{vision}A:{caption}", "understanding"))
    n = len(ex.tokens)
    assert n == 1 + 2 + 260 + 1 + 3 + 1
    assert ex.tokens[:3].tolist() == [1, 40, 41] and ex.tokens[3:5].tolist() == [5, 6]
    assert ex.tokens[-6:].tolist() == [7, 42, 30, 31, 32, 2]
    assert ex.vision_mask.sum() == 257 and ex.vision_mask[5:262].all()
    assert ex.atomic_spans == ((3, 263),)
    expected = np.zeros(n, np.float32)
    expected[-4:] = 1.0  # caption and EOS
    np.testing.assert_array_equal(ex.loss_weights, expected)
    assert ex.tokens.dtype == np.int32 and ex.vision_mask.dtype == bool and ex.loss_weights.dtype == np.float32


def test_generation_layout_and_weights():
    ex = _assemble("generation", parse_template("{caption}{vision}", "generation"))
    assert ex.tokens[:4].tolist() == [1, 30, 31, 32]
    assert ex.tokens[4:6].tolist() == [5, 6] and ex.tokens[-2:].tolist() == [7, 2]
    assert ex.tokens[-3] == EOV_ID
    assert ex.atomic_spans == ((4, 4 + 260),)
    # LWM's `[caption],vision`: loss on the whole vision field (tags, codes, <eov>) and EOS;
    # none on BOS or the caption.
    expected = np.zeros(len(ex.tokens), np.float32)
    expected[4 : 4 + 260] = 1
    expected[-1] = 1
    np.testing.assert_array_equal(ex.loss_weights, expected)
    assert ex.loss_weights.sum() == 261


def test_builder_with_a_real_tokenizer(bpe_model):
    import pickle

    tok = SentencePieceTokenizer.from_file(bpe_model)
    codes = np.arange(256, dtype=np.int32).reshape(16, 16) * 31 % 8192
    builder = ExampleBuilder(tok, Templates.preset("lwm_chat"))
    ex = builder.build("understanding", "a small red house", codes)
    clone = pickle.loads(pickle.dumps(builder))
    assert clone._cache is None
    again = clone.build("understanding", "a small red house", codes)
    np.testing.assert_array_equal(ex.tokens, again.tokens)

    field, mask = vision_field(codes, tok)
    prompt = tok.encode("You are a helpful assistant. USER: Describe the image.\n")
    a, b = ex.atomic_spans[0]
    assert ex.tokens[0] == tok.bos_id and ex.tokens[-1] == tok.eos_id
    assert ex.tokens[1 : 1 + len(prompt)].tolist() == prompt and a == 1 + len(prompt)
    np.testing.assert_array_equal(ex.tokens[a:b], field)
    np.testing.assert_array_equal(ex.vision_mask[a:b], mask)
    caption = tok.encode("a small red house")
    assert ex.tokens[-1 - len(caption) : -1].tolist() == caption
    assert tok.decode(ex.tokens[b : len(ex.tokens) - 1 - len(caption)].tolist()).strip() == "ASSISTANT:"
    assert ex.loss_weights.sum() == len(caption) + 1
    assert (ex.loss_weights[-1 - len(caption) :] == 1).all()
