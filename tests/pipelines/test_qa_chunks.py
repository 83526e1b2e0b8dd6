"""Chunking books at sentence and paragraph boundaries, with exact spans, tokens and stable ids."""

from __future__ import annotations

import random

import numpy as np
import pytest
from lwmkit.pipelines.qa.chunks import Chunk, chunk_id, chunk_text, sentence_units
from lwmkit.tokenizers import SentencePieceTokenizer

from .helpers import SHARED_DATA, book


class WordTokenizer:
    """One token per whitespace-separated word: makes chunk sizes easy to state exactly."""

    def encode_batch(self, texts):
        return [list(range(len(t.split()))) for t in texts]


@pytest.fixture(scope="module")
def tok(bpe_model) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.from_file(bpe_model)


def test_the_docstring_example():
    text = "A b c. D e f.\n\nG h i j k l m n o."
    chunks = chunk_text(text, 7, WordTokenizer(), 8)
    assert [c.text for c in chunks] == ["A b c. D e f.", "G h i j k", "l m n o."]
    assert [c.chunk_id for c in chunks] == [chunk_id(7, i) for i in range(3)] == [f"{7:016x}-{i:05d}" for i in range(3)]


def test_sentence_units_split_paragraphs_and_sentences():
    text = '  First one. "Second!" he said? Third\n\n\nNew paragraph here.  Last.\n'
    units = [(text[a:b], p) for a, b, p in sentence_units(text)]
    assert units == [
        ("First one.", True),
        ('"Second!" he said?', False),
        ("Third", False),
        ("New paragraph here.", True),
        ("Last.", False),
    ]


def test_chunks_are_exact_spans_with_their_own_tokens(tok):
    text = book(3, 30)
    chunks = chunk_text(text, 99, tok, 100)
    assert len(chunks) > 10
    prev_end = 0
    for i, c in enumerate(chunks):
        assert c.index == i and c.book_id == 99 and c.text == text[c.start : c.end]
        assert c.start >= prev_end and not text[prev_end : c.start].strip()  # only whitespace between chunks
        np.testing.assert_array_equal(c.tokens, tok.encode(c.text))
        prev_end = c.end
    assert not text[prev_end:].strip()


def test_chunks_end_at_sentence_boundaries_and_respect_the_budget(tok):
    text = book(4, 40)
    ends = {b for _, b, _ in sentence_units(text)}
    chunks = chunk_text(text, 1, tok, 120)
    for c in chunks:
        assert c.end in ends, c.text[-40:]
        # sentences of this corpus are far shorter than a chunk, so no unit was cut
        assert c.tokens.shape[0] <= 120 + 4
    sizes = [c.tokens.shape[0] for c in chunks[:-1]]
    assert np.mean(sizes) > 0.6 * 120  # greedy: chunks are well filled


def test_paragraph_breaks_end_a_nearly_full_chunk():
    # Budget 10: "a".."h" (8 words, 80%) then a new paragraph: the chunk ends there, not at 10 words.
    text = "a b c d. e f g h.\n\ni j. k l m n o p."
    chunks = chunk_text(text, 1, WordTokenizer(), 10)
    assert [c.text for c in chunks] == ["a b c d. e f g h.", "i j. k l m n o p."]
    # Below 80% the paragraph break does not end the chunk.
    chunks = chunk_text("a b c. d e f.\n\ng h.", 1, WordTokenizer(), 10)
    assert [c.text for c in chunks] == ["a b c. d e f.\n\ng h."]


def test_a_sentence_longer_than_a_chunk_is_cut_at_spaces():
    words = [f"w{i}" for i in range(25)]
    text = " ".join(words) + "."
    chunks = chunk_text(text, 1, WordTokenizer(), 10)
    assert len(chunks) == 3
    assert " ".join(c.text for c in chunks) == text
    assert all(len(c.text.split()) <= 10 for c in chunks)


def test_ids_are_stable_and_hash_only_the_text(tok):
    text = book(5, 12)
    a = chunk_text(text, 5, tok, 80)
    b = chunk_text(text, 5, tok, 80)
    assert [(c.chunk_id, c.sha256) for c in a] == [(c.chunk_id, c.sha256) for c in b]
    assert len({c.sha256 for c in a}) == len(a)
    moved = chunk_text("Preface.\n\n" + text, 6, tok, 80)
    assert {c.sha256 for c in moved[1:]} & {c.sha256 for c in a}  # same text elsewhere: same hash


def test_chunk_round_trips_through_json(tok):
    c = chunk_text(book(6, 4), 11, tok, 50)[0]
    d = Chunk.from_json(c.to_json())
    assert (d.chunk_id, d.book_id, d.index, d.start, d.end, d.text) == (
        c.chunk_id,
        c.book_id,
        c.index,
        c.start,
        c.end,
        c.text,
    )
    np.testing.assert_array_equal(d.tokens, c.tokens)


def test_empty_and_blank_texts_give_no_chunks(tok):
    assert chunk_text("", 1, tok, 50) == []
    assert chunk_text(" \n\n \t", 1, tok, 50) == []
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunk_text("x", 1, tok, 0)


@pytest.mark.realdata
def test_real_text_chunks_cover_the_text(tok):
    path = SHARED_DATA / "text" / "jargon_file.txt"
    if not path.is_file():
        pytest.skip(f"real sample text not found at {path} (the shared data folder beside the checkout)")
    text = path.read_text(encoding="utf-8")[:60_000]
    chunks = chunk_text(text, 3, tok, 200)
    rng = random.Random(0)
    for c in rng.sample(chunks, 10):
        assert c.text == text[c.start : c.end]
    covered = "".join(c.text for c in chunks)
    assert "".join(covered.split()) == "".join(text.split())  # nothing but whitespace is left out
    assert max(c.tokens.shape[0] for c in chunks) <= 2 * 200


def test_a_tiny_last_chunk_joins_the_one_before_and_paragraph_starts_are_flagged():
    text = "A b c d e f g h.\n\nI j k l m n o p.\n\nFinis."
    chunks = chunk_text(text, 7, WordTokenizer(), 10)
    assert [c.text for c in chunks] == ["A b c d e f g h.", "I j k l m n o p.\n\nFinis."]
    assert [c.starts_paragraph for c in chunks] == [True, True]
    assert Chunk.from_json(chunks[1].to_json()).starts_paragraph is True
    # A last chunk of a fifth of the budget or more stands on its own.
    chunks = chunk_text("A b c d e f g h.\n\nI j k l m n o p.\n\nThe end.", 7, WordTokenizer(), 10)
    assert [c.text for c in chunks][-1] == "The end."
    # Within a paragraph the next chunk does not start one.
    chunks = chunk_text("A b c d e f. G h i j k l.", 7, WordTokenizer(), 8)
    assert [c.starts_paragraph for c in chunks] == [True, False]
