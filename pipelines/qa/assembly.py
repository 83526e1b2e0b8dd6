"""Long-context QA examples: a book's consecutive chunks as one context, followed by chat turns of QA.

Each context is one document of at most `seq_len` tokens, in LWM's chat layout (templates
configurable; each part is tokenized on its own, so write no spaces around placeholders):

    [BOS] You are a helpful assistant. USER: <chunk i> <chunk i+1> ... <chunk j>
          <question 1> ASSISTANT: <answer 1> USER: <question 2> ASSISTANT: <answer 2> ... [EOS]

The first turn comes from `first_turn` (holding `{context}`, `{question}`, `{answer}` in that
order), later ones from `next_turn` (`{question}`, `{answer}`). The pairs are those of every chunk
inside the context, in chunk order or shuffled (seeded per context). Loss weight is 1 on answer
tokens and on the final EOS (as LWM's TextProcessor trains it, so a chat model learns to stop after
its answer; `final_eos_loss=False` gives it 0), and 0 everywhere else (BOS, template text, context,
questions). The example's prefix for packing (`packing.cuts`) is BOS and the first turn's text
before the context. Each QA turn, from the
end of the context (first turn) or the turn's start up to the end of its answer and any text
after it, is an atomic span, so repacking never cuts a turn.

Where a chunk starts a paragraph of the book (`Chunk.starts_paragraph`), the paragraph break's
tokens (the tokenizer's own encoding of a blank line, if it has one) go between it and the chunk
before it in the context, so the context keeps the book's paragraphs; they are context tokens
(loss 0), outside every evidence span.

Chunks are added greedily while the context, with all its turns, fits in `seq_len`; a context
then closes. It is kept when it has at least one question and reaches `min_fill * seq_len`
tokens; a book's short tail (and any context below the fill) is left out and counted. Every turn
records its evidence: the token span of its source chunk, the question's position, and their
distance (question position minus evidence end), which the manifest summarises as depth.

Example, seq_len 64, min_fill 0.5, every literal template part 2 tokens, every pair 3 + 2 tokens,
chunks a (14 tokens, 1 pair), b (16, 1 pair), c (15, no pair):
    [a, b]     BOS/EOS 2 + 2 + chunks 30 + first-turn parts 6 + next-turn parts 6 + pairs 10 = 56 <= 64
    [a, b, c]  71 > 64, so [a, b] is one context of 56 tokens; c alone (19 tokens, no question) is left out
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from lwmkit.packing.records import document_id
from lwmkit.pipelines.engine.job_options import check_choices, check_ranges
from lwmkit.pipelines.qa.chunks import Chunk
from lwmkit.pipelines.qa.generators import QAPair
from lwmkit.tokenizers.text import TextTokenizer

FIRST_TURN = "You are a helpful assistant. USER:{context}{question}ASSISTANT:{answer}"
NEXT_TURN = "USER:{question}ASSISTANT:{answer}"
ORDERS = ("shuffle", "chunk")
CONTEXT_PRESETS: dict[str, dict[str, Any]] = {
    "lwm-32k": {"seq_len": 32768, "chunk_tokens": 1000},
    "lwm-128k": {"seq_len": 131072, "chunk_tokens": 1000},
    "tiny": {"seq_len": 2048, "chunk_tokens": 100},
}


def parse_turn(template: str, name: str, fields: tuple[str, ...]) -> tuple[str, ...]:
    """The literal texts around the fields: len(fields) + 1 strings.

    Raises:
      ValueError: naming the template, if a field is missing, repeated, unknown, formatted or out of order.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"{name} {template!r}: {e} (use {{{{ and }}}} for literal braces)") from e
    literals, found, current = [], [], ""
    for literal, fld, spec, conversion in parsed:
        current += literal
        if fld is None:
            continue
        if fld not in fields or spec or conversion:
            raise ValueError(f"{name} {template!r}: unknown placeholder {{{fld}}}; allowed: {list(fields)}")
        found.append(fld)
        literals.append(current)
        current = ""
    literals.append(current)
    if tuple(found) != fields:
        raise ValueError(
            f"{name} {template!r}: needs {', '.join('{' + f + '}' for f in fields)} once each, in that order"
        )
    return tuple(literals)


