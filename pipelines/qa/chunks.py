"""Cutting a book into chunks of about N tokens at sentence or paragraph boundaries, with stable ids.

A book's text is split into units (sentences, found inside paragraphs; a sentence longer than a
chunk is cut at line breaks or spaces), each unit is counted in tokens, and consecutive units are
gathered greedily until the next one would pass `chunk_tokens`. A paragraph break ends a chunk
early once it holds 80% of its budget, so chunks prefer to end where a paragraph ends. A chunk is
the exact text span `text[start:end]` (whitespace between chunks belongs to neither) and its
tokens are that span encoded on its own, without BOS/EOS.

A chunk that starts a paragraph says so (`starts_paragraph`), so contexts put the paragraph break
back where chunks join. A book's last chunk, if it would hold less than a fifth of `chunk_tokens`
(a closing "Finis."), joins the chunk before it instead of standing alone with too little text to
ask about.

The chunk id `<book id as 16 hex digits>-<index as 5 digits>` depends only on the book's content
and the chunk index, and the chunk's `sha256` on its text alone: the generator cache is keyed by it.

Example, chunk_tokens 8, a book "A b c. D e f.\\n\\nG h i j k l m n o." (one token per word):
    units   "A b c." (3), "D e f." (3), "G h i j k l m n o." (9, cut into two halves)
    chunks  "A b c. D e f." (6 tokens), "G h i j k" (5), "l m n o." (4)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from lwmkit.tokenizers.text import TextTokenizer

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s+[^a-z\s])")  # not before a lowercase word
_PARAGRAPH_CLOSE = 0.8  # at a paragraph break, a chunk this full (of chunk_tokens) ends
_TINY_TAIL = 0.2  # a last chunk below this share of chunk_tokens joins the one before it


@dataclass(frozen=True, eq=False)
class Chunk:
    """One chunk of a book.

    Attributes:
      chunk_id: `<book_id:016x>-<index:05d>`, stable for the same book text and chunk size.
      book_id: the book's document id (content hash of its normalized text).
      index: position of the chunk in the book, from 0.
      start, end: the chunk's character span in the book text.
      text: `book_text[start:end]`.
      tokens: int32 [n], the text encoded on its own (no BOS/EOS).
      starts_paragraph: the text before the chunk ends a paragraph (a blank line between them).
    """

    chunk_id: str
    book_id: int
    index: int
    start: int
    end: int
    text: str
    tokens: np.ndarray = field(repr=False)
    starts_paragraph: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def to_json(self) -> dict:
        """A plain dict (for Beam elements and caches); `from_json` reverses it."""
        return {
            "chunk_id": self.chunk_id,
            "book_id": self.book_id,
            "index": self.index,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "tokens": self.tokens.astype("<i4").tobytes(),
            "starts_paragraph": self.starts_paragraph,
        }

    @classmethod
    def from_json(cls, d: dict) -> Chunk:
        return cls(
            d["chunk_id"],
            d["book_id"],
            d["index"],
            d["start"],
            d["end"],
            d["text"],
            np.frombuffer(d["tokens"], dtype="<i4").astype(np.int32),
            bool(d.get("starts_paragraph", False)),
        )


def chunk_id(book_id: int, index: int) -> str:
    return f"{book_id:016x}-{index:05d}"


def _paragraphs(text: str) -> list[tuple[int, int]]:
    """Spans of the paragraphs (runs of text between blank lines), without surrounding whitespace."""
    spans, start = [], 0
    for m in _PARAGRAPH_BREAK.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    out = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            out.append((a, b))
    return out


def sentence_units(text: str) -> list[tuple[int, int, bool]]:
    """(start, end, starts_paragraph) of every sentence, in order; whitespace between them is left out."""
    units = []
    for pa, pb in _paragraphs(text):
        start, first = pa, True
        for m in _SENTENCE_END.finditer(text, pa, pb):
            units.append((start, m.end(), first))
            first = False
            start = m.end()
            while start < pb and text[start].isspace():
                start += 1
        if start < pb:
            units.append((start, pb, first))
    return units


def _cut_long(text: str, a: int, b: int, pieces: int) -> list[tuple[int, int]]:
    """Cuts text[a:b] into about `pieces` spans of equal length, at line breaks or spaces when possible."""
    out, start = [], a
    for k in range(1, pieces):
        target = a + (b - a) * k // pieces
        if target <= start:
            continue
        window = text[start : target + 1]
        cut = max(window.rfind("\n"), window.rfind(" "))
        end = start + cut if cut > (target - start) // 2 else target  # no space near: cut mid-word
        out.append((start, end))
        start = end
        while start < b and text[start].isspace():
            start += 1
    if start < b:
        out.append((start, b))
    return [(x, y) for x, y in out if x < y]


def chunk_text(text: str, book_id: int, tokenizer: TextTokenizer, chunk_tokens: int) -> list[Chunk]:
    """Cuts a book into chunks of at most about `chunk_tokens` tokens; see the module docstring.

    A chunk may pass `chunk_tokens` by a few tokens (units are counted one by one; their joint
    encoding can differ slightly) but never holds two units whose counts alone pass it, except a
    book's last chunk that took in a tiny tail (up to a fifth of `chunk_tokens` more).

    Raises:
      ValueError: if chunk_tokens < 1.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens: {chunk_tokens} must be >= 1")
    units = sentence_units(text)
    if not units:
        return []
    counts = [len(ids) for ids in tokenizer.encode_batch([text[a:b] for a, b, _ in units])]
    fine: list[tuple[int, int, bool, int]] = []
    for (a, b, para), n in zip(units, counts, strict=True):
        if n <= chunk_tokens:
            fine.append((a, b, para, n))
            continue
        parts = _cut_long(text, a, b, -(-n // chunk_tokens))
        sub = [len(ids) for ids in tokenizer.encode_batch([text[x:y] for x, y in parts])]
        fine += [(x, y, para and i == 0, m) for i, ((x, y), m) in enumerate(zip(parts, sub, strict=True))]

    spans: list[tuple[int, int, bool, int]] = []  # start, end, starts a paragraph, tokens (counted by unit)
    start, end, para0, used = fine[0]
    for a, b, para, n in fine[1:]:
        if used + n > chunk_tokens or (para and used >= _PARAGRAPH_CLOSE * chunk_tokens):
            spans.append((start, end, para0, used))
            start, para0, used = a, para, 0
        end = b
        used += n
    if spans and used < _TINY_TAIL * chunk_tokens:  # a tiny last chunk joins the one before it
        start, _, para0, before = spans.pop()
        used += before
    spans.append((start, end, para0, used))
    encoded = tokenizer.encode_batch([text[a:b] for a, b, _, _ in spans])
    return [
        Chunk(chunk_id(book_id, i), book_id, i, a, b, text[a:b], np.asarray(ids, dtype=np.int32), para)
        for i, ((a, b, para, _), ids) in enumerate(zip(spans, encoded, strict=True))
    ]


def total_tokens(chunks: Sequence[Chunk]) -> int:
    return sum(int(c.tokens.shape[0]) for c in chunks)
