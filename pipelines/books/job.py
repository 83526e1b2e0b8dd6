"""The books job: Books3-style text files -> document shards and packed token shards.

The job is a flat list of named stages:
    read -> normalize -> filter -> tokenize -> spill -> dedup -> plan -> write shards -> finalize

Each stage counts seen/kept/dropped and sends dropped records with their reason to
`failures.jsonl`. Tokenized documents go to the work store (`<output>/.work`, see
`work_store.py`) as soon as they are made, and only small references travel on, so dedup, the
plan and the shard routing never move token data, and peak memory stays flat as the input grows
(dedup after tokenize costs the tokenization of exact duplicates, usually a few percent).

Resume: a rerun of a killed job skips every source record whose document is already in the work
store (its counts are carried over), and every shard already written. `retry_failures` re-runs a
finished job the same way: only the rows of its `failures.jsonl` are processed again, and the
results are merged with the documents it kept. Output layout:
    <output>/documents/        document records, documents.parquet, manifest.json, TFDS metadata
    <output>/packed-<seq_len>/ packed records of exactly seq_len tokens, the same files
    <output>/failures.jsonl    one row per dropped record: stage, file, line, reason, detail
    <output>/manifest.json     the job summary

Run it (the exact command for the demo corpus):
    lwm-pack books --input 'books/*.jsonl.zst' --tokenizer tokenizer.model \
        --seq-len 32768 --output out/ --runner DirectRunner
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
from lwmkit.packing.records import document_id
from lwmkit.pipelines.books.options import STAGES, BooksOptions, books_job, books_summary
from lwmkit.pipelines.books.sources import input_kind, read_documents
from lwmkit.pipelines.dedup.entry import NearDedupOptions
from lwmkit.pipelines.dedup.stored import (
    SKETCH_FIELD,
    CarrySketch,
    StoredSketch,
    near_dedup_elements,
)
from lwmkit.pipelines.dedup.text import MinHashConfig
from lwmkit.pipelines.engine import inputs
from lwmkit.pipelines.engine.dataflow import register_dry_run
from lwmkit.pipelines.engine.drops import KeepFirst
from lwmkit.pipelines.engine.inputs import read_tokenizer
from lwmkit.pipelines.engine.lifecycle import PreparedJob, launch
from lwmkit.pipelines.engine.normalize import normalize_text
from lwmkit.pipelines.engine.resume import skip_stored, stored_documents
from lwmkit.pipelines.engine.stages import Dropped, DropRecord, StageList, stage_links
from lwmkit.pipelines.engine.work_store import spill
from lwmkit.pipelines.writing.finalize import StageChain
from lwmkit.pipelines.writing.tail import write_job_datasets
from lwmkit.tokenizers.text import SentencePieceTokenizer

CHAIN = StageChain(STAGES, stage_links(STAGES), last="dedup", grouped=("dedup",))
NEAR_CHAIN = StageChain(
    stages=(*STAGES, "near_dedup"),
    links=(*CHAIN.links, ("near_dedup", "dedup")),
    last="near_dedup",
    grouped=CHAIN.grouped,
)
# Stages a record whose document is already in the work store skips (each counts it as kept).
SKIPPED_WHEN_DONE = ("normalize", "filter", "tokenize")


class NoValidDocumentsError(ValueError):
    """The job read its inputs but none of them gave a document."""


# --- stage functions (small, picklable, per record) ---------------------------------------------


def normalize(doc: dict) -> Iterator[dict]:
    text = normalize_text(doc["text"])
    yield {**doc, "text": text, "chars": len(text), "doc_id": document_id(text)}


class LengthFilter:
    def __init__(self, min_chars: int, max_chars: int | None):
        self.min_chars = min_chars
        self.max_chars = max_chars

    def __call__(self, doc: dict) -> Iterator[dict]:
        n = doc["chars"]
        if n < self.min_chars or (n == 0):
            raise DropRecord("too_short", f"{n} characters after normalization, minimum {max(self.min_chars, 1)}")
        if self.max_chars is not None and n > self.max_chars:
            raise DropRecord("too_long", f"{n} characters, maximum {self.max_chars}")
        yield doc


# Exact dedup: of documents with the same content hash, keep the first by (file, line).
keep_first = KeepFirst("text")


def keep_first_reference(element: tuple[int, Iterable[dict]]) -> Iterator[tuple[int, dict] | Dropped]:
    """`keep_first` over work-store references; yields (doc_id, reference) of the one kept.

    Example: (7, [ref of b.jsonl:2, ref of a.jsonl:9]) -> (7, ref of a.jsonl:9), Dropped(b.jsonl:2)
    """
    doc_id, refs = element
    for out in keep_first((doc_id, refs)):
        yield out if isinstance(out, Dropped) else (doc_id, out)


class Tokenize:
    """Encodes a document as [BOS] text [EOS]; see `writing.payload.doc_arrays` for the payload."""

    def __init__(self, tokenizer: SentencePieceTokenizer):
        self.tokenizer = tokenizer
        self.token_dtype = "<u2" if tokenizer.vocab_size <= 1 << 16 else "<i4"

    def __call__(self, doc: dict) -> Iterator[tuple[int, dict]]:
        tokens = self.tokenizer.encode_document(doc["text"])
        yield doc["doc_id"], {
            "file": doc["file"],
            "line": doc["line"],
            "chars": doc["chars"],
            "meta": doc["meta"],
            "tokens": tokens.astype(self.token_dtype).tobytes(),
            "token_dtype": self.token_dtype,
            "vision_mask": None,  # text only; BOS weight 0, the rest 1
            "loss_weights": None,
            "atomic_spans": None,  # text may be cut anywhere
        }


class WithSketch:
    """The tokenize stage `fn` with near-dedup's sketch of each document's text added to its payload
    (so it rests with the document in the work store and a rerun never recomputes it)."""

    def __init__(self, fn, near: NearDedupOptions):
        self.fn = fn
        self.sketcher = CarrySketch(near)

    def __call__(self, doc: dict) -> Iterator[tuple[int, dict]]:
        for doc_id, payload in self.fn(doc):
            yield doc_id, {**payload, SKETCH_FIELD: self.sketcher(reference_key(payload), doc["text"])}


def reference_key(ref: dict) -> str:
    """A document's near-dedup key, its source record: 'books/a.jsonl:3'."""
    return f"{ref['file']}:{ref['line']}"


