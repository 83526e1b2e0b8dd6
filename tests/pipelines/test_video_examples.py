"""Video examples: understanding, generation and chat layouts, loss weights, and spans at frame boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from lwmkit.packing.bins import cut_document
from lwmkit.pipelines.videos.examples import (
    VideoExampleBuilder,
    VideoTemplates,
    frame_spans,
    video_kind,
)
from lwmkit.tokenizers import SentencePieceTokenizer
from lwmkit.tokenizers.vision import EOF_ID, EOV_ID, frame_codes, vision_field, vision_runs


@pytest.fixture(scope="module")
def tok(bpe_model):
    return SentencePieceTokenizer.from_file(bpe_model)


def _codes(frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 8192, (frames, 16, 16), dtype=np.int32)


def test_understanding_and_generation_are_the_image_layout_with_frame_spans(tok):
    b = VideoExampleBuilder(tok, VideoTemplates())
    codes = _codes(3)
    field, mask = vision_field(codes, tok)
    head = len(tok.encode("<vision>"))
    cap = np.array(tok.encode("A red bus drives by"), np.int32)
    bos, eos = [tok.bos_id], [tok.eos_id]

    u = b.build("understanding", codes, caption="A red bus drives by")
    np.testing.assert_array_equal(u.tokens, np.concatenate([bos, field, cap, eos]))
    np.testing.assert_array_equal(u.vision_mask, np.concatenate([[False], mask, np.zeros(len(cap) + 1, bool)]))
    np.testing.assert_array_equal(u.loss_weights, np.concatenate([np.zeros(1 + len(field)), np.ones(len(cap) + 1)]))
    f0 = 1 + head  # the first code
    assert u.atomic_spans == ((1, f0 + 257), (f0 + 257, f0 + 514), (f0 + 514, 1 + len(field)))

    g = b.build("generation", codes, caption="A red bus drives by")
    np.testing.assert_array_equal(g.tokens, np.concatenate([bos, cap, field, eos]))
    np.testing.assert_array_equal(g.loss_weights, np.concatenate([np.zeros(1 + len(cap)), np.ones(len(field) + 1)]))
    s = 1 + len(cap)
    assert [b_ - a for a, b_ in g.atomic_spans] == [head + 257, 257, len(field) - head - 2 * 257]
    assert g.atomic_spans[0][0] == s and g.atomic_spans[-1][1] == s + len(field)
    ends = g.tokens[[e - 1 for _, e in g.atomic_spans[:-1]]]
    assert ends.tolist() == [EOF_ID, EOF_ID]  # cuts fall right after a frame's <eof>
    assert [c.tolist() for c in frame_codes(g.tokens, g.vision_mask)] == [c.tolist() for c in codes]


def test_chat_puts_loss_on_answers_and_the_final_eos(tok):
    b = VideoExampleBuilder(tok, VideoTemplates())
    codes = _codes(2, seed=1)
    turns = [["What moves?", "A red bus."], ["Where?", "On a bridge."]]
    ex = b.build("chat", codes, turns=turns)
    field, mask = vision_field(codes, tok)
    ids = tok.encode_batch
    pre, q1, asst, a1, user, q2, a2 = ids(["You are a helpful assistant. USER:", "What moves?", "ASSISTANT:",
                                           "A red bus.", "USER:", "Where?", "On a bridge."])
    expected = [tok.bos_id, *pre, *field, *q1, *asst, *a1, *user, *q2, *asst, *a2, tok.eos_id]
    assert ex.tokens.tolist() == expected
    after = len(expected) - 1 - len(pre) - len(field)
    assert ex.vision_mask.tolist() == [False] * (1 + len(pre)) + mask.tolist() + [False] * after
    weighted = [int(t) for t, w in zip(ex.tokens, ex.loss_weights, strict=True) if w]
    assert weighted == [*a1, *a2, tok.eos_id] and set(ex.loss_weights.tolist()) == {0.0, 1.0}  # as LWM trains it
    untrained = VideoExampleBuilder(tok, VideoTemplates(final_eos_loss=False)).build("chat", codes, turns=turns)
    assert untrained.loss_weights[-1] == 0 and np.array_equal(untrained.loss_weights[:-1], ex.loss_weights[:-1])
    v0 = 1 + len(pre)
    v1 = v0 + len(field)
    turn1 = v1 + len(q1) + len(asst) + len(a1)
    assert ex.atomic_spans[-2:] == ((v1, turn1), (turn1, len(expected) - 1))
    cut = v1 - 257 - len(tok.encode("</vision>"))  # between the two frames
    assert ex.atomic_spans[:2] == ((v0, cut), (cut, v1)) and ex.tokens[cut - 1] == EOF_ID


def test_a_long_video_is_cut_only_between_frames(tok):
    ex = VideoExampleBuilder(tok, VideoTemplates()).build("understanding", _codes(20), caption="a long clip")
    n = len(ex.tokens)
    pieces, stats = cut_document(0, n, 1000, ex.atomic_spans, "split")
    assert stats.documents_split == 1 and sum(p.length for p in pieces) == n
    starts = {a for a, _ in ex.atomic_spans}
    cuts = [p.offset for p in pieces[1:]]
    assert cuts and all(c in starts for c in cuts)
    for p in pieces:  # every piece holds whole frames: each vision run ends with <eof> or <eov>
        tokens = ex.tokens[p.offset : p.offset + p.length]
        for a, b in vision_runs(ex.vision_mask[p.offset : p.offset + p.length]):
            assert (b - a) % 257 == 0 and tokens[b - 1] in (EOF_ID, EOV_ID)
    too_short, s = cut_document(0, n, 200, ex.atomic_spans, "split")
    assert too_short == [] and s.dropped[0][1] == "atomic_span_too_long"  # a frame never fits in 200


def test_kinds_and_templates(tok):
    assert video_kind("k", True, 0, 1.0) == "chat"
    kinds = {video_kind(f"k{i}", False, 0, 0.5) for i in range(40)}
    assert kinds == {"understanding", "generation"}
    t = VideoTemplates.preset("lwm_chat")
    ex = VideoExampleBuilder(tok, t).build("understanding", _codes(1), caption="x")
    prompt = tok.encode("You are a helpful assistant. USER: Describe the video.\n")
    assert ex.tokens[1 : 1 + len(prompt)].tolist() == prompt
    with pytest.raises(ValueError, match="first_turn"):
        VideoTemplates(first_turn="USER:{question}ASSISTANT:{answer}")
    with pytest.raises(ValueError, match="understanding"):
        VideoTemplates(understanding="{caption}{vision}")
    with pytest.raises(ValueError, match="not one of"):
        VideoTemplates.preset("nope")
    with pytest.raises(ValueError, match="needs at least one"):
        VideoExampleBuilder(tok, t).build("chat", _codes(1), turns=[])


def test_frame_spans():
    assert frame_spans(1, 2, 2, 2) == [(1, 260), (260, 519)]
    assert frame_spans(0, 1, 3, 4) == [(0, 264)]
    with pytest.raises(ValueError):
        frame_spans(0, 0, 1, 1)
