"""The QA job's options and the job record they make, without Beam: what `lwm-pack qa` needs to
answer a rerun over a complete local output before Beam loads (`complete_qa`).

`prepare_qa` (job.py) and `complete_qa` build the job record with the same `qa_job`, so the quick
answer and the full launch compare the same identity with the output's manifest.

Example:
    options = QAOptions(inputs=("books/*.jsonl.zst",), output="qa", tokenizer="tokenizer.model")
    complete_qa(options)   # -> the job manifest if qa/ is complete for them, else None
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from lwmkit.pipelines.books.options import DocumentOptions
from lwmkit.pipelines.books.sources import input_kind
from lwmkit.pipelines.engine import runner as runner_lib
from lwmkit.pipelines.engine.inputs import local_inputs, read_tokenizer
from lwmkit.pipelines.engine.lifecycle import answer_complete, job_record, may_answer_complete
from lwmkit.pipelines.engine.outputs import join, read_output_bytes
from lwmkit.pipelines.qa.assembly import ContextOptions
from lwmkit.pipelines.qa.extractive import ExtractiveGenerator, ExtractiveOptions
from lwmkit.pipelines.qa.generators import ChatGeneratorOptions, ChatQAGenerator, QAGenerator
from lwmkit.pipelines.writing.plan import PackOptions
from lwmkit.tokenizers.text import SentencePieceTokenizer

# The QA job's named stages, in order.
STAGES = ("read", "normalize", "filter", "dedup", "chunk", "generate", "validate", "assemble")
GeneratorOptions = ExtractiveOptions | ChatGeneratorOptions


def make_generator(options: GeneratorOptions) -> QAGenerator:
    """The generator for its options: `ExtractiveOptions` or `ChatGeneratorOptions`.

    Raises:
      ValueError: naming the type for anything else.
    """
    makers = {ExtractiveOptions: ExtractiveGenerator, ChatGeneratorOptions: ChatQAGenerator}
    if type(options) not in makers:
        raise ValueError(f"generator: {type(options).__name__} is not one of {[t.__name__ for t in makers]}")
    return makers[type(options)](options)


@dataclass(frozen=True)
class QAOptions(DocumentOptions, runner_lib.RunOptions):
    """Options of the QA job.

    Attributes:
      inputs: raw book file globs (as for the books job); or
      documents: a `documents/` directory of the books job (give inputs or documents, not both).
      output: output directory.
      tokenizer: path of a SentencePiece `.model` file.
      generator: `ExtractiveOptions` (no model) or `ChatGeneratorOptions` (an OpenAI-compatible server).
      context: chunk size, context length, fill, chat templates (presets: `ContextOptions.preset`).
      max_attempts: replies parsed per chunk (a reply failing validation costs an attempt).
      cache_dir: the reply cache (default `<output>/generator-cache`).
      books_per_batch: books whose chunks share one pool of `concurrency` requests in flight.
      text_key, min_chars, max_chars, near_dedup, near_threshold (`books.options.DocumentOptions`),
      shard_tokens, pack, runner, direct_running_mode, direct_num_workers, progress, beam_args,
        force: as for the books job (near_dedup's options are recorded only when it is on).
    """

    output: str
    tokenizer: str
    inputs: tuple[str, ...] = ()
    documents: str | None = None
    generator: GeneratorOptions = field(default_factory=ExtractiveOptions)
    context: ContextOptions = field(default_factory=ContextOptions)
    max_attempts: int = 3
    cache_dir: str | None = None
    books_per_batch: int = 4
    shard_tokens: int = 1 << 24
    pack: PackOptions = field(default_factory=PackOptions)
    retry_failures: bool = False

    def __post_init__(self):
        self.check_near_threshold()
        if bool(self.inputs) == bool(self.documents):
            raise ValueError("inputs/documents: give raw inputs or a documents/ directory, exactly one of them")
        if not isinstance(self.generator, ExtractiveOptions | ChatGeneratorOptions):
            raise ValueError(
                f"generator: {type(self.generator).__name__} is not ExtractiveOptions or ChatGeneratorOptions"
            )
        if not 1 <= self.max_attempts <= 20:
            raise ValueError(f"max_attempts: {self.max_attempts} is outside 1..20")
        if not 1 <= self.books_per_batch <= 4096:
            raise ValueError(f"books_per_batch: {self.books_per_batch} is outside 1..4096")
        self.check_char_range()
        if self.shard_tokens < 1:
            raise ValueError(f"shard_tokens: {self.shard_tokens} must be >= 1")
        super().__post_init__()

    @property
    def cache_directory(self) -> str:
        return self.cache_dir or join(self.output, "generator-cache")

    def recorded(self) -> dict[str, Any]:
        """What shapes the output (the manifest's options; a change rebuilds). No transport settings, no key."""
        gen = make_generator(self.generator).describe()
        if "client" in gen:
            gen["client"] = {k: gen["client"][k] for k in ("base_url", "model")}
        return {
            "inputs": list(self.inputs),
            "documents": self.documents,
            "tokenizer": self.tokenizer,
            "generator": gen,
            "context": dataclasses.asdict(self.context),
            "max_attempts": self.max_attempts,
            "text_key": self.text_key,
            "min_chars": self.min_chars,
            "max_chars": self.max_chars,
            "shard_tokens": self.shard_tokens,
            "pack": self.pack.to_json(),
            **({"near_dedup": True, "near_threshold": self.near_threshold} if self.near_dedup else {}),
        }


def document_shards(directory: str, tokenizer: SentencePieceTokenizer) -> list[str]:
    """The shard paths of a documents/ directory made with this tokenizer.

    Raises:
      ValueError: if the directory holds other records or was made with another tokenizer.
    """
    from lwmkit.packing.manifest import load_manifest

    source = load_manifest(directory)
    if source["kind"] != "document":
        raise ValueError(f"{directory}: holds {source['kind']} records; --documents reads a documents/ directory")
    made_with = (source.get("tokenizer") or {}).get("sha256")
    if made_with != tokenizer.fingerprint()["sha256"]:
        raise ValueError(
            f"{directory}: made with tokenizer sha256 {made_with}, not {tokenizer.name}; texts would not decode"
        )
    return [join(directory, s["file"]) for s in source["shards"]]


def qa_job(options: QAOptions, files: list[str], tokenizer: SentencePieceTokenizer,
           generator: QAGenerator) -> dict[str, Any]:
    """The job record of the QA job (`lifecycle.job_record`), with the `generator`'s description."""
    job = job_record(
        options.recorded(),
        files,
        {**tokenizer.fingerprint(), "path": options.tokenizer},
        runner_lib.describe(options.runner, options.direct_running_mode),
    )
    job["generator"] = generator.describe()
    return job


def qa_job_summary(options: QAOptions, files: list[str], tokenizer: SentencePieceTokenizer, job: dict[str, Any]) -> str:
    """The job's first progress line: what it reads, tokenizer, generator, contexts, cache, runner."""
    if options.documents:
        reads = f"documents of {options.documents} ({len(files)} shard{'s' if len(files) != 1 else ''})"
    else:
        reads = f"{len(files)} input file{'s' if len(files) != 1 else ''}"
    c = options.context
    return (f"{reads}; tokenizer {tokenizer.name} ({tokenizer.vocab_size} pieces); generator "
            f"{job['generator']['kind']}; chunks of ~{c.chunk_tokens} tokens into contexts of {c.seq_len}; "
            f"reply cache {options.cache_directory}; runner {job['runner']}")


def generation_line(manifest: dict[str, Any]) -> str:
    """The job's last progress line, from its manifest's `qa` section: calls, cache hits, tokens."""
    g = manifest["qa"]["generation"]
    return f"{g['calls']} generator calls, {g['cache_hits']} cache hits, {g['usage']['total_tokens']} tokens used"


def has_qa_section(output: str) -> bool | None:
    """Whether an existing job manifest has its `qa` section (None: no readable manifest)."""
    raw = read_output_bytes(join(output, "manifest.json"))
    try:
        return None if raw is None else "qa" in json.loads(raw)
    except json.JSONDecodeError:
        return None


def complete_qa(options: QAOptions) -> dict[str, Any] | None:
    """The manifest of a complete local output for `options`, answered without Beam, or None.

    It reads the tokenizer, matches the raw inputs as Beam would (`engine.inputs.local_inputs`) or
    lists a documents/ directory's shards, and asks `lifecycle.answer_complete` with the job record
    `prepare_qa` builds; None (run `run_qa`, which checks again) for an output whose manifest lacks
    its `qa` section (a run that stopped before its last step), object-store paths, a missing input
    or tokenizer, or anything else it cannot be sure of.
    """
    if not may_answer_complete(options) or "://" in options.tokenizer or has_qa_section(options.output) is not True:
        return None
    try:
        tokenizer = read_tokenizer(options.tokenizer)
        files = document_shards(options.documents, tokenizer) if options.documents else local_inputs(options.inputs,
                                                                                                   input_kind)
        if files is None:
            return None
        job = qa_job(options, files, tokenizer, make_generator(options.generator))
    except (OSError, ValueError):
        return None
    return answer_complete(options, job, qa_job_summary(options, files, tokenizer, job), STAGES,
                           closing=lambda manifest: [generation_line(manifest)])
