"""The QA job's per-record stage functions and its statistics (usage, depth), small and picklable.

    ReadDocumentTexts  one documents/ shard of the books job -> its documents as text again
    ChunkBook          a normalized book -> {book fields, chunks}; drops `too_short` books
    GenerateBatch      a batch of books -> each book with one generation result per chunk
    validate           a book -> a `Dropped` row per chunk without a valid pair (reason, raw replies)
                       and the book itself (its text still forms contexts)
    AssembleBook       a book -> (context id, payload) per context; `no_questions` / `too_short` drops
    QAStatsFn          sums what generation cost and where evidence sits, for the manifest's `qa`

Example, one book of 30 chunks, 2 of them failing generation, seq_len 2048:
    chunk      1 book -> 1 book with 30 chunks
    generate   [book] -> book + 30 results (28 with a pair)
    validate   book -> Dropped(malformed_reply, chunk ...-00007), Dropped(...-00019), book
    assemble   book -> 2 contexts of ~1.9K tokens; the last 6 chunks, too few for a third, are counted unused
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from lwmkit.pipelines.engine.drops import Dropped, DropRecord
from lwmkit.pipelines.pack.job import read_document_records
from lwmkit.pipelines.qa.assembly import ContextBuilder, ContextOptions
from lwmkit.pipelines.qa.cache import ReplyCache
from lwmkit.pipelines.qa.calls import ChunkResult, generate_all
from lwmkit.pipelines.qa.chunks import Chunk, chunk_text, total_tokens
from lwmkit.pipelines.qa.client import USAGE_KEYS
from lwmkit.pipelines.qa.generators import QAGenerator
from lwmkit.pipelines.writing.payload import example_payload
from lwmkit.tokenizers.text import SentencePieceTokenizer

DEPTH_BUCKETS = 10  # distance histogram: tenths of seq_len


class ReadDocumentTexts:
    """Reads one document shard of the books job; yields each document's text (BOS/EOS removed)."""

    def __init__(self, tokenizer: SentencePieceTokenizer):
        self.tokenizer = tokenizer

    def __call__(self, path: str) -> Iterator[dict | Dropped]:
        tok = self.tokenizer
        for rec in read_document_records(path):
            if isinstance(rec, Dropped):
                yield rec
                continue
            tokens = rec["tokens"][~rec["vision_mask"]].tolist()
            if tokens and tokens[0] == tok.bos_id:
                tokens = tokens[1:]
            if tokens and tokens[-1] == tok.eos_id:
                tokens = tokens[:-1]
            yield {
                "file": rec["source_file"],
                "line": int(rec["source_line"]),
                "text": tok.decode(tokens),
                "meta": None,
            }


class ChunkBook:
    """Cuts a book into chunks; drops books too short to fill half a context with text alone."""

    def __init__(self, tokenizer: SentencePieceTokenizer, context: ContextOptions):
        self.tokenizer = tokenizer
        self.context = context

    def __call__(self, doc: dict) -> Iterator[dict]:
        c = self.context
        chunks = chunk_text(doc["text"], doc["doc_id"], self.tokenizer, c.chunk_tokens)
        n = total_tokens(chunks)
        need = c.min_fill * c.seq_len / 2  # QA turns never make up half a context
        if n < need:
            raise DropRecord(
                "too_short", f"{n} text tokens; a context of {c.seq_len} tokens at min_fill {c.min_fill} needs more"
            )
        yield {
            "doc_id": doc["doc_id"],
            "file": doc["file"],
            "line": doc["line"],
            "chars": doc["chars"],
            "meta": doc["meta"],
            "chunks": [ch.to_json() for ch in chunks],
        }


class GenerateBatch:
    """Generates QA pairs for every chunk of a batch of books, `concurrency` chunks in flight.

    Args:
      generator: the QA generator (its client reads the API key from the worker's environment).
      cache_dir: the reply cache directory (None: no cache).
      max_attempts: replies parsed per chunk before it fails.
      fresh: --retry-failures: new attempts after the cached replies (see `qa.calls.generate_pairs`).
    """

    def __init__(self, generator: QAGenerator, cache_dir: str | None, max_attempts: int, fresh: bool = False):
        self.generator = generator
        self.cache_dir = cache_dir
        self.max_attempts = max_attempts
        self.fresh = fresh

    def __call__(self, books: list[dict]) -> Iterator[dict]:
        chunks = [Chunk.from_json(c) for b in books for c in b["chunks"]]
        cache = ReplyCache(self.cache_dir) if self.cache_dir else None
        results = iter(generate_all(self.generator, chunks, cache, self.max_attempts, fresh=self.fresh))
        for b in books:
            yield {**b, "results": [next(results).to_json() for _ in b["chunks"]]}


