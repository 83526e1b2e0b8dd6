"""Assembling contexts: lengths, chat layout, loss on answers only, atomic turns, evidence and depth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from lwmkit.pipelines.qa.assembly import CONTEXT_PRESETS, ContextBuilder, ContextOptions, parse_turn
from lwmkit.pipelines.qa.chunks import Chunk, chunk_text
from lwmkit.pipelines.qa.generators import QAPair
from lwmkit.tokenizers import SentencePieceTokenizer

from .helpers import book


class WordTok:
    """One token per word (ids from a growing vocabulary), BOS 1, EOS 2."""

    bos_id, eos_id = 1, 2

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def encode_batch(self, texts):
        return [[self.vocab.setdefault(w, len(self.vocab) + 3) for w in t.split()] for t in texts]


def word_chunk(tok: WordTok, index: int, n: int) -> Chunk:
    text = " ".join(f"c{index}w{i}" for i in range(n))
    return Chunk(f"b-{index:05d}", 9, index, 0, len(text), text, np.asarray(tok.encode_batch([text])[0], np.int32))


def test_the_docstring_example():
    tok = WordTok()
    opts = ContextOptions(
        seq_len=64,
        chunk_tokens=16,
        min_fill=0.5,
        first_turn="S1 S2{context}Q1 Q2{question}A1 A2{answer}E1 E2",
        next_turn="U1 U2{question}B1 B2{answer}F1 F2",
        order="chunk",
    )
    chunks = [word_chunk(tok, 0, 14), word_chunk(tok, 1, 16), word_chunk(tok, 2, 15)]
    pairs = [[QAPair("q a one", "x y")], [QAPair("q b one", "z w")], []]
    made = ContextBuilder(tok, opts).build(9, chunks, pairs)
    assert len(made.contexts) == 1
    ctx = made.contexts[0]
    assert ctx.chunk_ids == ("b-00000", "b-00001") and ctx.tokens.shape == (56,)
    assert (made.unused_chunks, made.unused_tokens, made.without_questions) == (1, 15, [])
    v = tok.vocab
    words = (
        ["S1", "S2"]
        + chunks[0].text.split()
        + chunks[1].text.split()
        + [
            "Q1",
            "Q2",
            "q",
            "a",
            "one",
            "A1",
            "A2",
            "x",
            "y",
            "E1",
            "E2",
            "U1",
            "U2",
            "q",
            "b",
            "one",
            "B1",
            "B2",
            "z",
            "w",
            "F1",
            "F2",
        ]
    )
    assert ctx.tokens.tolist() == [1] + [v[w] for w in words] + [2]
    assert np.flatnonzero(ctx.loss_weights).tolist() == [40, 41, 51, 52, 55]  # x y, z w, EOS
    quiet = ContextBuilder(tok, dataclasses.replace(opts, final_eos_loss=False)).build(9, chunks, pairs).contexts[0]
    assert np.flatnonzero(quiet.loss_weights).tolist() == [40, 41, 51, 52]  # the older layout, on request
    assert ctx.atomic_spans == ((33, 44), (44, 55))
    assert [(t["chunk_id"], t["evidence"], t["question"], t["answer"], t["distance"]) for t in ctx.turns] == [
        ("b-00000", [3, 17], 35, [40, 42], 18),
        ("b-00001", [17, 33], 46, [51, 53], 13),
    ]


@pytest.fixture(scope="module")
def tok(bpe_model) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.from_file(bpe_model)


@pytest.fixture(scope="module")
def material(tok):
    text = book(21, 60)
    chunks = chunk_text(text, 21, tok, 100)
    # Every chunk gets a pair made of its own words, except every seventh, which gets none.
    pairs = [
        [] if i % 7 == 3 else [QAPair(f"What does chunk {i} open with?", " ".join(c.text.split()[:3]))]
        for i, c in enumerate(chunks)
    ]
    return chunks, pairs


def check_context(ctx, chunks, pairs, tok, opts):
    """Every property a context must have; returns the chunk indices it holds."""
    t = ctx.tokens
    assert opts.min_fill * opts.seq_len <= t.shape[0] <= opts.seq_len
    assert t[0] == tok.bos_id and t[-1] == tok.eos_id
    idx = [int(c.rsplit("-", 1)[1]) for c in ctx.chunk_ids]
    assert idx == list(range(idx[0], idx[-1] + 1))  # consecutive chunks of the book
    prefix = tok.encode("You are a helpful assistant. USER:")
    assert t[1 : 1 + len(prefix)].tolist() == prefix
    expected_weights = np.zeros_like(ctx.loss_weights)
    want = {(chunks[i].chunk_id, p.question) for i in idx for p in pairs[i]}
    assert {(turn["chunk_id"], turn["question_text"]) for turn in ctx.turns} == want
    for turn, (s, e) in zip(ctx.turns, ctx.atomic_spans, strict=True):
        i = int(turn["chunk_id"].rsplit("-", 1)[1])
        ev0, ev1 = turn["evidence"]
        np.testing.assert_array_equal(t[ev0:ev1], chunks[i].tokens)  # the source chunk lies inside the context
        q = tok.encode(turn["question_text"])
        assert t[turn["question"] : turn["question"] + len(q)].tolist() == q
        a0, a1 = turn["answer"]
        assert t[a0:a1].tolist() == tok.encode(turn["answer_text"])
        expected_weights[a0:a1] = 1.0
        assert s <= turn["question"] < a0 < a1 <= e and ev1 <= s
        assert turn["distance"] == turn["question"] - ev1 >= 0
    expected_weights[-1] = 1.0  # the EOS after the last answer, as LWM trains it
    np.testing.assert_array_equal(ctx.loss_weights, expected_weights)  # loss on answers and EOS, nowhere else
    assert ctx.prefix == 1 + len(prefix)  # BOS and the template text before the context
    spans = list(ctx.atomic_spans)
    assert spans == sorted(spans) and all(a < b <= c for (a, b), (c, _) in zip(spans, spans[1:], strict=False))
    last_chunk_end = max(turn["evidence"][1] for turn in ctx.turns)
    assert spans[0][0] >= last_chunk_end and spans[-1][1] == t.shape[0] - 1  # turns follow the context, EOS last
    return idx


@pytest.mark.parametrize("seq_len", [1024, 2048])
def test_contexts_fill_their_length_and_hold_their_evidence(material, tok, seq_len):
    chunks, pairs = material
    opts = ContextOptions(seq_len=seq_len, chunk_tokens=100, min_fill=0.85)
    builder = ContextBuilder(tok, opts)
    made = builder.build(21, chunks, pairs)
    assert len(made.contexts) >= 2
    used = []
    for ctx in made.contexts:
        used += check_context(ctx, chunks, pairs, tok, opts)
    assert used == list(range(len(used)))  # contexts tile the book from its start
    assert made.unused_chunks == len(chunks) - len(used)
    # Greedy: each context closed because its next chunk (with that chunk's turns) did not fit.
    for ctx, nxt in zip(made.contexts, made.contexts[1:], strict=False):
        more = [chunks[int(c.rsplit("-", 1)[1])] for c in ctx.chunk_ids + (nxt.chunk_ids[0],)]
        qa = [p for c in more for p in pairs[c.index]]
        qa_tokens = sum(len(tok.encode(p.question)) + len(tok.encode(p.answer)) for p in qa)
        breaks = len(builder.paragraph_break()) * sum(c.starts_paragraph for c in more[1:])
        assert builder._length(sum(c.tokens.shape[0] for c in more) + breaks, len(qa), qa_tokens) > seq_len
    assert len({c.doc_id for c in made.contexts}) == len(made.contexts)


def test_turn_order_is_seeded_shuffle_or_chunk_order(material, tok):
    chunks, pairs = material
    by_chunk = ContextBuilder(tok, ContextOptions(seq_len=2048, chunk_tokens=100, order="chunk")).build(
        21, chunks, pairs
    )
    shuffled = ContextBuilder(tok, ContextOptions(seq_len=2048, chunk_tokens=100)).build(21, chunks, pairs)
    again = ContextBuilder(tok, ContextOptions(seq_len=2048, chunk_tokens=100)).build(21, chunks, pairs)
    reseeded = ContextBuilder(tok, ContextOptions(seq_len=2048, chunk_tokens=100, seed=1)).build(21, chunks, pairs)
    order = [[t["chunk_id"] for t in c.turns] for c in by_chunk.contexts]
    assert all(o == sorted(o) for o in order)
    shuffled_order = [[t["chunk_id"] for t in c.turns] for c in shuffled.contexts]
    assert shuffled_order != order and [sorted(o) for o in shuffled_order] == order
    assert shuffled_order == [[t["chunk_id"] for t in c.turns] for c in again.contexts]
    assert shuffled_order != [[t["chunk_id"] for t in c.turns] for c in reseeded.contexts]
    for a, b in zip(by_chunk.contexts, shuffled.contexts, strict=True):
        assert a.tokens.shape == b.tokens.shape  # the length does not depend on the order


def test_contexts_without_questions_are_reported(tok, material):
    chunks, _ = material
    made = ContextBuilder(tok, ContextOptions(seq_len=1024, chunk_tokens=100)).build(21, chunks, [[] for _ in chunks])
    assert made.contexts == [] and len(made.without_questions) >= 2
    assert made.unused_chunks == len(chunks)
    first, last = made.without_questions[0]
    assert first == chunks[0].chunk_id and last < made.without_questions[1][0]


def test_a_short_book_makes_no_context(tok):
    chunks = chunk_text(book(3, 3), 3, tok, 100)
    made = ContextBuilder(tok, ContextOptions(seq_len=2048, chunk_tokens=100)).build(
        3, chunks, [[QAPair("q?", "a")]] * len(chunks)
    )
    assert made.contexts == [] and made.without_questions == [] and made.unused_chunks == len(chunks)


def test_templates_parse_and_are_checked():
    assert parse_turn(
        "You are a helpful assistant. USER:{context}{question}ASSISTANT:{answer}",
        "t",
        ("context", "question", "answer"),
    ) == ("You are a helpful assistant. USER:", "", "ASSISTANT:", "")
    assert parse_turn("{{x}} {question}:{answer}!", "t", ("question", "answer")) == ("{x} ", ":", "!")
    for bad, match in [
        ("{question}{answer}", "context"),
        ("{context}{answer}{question}", "order"),
        ("{context}{question}{answer}{extra}", "unknown"),
        ("{context}{question}{answer:>3}", "unknown"),
        ("{context", "literal braces"),
    ]:
        with pytest.raises(ValueError, match=match):
            ContextOptions(first_turn=bad)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(seq_len=32), "seq_len"),
        (dict(seq_len=4096, chunk_tokens=2000), "chunk_tokens"),
        (dict(min_fill=0), "min_fill"),
        (dict(order="random"), "order"),
        (dict(next_turn="{answer}"), "next_turn"),
    ],
)
def test_bad_context_options_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        ContextOptions(**kw)


def test_presets():
    assert ContextOptions.preset("lwm-128k").seq_len == 131072
    assert ContextOptions.preset("tiny", min_fill=0.5) == ContextOptions(seq_len=2048, chunk_tokens=100, min_fill=0.5)
    assert set(CONTEXT_PRESETS) == {"lwm-32k", "lwm-128k", "tiny"}
    with pytest.raises(ValueError, match="lwm-32k"):
        ContextOptions.preset("huge")


def test_paragraph_breaks_are_kept_where_chunks_join(tok):
    text = book(31, 40)
    chunks = chunk_text(text, 5, tok, 100)
    joins = [c.starts_paragraph for c in chunks[1:]]
    assert any(joins) and not all(joins)  # both kinds of join occur
    for prev, c in zip(chunks, chunks[1:], strict=False):  # the flag says what lies between the spans
        assert c.starts_paragraph == ("\n\n" in text[prev.end : c.start].replace(" ", ""))
    pairs = [[QAPair("Which words open it?", c.text.split()[0])] for c in chunks]
    builder = ContextBuilder(tok, ContextOptions(seq_len=2048, chunk_tokens=100, min_fill=0.5, order="chunk"))
    assert tok.decode(builder.paragraph_break()) == "\n\n"
    made = builder.build(5, chunks, pairs)
    assert made.contexts
    for ctx in made.contexts:
        ev = [t["evidence"] for t in ctx.turns]
        ids = [int(c.rsplit("-", 1)[1]) for c in ctx.chunk_ids]
        for (a0, a1), (b0, _), i in zip(ev, ev[1:], ids[1:], strict=False):
            between = ctx.tokens[a1:b0].tolist()  # what lies between two chunks' evidence spans
            assert between == (builder.paragraph_break() if chunks[i].starts_paragraph else [])
        body = tok.decode(ctx.tokens[ev[0][0] : ev[-1][1]].tolist())
        first, last = chunks[ids[0]], chunks[ids[-1]]
        want = text[first.start : last.end]
        assert body.count("\n\n") == want.count("\n\n") > 0  # every paragraph break of the book is there