@dataclass(frozen=True)
class ContextOptions:
    """How contexts are cut and laid out.

    Attributes:
      seq_len: the target context length in tokens (contexts never pass it).
      chunk_tokens: the chunk size a book is cut into (about; see `qa_chunks`).
      min_fill: a context shorter than min_fill * seq_len is left out.
      first_turn, next_turn: chat templates (see the module docstring).
      order: order of the QA turns: `shuffle` (seeded per context) or `chunk`.
      seed: seeds the shuffle.
      final_eos_loss: train the EOS after the last answer (LWM's layout), or give it weight 0.
    """

    seq_len: int = 32768
    chunk_tokens: int = 1000
    min_fill: float = 0.8
    first_turn: str = FIRST_TURN
    next_turn: str = NEXT_TURN
    order: str = "shuffle"
    seed: int = 0
    final_eos_loss: bool = True

    def __post_init__(self):
        check_ranges(self, seq_len=f"64..{1 << 24}")
        if not 8 <= self.chunk_tokens <= self.seq_len // 4:
            raise ValueError(f"chunk_tokens: {self.chunk_tokens} is outside 8..seq_len/4 ({self.seq_len // 4})")
        check_ranges(self, min_fill="(0, 1]")
        parse_turn(self.first_turn, "first_turn", ("context", "question", "answer"))
        parse_turn(self.next_turn, "next_turn", ("question", "answer"))
        check_choices(self, order=ORDERS)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ContextOptions:
        """A named preset (`lwm-32k`, `lwm-128k`, `tiny`), with fields overridden.

        Raises:
          ValueError: listing the presets.
        """
        if name not in CONTEXT_PRESETS:
            raise ValueError(f"context preset {name!r} is not one of {list(CONTEXT_PRESETS)}")
        return cls(**{**CONTEXT_PRESETS[name], **overrides})


@dataclass(frozen=True, eq=False)
class Context:
    """One assembled context: its arrays and where each turn's evidence and question sit."""

    doc_id: int
    index: int
    chunk_ids: tuple[str, ...]
    tokens: np.ndarray = field(repr=False)  # int32 [n]
    loss_weights: np.ndarray = field(repr=False)  # float32 [n]
    atomic_spans: tuple[tuple[int, int], ...]
    prefix: int  # BOS and the template text before the context
    turns: tuple[dict[str, Any], ...]


@dataclass
class Assembled:
    """A book's contexts, the contexts dropped for having no question, and what was left out."""

    contexts: list[Context] = field(default_factory=list)
    without_questions: list[tuple[str, str]] = field(default_factory=list)  # (first, last chunk id)
    unused_chunks: int = 0
    unused_tokens: int = 0