def validate(book: dict) -> Iterator[dict | Dropped]:
    """A failure row per chunk without pairs (its reason; detail: chunk, attempts, raw replies), then the book."""
    for chunk, r in zip(book["chunks"], book["results"], strict=True):
        if r["reason"] is not None:
            detail = {"chunk_id": chunk["chunk_id"], "attempts": r["attempts"], "detail": r["detail"], "raw": r["raw"]}
            yield Dropped(
                r["reason"], json.dumps(detail, ensure_ascii=False, sort_keys=True), book["file"], book["line"]
            )
    yield book


class AssembleBook:
    """A book's contexts as `(doc_id, payload)` (see `writing.payload.doc_arrays`), meta holding every turn."""

    def __init__(self, tokenizer: SentencePieceTokenizer, context: ContextOptions):
        self.builder = ContextBuilder(tokenizer, context)
        self.context = context
        self.token_dtype = "<u2" if tokenizer.vocab_size <= 1 << 16 else "<i4"

    def __call__(self, book: dict) -> Iterator[tuple[int, dict] | Dropped]:
        chunks = [Chunk.from_json(c) for c in book["chunks"]]
        pairs = [ChunkResult.from_json(r).pairs for r in book["results"]]
        made = self.builder.build(book["doc_id"], chunks, pairs)
        for first, last in made.without_questions:
            yield Dropped("no_questions", f"the context of chunks {first}..{last} has no chunk with a valid QA pair")
        if not made.contexts and not made.without_questions:
            yield Dropped(
                "too_short",
                f"{len(chunks)} chunks fill no context of {self.context.seq_len} tokens "
                f"to min_fill {self.context.min_fill}",
            )
        book_meta = json.loads(book["meta"]) if book["meta"] else None
        by_id = {c.chunk_id: c for c in chunks}
        for ctx in made.contexts:
            meta = {
                "book_id": book["doc_id"],
                "book_meta": book_meta,
                "context": ctx.index,
                "seq_len": self.context.seq_len,
                "chunks": [ctx.chunk_ids[0], ctx.chunk_ids[-1]],
                "chunk_count": len(ctx.chunk_ids),
                "chunk_tokens": sum(int(by_id[i].tokens.shape[0]) for i in ctx.chunk_ids),
                "turns": list(ctx.turns),
            }
            chars = sum(len(by_id[i].text) for i in ctx.chunk_ids)
            yield ctx.doc_id, example_payload(
                book, chars, meta, ctx.tokens, self.token_dtype, None, ctx.loss_weights, ctx.atomic_spans,
                kind="chat", prefix=ctx.prefix,
            )


# --- statistics ----------------------------------------------------------------------------------------


