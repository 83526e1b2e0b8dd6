"""The SentencePiece text tokenizer and `train_bpe` (LLaMA-2's layout: <unk>=0, <s>=1, </s>=2)."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lwmkit.tokenizers import SentencePieceTokenizer, TokenizerError, train_bpe

from ..conftest import TINY_VOCAB, tiny_training_lines

# Every code point except surrogates (not encodable as UTF-8) and U+2581, SentencePiece's own
# whitespace marker "▁" (see test_lower_one_eighth_block_round_trips).
ANY_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581"), max_size=80
)
MIXED = "emoji 😀🎉👩‍🔬, CJK 漢字かな한국어, Ελληνικά, עברית, math ∮ ∂x, nul\x00 and tab\t\nnewline"


@pytest.fixture(scope="module")
def tok(bpe_model) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.from_file(bpe_model)


def test_special_ids_follow_llama(tok):
    assert tok.vocab_size == TINY_VOCAB
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, -1)
    assert [tok.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]


def test_has_all_256_byte_pieces(tok):
    assert [tok.id_to_piece(3 + b) for b in range(256)] == [f"<0x{b:02X}>" for b in range(256)]


def test_unseen_unicode_round_trips_through_byte_fallback(tok):
    ids = tok.encode(MIXED)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == MIXED
    # The emoji never occur in the training text, so they can only be byte pieces.
    emoji_ids = tok.encode("😀")
    assert [tok.id_to_piece(i) for i in emoji_ids][-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]


@settings(max_examples=150, deadline=None)
@given(text=ANY_TEXT)
def test_any_text_round_trips_without_unk(tok, text):
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_lower_one_eighth_block_decodes_as_a_space_as_documented(tok):
    # SentencePiece's own space marker is the one exception to the round trip (train_bpe says so).
    assert tok.decode(tok.encode("a\u2581b")) == "a b"


def test_encode_document_layout(tok):
    text = "Ada opened the quiet letter near the harbour."
    doc = tok.encode_document(text)
    assert doc.dtype == np.int32
    assert doc[0] == tok.bos_id and doc[-1] == tok.eos_id
    assert doc[1:-1].tolist() == tok.encode(text)
    assert tok.bos_id not in doc[1:-1] and tok.eos_id not in doc[1:-1]
    assert tok.encode_document("").tolist() == [tok.bos_id, tok.eos_id]


def test_encode_batch_matches_encode(tok):
    texts = ["one", "", MIXED, "Chapter 1\n\nThe Golden Map"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_fingerprint_identifies_the_model(tok, bpe_model):
    with open(bpe_model, "rb") as f:
        data = f.read()
    assert tok.model_proto == data
    assert tok.fingerprint() == {
        "type": "sentencepiece",
        "sha256": hashlib.sha256(data).hexdigest(),
        "vocab_size": TINY_VOCAB,
        "bos_id": 1,
        "eos_id": 2,
        "unk_id": 0,
        "pad_id": -1,
    }
    assert SentencePieceTokenizer(data).fingerprint() == tok.fingerprint()  # content, not path


def test_pickles_without_the_processor(tok):
    tok.encode("warm the processor up")
    assert tok._sp is not None
    blob = pickle.dumps(tok)
    assert len(blob) < len(tok.model_proto) + 1024  # the model bytes and a few names, no processor
    clone = pickle.loads(blob)
    assert clone._sp is None  # rebuilt lazily where it is used
    assert clone.name == tok.name
    assert clone.encode(MIXED) == tok.encode(MIXED)
    assert clone.encode_document("x").tolist() == tok.encode_document("x").tolist()
    assert clone.fingerprint() == tok.fingerprint()


def test_non_model_file_raises_naming_the_path(tmp_path):
    path = tmp_path / "not-a-model.model"
    path.write_bytes(b"this is plain text, not a serialized ModelProto\n")
    with pytest.raises(TokenizerError, match="not a SentencePiece model") as e:
        SentencePieceTokenizer.from_file(str(path))
    assert str(path) in str(e.value)


def test_missing_file_raises_naming_the_path(tmp_path):
    path = tmp_path / "missing.model"
    with pytest.raises(TokenizerError, match="cannot read") as e:
        SentencePieceTokenizer.from_file(str(path))
    assert str(path) in str(e.value)


def test_tokenizer_error_is_a_value_error():
    with pytest.raises(ValueError, match="custom-name"):
        SentencePieceTokenizer(b"\x00\x01garbage", name="custom-name")


def test_training_is_deterministic(bpe_model):
    again = train_bpe(tiny_training_lines(), vocab_size=TINY_VOCAB, seed=0)
    with open(bpe_model, "rb") as f:
        assert again == f.read()
    assert train_bpe(iter(tiny_training_lines()), vocab_size=TINY_VOCAB, seed=0) == again  # any iterable


def test_trained_model_has_the_requested_size():
    model = train_bpe(tiny_training_lines(books=4), vocab_size=400, seed=1)
    tok = SentencePieceTokenizer(model)
    assert tok.vocab_size == 400
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)


@pytest.mark.parametrize("vocab_size", [0, 259, 299])
def test_too_small_vocab_raises(vocab_size):
    with pytest.raises(ValueError, match="vocab_size must be >= 300"):
        train_bpe(tiny_training_lines(books=2), vocab_size=vocab_size)


@pytest.mark.parametrize("sentences", [[], ["", "   ", "\n", "\t"]], ids=["nothing", "blank-lines"])
def test_empty_input_raises(sentences):
    with pytest.raises(ValueError, match="no training text"):
        train_bpe(sentences, vocab_size=500)


def test_vocab_larger_than_the_text_allows_raises_tokenizer_error():
    with pytest.raises(TokenizerError, match="SentencePiece training failed"):
        train_bpe(["hello world"] * 10, vocab_size=5000)
