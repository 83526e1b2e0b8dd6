"""Fixtures for the needle tests: the tiny SentencePiece model, generated haystack files, and a
non-SentencePiece tokenizer whose merges cross the spaces between sentences."""

from __future__ import annotations

import json
import random

import pytest
import zstandard


@pytest.fixture(scope="session")
def tok(bpe_model):
    from lwmkit.tokenizers.text import SentencePieceTokenizer

    return SentencePieceTokenizer.from_file(bpe_model)


@pytest.fixture(scope="session")
def haystack_paths(tmp_path_factory) -> tuple[str, ...]:
    """A .txt, a .jsonl and a .jsonl.zst of generated prose (about 40K tiny-model tokens in all)."""
    from lwmkit.pipelines.tools.sample_corpus import sample_book

    d = tmp_path_factory.mktemp("haystack")
    books = [sample_book(random.Random(100 + i), 14) for i in range(6)]
    (d / "book.txt").write_text(books[0], encoding="utf-8")
    (d / "books.jsonl").write_text("".join(json.dumps({"text": b}) + "\n" for b in books[1:3]), encoding="utf-8")
    raw = "".join(json.dumps({"text": b, "id": i}) + "\n" for i, b in enumerate(books[3:])).encode()
    (d / "books.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    return (str(d / "book.txt"), str(d / "books.jsonl"), str(d / "books.jsonl.zst"))


@pytest.fixture(scope="session")
def hay(haystack_paths):
    from lwmkit.eval.haystack import Haystack, HaystackSpec

    return Haystack.load(HaystackSpec(haystack_paths, seed=0), cache=False)


class CrossingTokenizer:
    """Greedy longest match over characters plus merges that cross sentence boundaries (". T"),
    so a sentence's count alone differs from its count in context: the fit must correct itself."""

    MERGES = sorted([". T", ". B", ". I", ". N", "e ", " t", "th", "he", "d. ", "ed", "ing", "s, "], key=len)[::-1]

    def encode_batch(self, texts):
        out = []
        for t in texts:
            i, ids = 0, []
            while i < len(t):
                for j, m in enumerate(self.MERGES):
                    if t.startswith(m, i):
                        ids.append(0x110000 + j)
                        i += len(m)
                        break
                else:
                    ids.append(ord(t[i]))
                    i += 1
            out.append(ids)
        return out

    def decode(self, ids):
        return "".join(chr(i) if i < 0x110000 else self.MERGES[i - 0x110000] for i in ids)


@pytest.fixture(scope="session")
def crossing_tokenizer():
    return CrossingTokenizer()