def reference_where(ref: dict) -> tuple[str, int]:
    return ref["file"], ref["line"]


def reference_sketch(near: NearDedupOptions) -> StoredSketch:
    return StoredSketch(near, field=lambda item: item[1].get(SKETCH_FIELD))


def near_dedup_texts(docs: beam.PCollection, threshold: float):
    """Near dedup (MinHash, estimated Jaccard >= threshold) of documents whose text is at hand: the
    QA job's books, before chunking (it keeps no work store, so each run sketches every document).
    Returns (survivors, failures, counts, manifest entry) as `near_dedup_elements`; keys and
    failure rows as this job's, `file:line`."""
    near = NearDedupOptions("text", MinHashConfig(threshold=threshold))
    return near_dedup_elements(docs, near, key_of=reference_key, content=lambda doc: doc["text"],
                               where=reference_where)


# --- the job ---------------------------------------------------------------------------------------


def match_inputs(patterns: Sequence[str]) -> list[str]:
    """Expands globs into a sorted list of supported book files (see `engine.inputs.match_inputs`)."""
    return inputs.match_inputs(patterns, input_kind)


def build_pipeline(
    p: beam.Pipeline,
    options: BooksOptions,
    files: list[str],
    tokenizer,
    job: dict,
    receipts: Sequence[str] = (),
    retried: Sequence[dict] | None = None,
):
    """Adds the books job's stages to pipeline `p`."""
    stage = StageList.for_job(options)
    stored, done = stored_documents(p, receipts)
    docs = stage.read(p, files, read_documents, options.text_key)
    docs, skipped = skip_stored(docs, done, SKIPPED_WHEN_DONE)
    stage.counts.append(skipped)
    docs = stage(docs, "normalize", normalize)
    docs = stage(docs, "filter", LengthFilter(options.min_chars, options.max_chars))
    near = options.near()
    tokenize = Tokenize(tokenizer)
    tokenized = stage(docs, "tokenize", tokenize if near is None else WithSketch(tokenize, near))
    spilled = spill(tokenized, options.output, options.unit_bytes)
    refs = (spilled, stored) | "new and stored" >> beam.Flatten()
    groups = refs | "group by content" >> beam.GroupByKey()
    kept = stage(groups, "dedup", keep_first_reference)
    if near is not None:
        kept, near_failures, near_counts, entry = near_dedup_elements(
            kept, near, key_of=lambda item: reference_key(item[1]), content=reference_sketch(near),
            where=lambda item: reference_where(item[1]))
        stage.add(near_failures, near_counts, entry=entry)
    return write_job_datasets(p, kept, stage.failures, stage.counts, options, job=job, spilled=True,
                              chain=NEAR_CHAIN if near is not None else CHAIN, retried=retried,
                              manifest_entries=stage.entries)


def prepare_books(options: BooksOptions) -> PreparedJob:
    """Matches the inputs, reads the tokenizer and builds the job record; see `launch.PreparedJob`.

    Raises:
      FileNotFoundError: an input pattern matches nothing, or the tokenizer file is missing.
      TokenizerError: the tokenizer file is not a SentencePiece model.
    """
    files = match_inputs(options.inputs)
    tokenizer = read_tokenizer(options.tokenizer)
    job = books_job(options, files, tokenizer)
    return PreparedJob(
        files=files,
        job=job,
        build=lambda p, receipts=(), retried=None: build_pipeline(p, options, files, tokenizer, job, receipts, retried),
        stages=STAGES,
        summary=books_summary(files, tokenizer, job),
    )


def run_books(options: BooksOptions) -> dict[str, Any]:
    """Runs the books job and waits for it.

    Returns:
      The job manifest (also written to `<output>/manifest.json`).

    Raises:
      FileNotFoundError: an input pattern matches nothing, or the tokenizer file is missing, or
        retry_failures finds no earlier run.
      TokenizerError: the tokenizer file is not a SentencePiece model.
      NoValidDocumentsError: no input record gave a document (see failures.jsonl for why).
      CountMismatchError (via the runner): records were lost between stages.
    """
    return launch(options, prepare_books, NoValidDocumentsError, "no valid documents in")


register_dry_run(BooksOptions, "books", prepare_books)