class ContextBuilder:
    """Builds a book's contexts; holds the tokenizer and the encoded template parts."""

    def __init__(self, tokenizer: TextTokenizer, options: ContextOptions):
        self.tokenizer = tokenizer
        self.options = options
        self._parts: tuple[list[list[int]], list[list[int]]] | None = None
        self._break: list[int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_parts": None, "_break": None}

    def paragraph_break(self) -> list[int]:
        """Token ids of a blank line as it follows text ("x\n\n" less "x"); [] if the tokenizer drops it."""
        if self._break is None:
            x, xb = (list(ids) for ids in self.tokenizer.encode_batch(["x", "x\n\n"]))
            sep = xb[len(x):] if xb[: len(x)] == x else []
            self._break = sep if sep and self.tokenizer.decode(x + sep) == "x\n\n" else []
        return self._break

    def parts(self) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids of the literal parts: first turn (4: before context, before question, before answer,
        after answer) and next turns (3: before question, before answer, after answer)."""
        if self._parts is None:
            first = parse_turn(self.options.first_turn, "first_turn", ("context", "question", "answer"))
            nxt = parse_turn(self.options.next_turn, "next_turn", ("question", "answer"))
            enc = self.tokenizer.encode_batch([t for t in first + nxt])
            ids = [list(x) if t else [] for t, x in zip(first + nxt, enc, strict=True)]
            self._parts = (ids[:4], ids[4:])
        return self._parts

    def _length(self, chunk_tokens: int, pairs: int, qa_tokens: int) -> int:
        first, nxt = self.parts()
        n = 2 + len(first[0]) + chunk_tokens
        if pairs:
            n += sum(len(p) for p in first[1:]) + (pairs - 1) * sum(len(p) for p in nxt) + qa_tokens
        return n

    def build(self, book_id: int, chunks: Sequence[Chunk], pairs: Sequence[Sequence[QAPair]]) -> Assembled:
        """Cuts a book's chunks (with each chunk's pairs) into contexts; see the module docstring."""
        o = self.options
        flat = [(i, p) for i, ps in enumerate(pairs) for p in ps]
        enc = self.tokenizer.encode_batch([t for _, p in flat for t in (p.question, p.answer)])
        qa_ids = {}
        for k, (i, p) in enumerate(flat):
            qa_ids.setdefault(i, []).append((p, np.asarray(enc[2 * k], np.int32), np.asarray(enc[2 * k + 1], np.int32)))
        out = Assembled()
        group: list[int] = []
        c_tok = n_pairs = qa_tok = sep_tok = 0  # chunk tokens; paragraph-break tokens between them
        brk = len(self.paragraph_break())

        def close():
            if not group:
                return
            length = self._length(c_tok + sep_tok, n_pairs, qa_tok)
            if n_pairs and length >= o.min_fill * o.seq_len:
                out.contexts.append(
                    self._context(book_id, len(out.contexts), [chunks[i] for i in group], qa_ids, length)
                )
                return
            if not n_pairs and length >= o.min_fill * o.seq_len:
                out.without_questions.append((chunks[group[0]].chunk_id, chunks[group[-1]].chunk_id))
            out.unused_chunks += len(group)
            out.unused_tokens += c_tok

        for i, chunk in enumerate(chunks):
            n = int(chunk.tokens.shape[0])
            mine = qa_ids.get(i, [])
            add_q = sum(len(q) + len(a) for _, q, a in mine)
            sep = brk if chunk.starts_paragraph else 0
            if group and self._length(c_tok + sep_tok + sep + n, n_pairs + len(mine), qa_tok + add_q) > o.seq_len:
                close()
                group, c_tok, n_pairs, qa_tok, sep_tok = [], 0, 0, 0, 0
            if self._length(n, len(mine), add_q) > o.seq_len:
                out.unused_chunks += 1  # too long to fit any context with its own turns
                out.unused_tokens += n
                continue
            if group:
                sep_tok += sep
            group.append(i)
            c_tok += n
            n_pairs += len(mine)
            qa_tok += add_q
        close()
        return out

    def _context(self, book_id: int, index: int, chunks: list[Chunk], qa_ids: dict, length: int) -> Context:
        o = self.options
        first, nxt = self.parts()
        ids: list[int] = [self.tokenizer.bos_id, *first[0]]
        evidence = {}
        for k, c in enumerate(chunks):
            if k and c.starts_paragraph:
                ids.extend(self.paragraph_break())
            evidence[c.index] = (len(ids), len(ids) + int(c.tokens.shape[0]))
            ids.extend(c.tokens.tolist())
        turns_in = [(c, item) for c in chunks for item in qa_ids.get(c.index, [])]
        key = f"lwmkit-qa-context\0{book_id}\0{o.seq_len}\0{chunks[0].chunk_id}\0{chunks[-1].chunk_id}"
        if o.order == "shuffle":
            random.Random(hashlib.sha256(f"{o.seed}\0{key}".encode()).digest()).shuffle(turns_in)
        weights_on: list[tuple[int, int]] = []
        spans, turns = [], []
        for k, (c, (pair, q, a)) in enumerate(turns_in):
            before_q, before_a, after_a = (first[1], first[2], first[3]) if k == 0 else (nxt[0], nxt[1], nxt[2])
            start = len(ids)
            ids.extend(before_q)
            q_at = len(ids)
            ids.extend(q.tolist())
            ids.extend(before_a)
            a_at = len(ids)
            ids.extend(a.tolist())
            weights_on.append((a_at, len(ids)))
            ids.extend(after_a)
            spans.append((start, len(ids)))
            ev = evidence[c.index]
            turns.append(
                {
                    "chunk_id": c.chunk_id,
                    "evidence": list(ev),
                    "question": q_at,
                    "answer": [a_at, a_at + len(a)],
                    "distance": q_at - ev[1],
                    "question_text": pair.question,
                    "answer_text": pair.answer,
                }
            )
        ids.append(self.tokenizer.eos_id)
        if len(ids) != length:
            raise AssertionError(f"context of book {book_id}: built {len(ids)} tokens, planned {length}")
        weights = np.zeros(len(ids), np.float32)
        for a, b in weights_on:
            weights[a:b] = 1.0
        weights[-1] = 1.0 if o.final_eos_loss else 0.0
        return Context(
            doc_id=document_id(key),
            index=index,
            chunk_ids=tuple(c.chunk_id for c in chunks),
            tokens=np.asarray(ids, np.int32),
            loss_weights=weights,
            atomic_spans=tuple(spans),
            prefix=1 + len(first[0]),
            turns=tuple(turns),
        )