def generation_stats(book: dict) -> dict[str, Any]:
    """One book's generation accounting, as a QAStatsFn input."""
    s: dict[str, float] = {"books": 1, "chunks": len(book["chunks"])}
    s["chunk_tokens"] = sum(len(c["tokens"]) // 4 for c in book["chunks"])
    reasons: dict[str, int] = {}
    for r in book["results"]:
        s["chunks_with_pairs"] = s.get("chunks_with_pairs", 0) + (r["reason"] is None)
        s["pairs"] = s.get("pairs", 0) + len(r["pairs"])
        for k in ("attempts", "calls", "cache_hits", "requests", "waited_s"):
            s[k] = s.get(k, 0) + r[k]
        for k in USAGE_KEYS:
            s[f"usage.{k}"] = s.get(f"usage.{k}", 0) + r["usage"][k]
            s[f"cached_usage.{k}"] = s.get(f"cached_usage.{k}", 0) + r["cached_usage"][k]
        if r["reason"] is not None:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    return {"sum": s, "min": {}, "max": {}, "hist": {"chunk_failures": reasons}}


def context_stats(item: tuple[int, dict]) -> dict[str, Any]:
    """One context's size, questions and evidence distances, as a QAStatsFn input."""
    _, payload = item
    meta = json.loads(payload["meta"])
    n = len(payload["tokens"]) // (2 if payload["token_dtype"] == "<u2" else 4)
    seq_len = meta["seq_len"]
    distances = [t["distance"] for t in meta["turns"]]
    hist: dict[str, int] = {}
    for d in distances:
        b = min(DEPTH_BUCKETS - 1, d * DEPTH_BUCKETS // seq_len)
        label = f"{b * 100 // DEPTH_BUCKETS:02d}-{(b + 1) * 100 // DEPTH_BUCKETS}%"
        hist[label] = hist.get(label, 0) + 1
    answer_tokens = sum(t["answer"][1] - t["answer"][0] for t in meta["turns"])
    s = {
        "contexts": 1,
        "context_tokens": n,
        "questions": len(distances),
        "answer_tokens": answer_tokens,
        "chunks_in_contexts": meta["chunk_count"],
        "chunk_tokens_in_contexts": meta["chunk_tokens"],
        "distance_sum": sum(distances),
    }
    return {
        "sum": s,
        "min": {"context_tokens": n, "distance": min(distances)},
        "max": {"context_tokens": n, "distance": max(distances)},
        "hist": {"distance_share_of_seq_len": hist},
    }


def merge_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {
        "sum": dict(a["sum"]),
        "min": dict(a["min"]),
        "max": dict(a["max"]),
        "hist": {k: dict(v) for k, v in a["hist"].items()},
    }
    for k, v in b["sum"].items():
        out["sum"][k] = out["sum"].get(k, 0) + v
    for k, v in b["min"].items():
        out["min"][k] = min(out["min"].get(k, v), v)
    for k, v in b["max"].items():
        out["max"][k] = max(out["max"].get(k, v), v)
    for name, h in b["hist"].items():
        mine = out["hist"].setdefault(name, {})
        for k, v in h.items():
            mine[k] = mine.get(k, 0) + v
    return out


class QAStatsFn(beam.CombineFn):
    """Sums `generation_stats` and `context_stats` records."""

    def create_accumulator(self) -> dict[str, Any]:
        return {"sum": {}, "min": {}, "max": {}, "hist": {}}

    def add_input(self, acc, element):
        return merge_stats(acc, element)

    def merge_accumulators(self, accumulators):
        out = self.create_accumulator()
        for a in accumulators:
            out = merge_stats(out, a)
        return out

    def extract_output(self, acc):
        return acc


def qa_summary(stats: dict[str, Any], seq_len: int) -> dict[str, Any]:
    """The manifest's `qa` section from the combined statistics."""
    s, lo, hi, hist = stats["sum"], stats["min"], stats["max"], stats["hist"]

    def n(k):
        v = s.get(k, 0)
        return round(v, 3) if isinstance(v, float) else int(v)

    contexts, questions = n("contexts"), n("questions")
    return {
        "chunks": {
            "books": n("books"),
            "chunks": n("chunks"),
            "tokens": n("chunk_tokens"),
            "with_pairs": n("chunks_with_pairs"),
            "failed": n("chunks") - n("chunks_with_pairs"),
            "failures_by_reason": dict(sorted(hist.get("chunk_failures", {}).items())),
            "in_contexts": n("chunks_in_contexts"),
            "outside_contexts": n("chunks") - n("chunks_in_contexts"),
            "tokens_outside_contexts": n("chunk_tokens") - n("chunk_tokens_in_contexts"),
        },
        "generation": {
            "pairs": n("pairs"),
            "attempts": n("attempts"),
            "calls": n("calls"),
            "cache_hits": n("cache_hits"),
            "http_requests": n("requests"),
            "backoff_wait_s": round(float(s.get("waited_s", 0.0)), 3),
            "usage": {k: n(f"usage.{k}") for k in USAGE_KEYS},
            "usage_saved_by_cache": {k: n(f"cached_usage.{k}") for k in USAGE_KEYS},
        },
        "contexts": {
            "count": contexts,
            "seq_len": seq_len,
            "questions": questions,
            "answer_tokens": n("answer_tokens"),
            "tokens": {
                "total": n("context_tokens"),
                "min": lo.get("context_tokens"),
                "max": hi.get("context_tokens"),
                "mean": round(n("context_tokens") / contexts, 1) if contexts else None,
            },
        },
        "depth": {
            "measure": "distance in tokens from the end of a question's evidence chunk to the question",
            "questions": questions,
            "min": lo.get("distance"),
            "max": hi.get("distance"),
            "mean": round(n("distance_sum") / questions, 1) if questions else None,
            "share_of_seq_len": dict(sorted(hist.get("distance_share_of_seq_len", {}).items())),
        },
    }
