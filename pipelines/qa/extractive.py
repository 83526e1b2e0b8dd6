"""The extractive QA generator: questions built by rule from a chunk's own sentences, with no model.

It exists so that the QA pipeline, its demo and its tests run without a model server; its pairs
are answerable from the chunk by construction, but they are templated and far easier than a
model's, and the manifest labels them `generator: {"kind": "extractive", ...}`. Question forms:

    cloze          Fill in the blank with the word from the passage: "Ada found the ____ key."  -> silver
                   (a long sentence is shown as an excerpt of about max_sentence_chars around the blank)
    next_sentence  In the passage, which sentence comes right after "Ada left."?  -> the next sentence
    quote          According to the passage, what did Ada say?  -> the words Ada said (only when the
                   chunk quotes that speaker exactly once, as `"...," said Ada` or `Ada said, "..."`)

The choice of form and of sentence is seeded by (seed, chunk sha256, attempt): the same chunk always
gets the same pairs, on any machine and in any order. Whitespace in questions and answers is
collapsed to single spaces; every answer occurs in the chunk (ignoring case and whitespace).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from typing import Any

from lwmkit.pipelines.engine.job_options import check_ranges
from lwmkit.pipelines.qa.chunks import Chunk, sentence_units
from lwmkit.pipelines.qa.generators import (
    QAPair,
    Reply,
    collapse_space,
    parse_pairs,
    validate_pairs,
)

FORMS = ("cloze", "next_sentence", "quote")
LABEL = "rule-based questions from the chunk's own sentences; no language model"
_CLOZE_WORD = re.compile(r"\b(?:[A-Za-z][A-Za-z'-]{3,}[A-Za-z]|\d{2,})\b")
_QUOTE_THEN_SPEAKER = re.compile(r"[\"“]([^\"“”]{8,300}?)[\"”],?\s+said\s+([A-Z][a-z]+)\b")
_SPEAKER_THEN_QUOTE = re.compile(r"\b([A-Z][a-z]+)\s+said,?\s+[\"“]([^\"“”]{8,300}?)[\"”]")
_STOPWORDS = frozenset(
    "about after again also because been before being between both could does doing down during each from "
    "further have having here into itself just more most only other ought over same shall should some such "
    "than that their theirs them then there these they this those through under until upon very were what "
    "when where which while whom will with would your unto thee thou thy".split()
)


@dataclass(frozen=True)
class ExtractiveOptions:
    """Settings of the extractive generator.

    Attributes:
      seed: seeds every choice (with the chunk's hash and the attempt).
      forms: question forms to draw from (see the module docstring).
      pairs_per_chunk: pairs made per chunk (fewer if the chunk has too few sentences).
      max_sentence_chars: longest sentence used in a question or answer.
    """

    seed: int = 0
    forms: tuple[str, ...] = FORMS
    pairs_per_chunk: int = 1
    max_sentence_chars: int = 300

    def __post_init__(self):
        if not self.forms or any(f not in FORMS for f in self.forms) or len(set(self.forms)) != len(self.forms):
            raise ValueError(f"forms: {self.forms!r} must be distinct names from {list(FORMS)}")
        check_ranges(self, pairs_per_chunk="1..64", max_sentence_chars="20..10000")


def _sentences(text: str) -> list[str]:
    return [collapse_space(text[a:b]) for a, b, _ in sentence_units(text)]


def _cloze(sentences: list[str], max_chars: int) -> list[tuple[str, str]]:
    """Blanks out one word; a long sentence is shown as an excerpt of about max_chars around the blank."""
    out = []
    half = max_chars // 2
    for s in sentences:
        if len(s.split()) < 5:
            continue
        for m in _CLOZE_WORD.finditer(s):
            if m.group().lower() in _STOPWORDS:
                continue
            a, b = max(0, m.start() - half), min(len(s), m.end() + half)
            if a > 0:
                a = s.find(" ", a, m.start()) + 1 or m.start()
            if b < len(s):
                b = max(s.rfind(" ", m.end(), b), m.end())
            excerpt = ("..." if a else "") + s[a : m.start()] + "____" + s[m.end() : b] + ("..." if b < len(s) else "")
            out.append((f'Fill in the blank with the word from the passage: "{excerpt}"', m.group()))
    return out


def _next_sentence(sentences: list[str], max_chars: int) -> list[tuple[str, str]]:
    out = []
    for a, b in zip(sentences, sentences[1:], strict=False):
        if 3 <= len(a.split()) and len(a) <= max_chars and 2 <= len(b.split()) and len(b) <= max_chars and a != b:
            if sentences.count(a) == 1:  # the question must point at one place
                out.append((f'In the passage, which sentence comes right after "{a}"?', b))
    return out


def _quote(text: str) -> list[tuple[str, str]]:
    flat = collapse_space(text)
    said: dict[str, list[str]] = {}
    for m in _QUOTE_THEN_SPEAKER.finditer(flat):
        said.setdefault(m.group(2), []).append(m.group(1))
    for m in _SPEAKER_THEN_QUOTE.finditer(flat):
        said.setdefault(m.group(1), []).append(m.group(2))
    out = []
    for speaker, quotes in sorted(said.items()):
        words = quotes[0].strip().rstrip(",;:").strip()
        if len(set(quotes)) == 1 and len(words.split()) >= 2:
            out.append((f"According to the passage, what did {speaker} say?", words))
    return out


class ExtractiveGenerator:
    """Makes QA pairs from a chunk's sentences; see the module docstring."""

    def __init__(self, options: ExtractiveOptions | None = None):
        self.options = options or ExtractiveOptions()

    @property
    def concurrency(self) -> int:
        return 1

    def describe(self) -> dict[str, Any]:
        o = asdict(self.options)
        o["forms"] = list(self.options.forms)
        return {"kind": "extractive", "label": LABEL, **o}

    def cache_identity(self) -> None:
        return None  # free and deterministic: nothing to save by caching

    def candidates(self, chunk: Chunk) -> dict[str, list[tuple[str, str]]]:
        """Every (question, answer) each form can make of the chunk."""
        o = self.options
        sentences = _sentences(chunk.text)
        makers = {
            "cloze": lambda: _cloze(sentences, o.max_sentence_chars),
            "next_sentence": lambda: _next_sentence(sentences, o.max_sentence_chars),
            "quote": lambda: _quote(chunk.text),
        }
        return {f: makers[f]() for f in o.forms}

    def pairs(self, chunk: Chunk, attempt: int = 0) -> list[QAPair]:
        """The chunk's pairs for this attempt (seeded; see the module docstring)."""
        digest = hashlib.sha256(f"{self.options.seed}\0{chunk.sha256}\0{attempt}".encode()).digest()
        rng = random.Random(digest)
        pools = {f: c for f, c in self.candidates(chunk).items() if c}
        out: list[QAPair] = []
        while pools and len(out) < self.options.pairs_per_chunk:
            form = rng.choice(sorted(pools))
            q, a = pools[form].pop(rng.randrange(len(pools[form])))
            if not pools[form]:
                del pools[form]
            if q not in {p.question for p in out}:
                out.append(QAPair(q, a))
        return out

    def reply(self, chunk: Chunk, attempt: int) -> Reply:
        body = json.dumps([asdict(p) for p in self.pairs(chunk, attempt)], ensure_ascii=False)
        return Reply(body, {}, 0, 0.0)

    def parse(self, reply: Reply, chunk: Chunk) -> list[QAPair]:
        return validate_pairs(
            parse_pairs(reply.body),
            chunk.text,
            support="exact",
            min_support=1.0,
            max_chars=4 * self.options.max_sentence_chars,
            limit=self.options.pairs_per_chunk,
        )
