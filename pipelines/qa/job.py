"""The QA job: books -> model-generated long-context QA examples (LWM-Text-Chat's training data).

The recipe LWM described but never released: books cut into ~1,000-token chunks, one QA pair
generated per chunk by a short-context model, consecutive chunks concatenated into 32K-128K
contexts followed by their QA pairs as chat turns, loss on the answers only. The job is a flat
list of named stages:

    read -> normalize -> filter -> dedup -> [near_dedup] -> chunk -> generate -> validate -> assemble
         -> plan -> write shards -> finalize

    read..dedup  as in the books job (raw `.jsonl.zst`/`.jsonl`/`.txt`/`.parquet`), or `documents`:
                 the books job's `documents/` shards, decoded back to text with the same tokenizer
    near_dedup   with `near_dedup`: near-copy books, as in the books job (no work store: reruns sketch)
    chunk        `qa_chunks`; books that cannot fill half a context are dropped (`too_short`)
    generate     batches of books, every chunk through the generator with the reply cache
                 (`qa_calls`); an OpenAI-compatible model server or the extractive generator
    validate     a failure row per chunk left without a valid pair, with its raw replies
    assemble     `qa_assembly`: contexts of at most seq_len tokens, loss on answers, turns atomic

Output: the books job's layout (`documents/` holds one record per context, its `documents.parquet`
meta column every turn's evidence span, question position and distance; `packed-<seq_len>/`,
`failures.jsonl`, `manifest.json`). The job manifest records `generator` (its `kind` says
`extractive` or `openai_chat`) and a `qa` section: chunks, calls, cache hits, token usage, context
sizes and the depth histogram (how far each question sits from its evidence).

The reply cache (default `<output>/generator-cache/`) is keyed by chunk, prompt, model and
parameters: rerunning after a crash, with --force, or with another seq_len pays for no reply twice.

Run it against a vLLM server (the API key, if any, in $OPENAI_API_KEY):
    lwm-pack qa --input 'books/*.jsonl.zst' --tokenizer tokenizer.model --generator openai \
        --base-url http://127.0.0.1:8000/v1 --model meta-llama/Meta-Llama-3-8B-Instruct \
        --preset lwm-32k --output qa/
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from lwmkit.packing.shards import dumps_json
from lwmkit.pipelines.books import job as books_job
from lwmkit.pipelines.books.job import LengthFilter, keep_first, match_inputs, normalize
from lwmkit.pipelines.books.options import DocumentOptions
from lwmkit.pipelines.books.sources import read_documents
from lwmkit.pipelines.engine import runner as runner_lib
from lwmkit.pipelines.engine.dataflow import register_dry_run
from lwmkit.pipelines.engine.inputs import read_tokenizer
from lwmkit.pipelines.engine.lifecycle import (
    PreparedJob,
    job_record,
    progress_log,
    require_documents,
    run_job,
)
from lwmkit.pipelines.engine.outputs import (
    delete_outputs,
    join,
    read_output_bytes,
    write_output_bytes,
)
from lwmkit.pipelines.engine.progress import progress_folder
from lwmkit.pipelines.engine.resume import previous_failures
from lwmkit.pipelines.engine.stages import StageList, stage_links
from lwmkit.pipelines.qa.accounting import retry_entry, stage_counts
from lwmkit.pipelines.qa.assembly import ContextOptions
from lwmkit.pipelines.qa.extractive import ExtractiveGenerator, ExtractiveOptions
from lwmkit.pipelines.qa.generators import ChatGeneratorOptions, ChatQAGenerator, QAGenerator
from lwmkit.pipelines.qa.stages import (
    AssembleBook,
    ChunkBook,
    GenerateBatch,
    QAStatsFn,
    ReadDocumentTexts,
    context_stats,
    generation_stats,
    qa_summary,
    validate,
)
from lwmkit.pipelines.writing.finalize import FAILURES_FILE, StageChain
from lwmkit.pipelines.writing.plan import PackOptions
from lwmkit.pipelines.writing.tail import write_datasets
from lwmkit.tokenizers.text import SentencePieceTokenizer

STAGES = ("read", "normalize", "filter", "dedup", "chunk", "generate", "validate", "assemble")
# generate receives batches of books and yields one per book
CHAIN = StageChain(STAGES, stage_links(STAGES), last="assemble", grouped=("dedup", "generate"))
STATS_FILE = "qa_stats.json"
GeneratorOptions = ExtractiveOptions | ChatGeneratorOptions


class NoValidContextsError(ValueError):
    """The job read its inputs but assembled no context."""


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


def _document_shards(directory: str, tokenizer: SentencePieceTokenizer) -> list[str]:
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


def build_pipeline(
    p: beam.Pipeline,
    options: QAOptions,
    files: list[str],
    tokenizer,
    generator,
    job: dict,
    retried: Sequence[dict] | None = None,
):
    """Adds the QA job's stages to pipeline `p`."""
    stage = StageList.for_job(options)
    if options.documents:
        docs = stage.read(p, files, ReadDocumentTexts(tokenizer))
    else:
        docs = stage.read(p, files, read_documents, options.text_key)
    docs = stage(docs, "normalize", normalize)
    docs = stage(docs, "filter", LengthFilter(options.min_chars, options.max_chars))
    groups = docs | "key by content" >> beam.Map(lambda d: (d["doc_id"], d)) | "group by content" >> beam.GroupByKey()
    docs = stage(groups, "dedup", keep_first)
    near = options.near_dedup
    if near:
        docs, near_failures, near_counts, entry = books_job.near_dedup_texts(docs, options.near_threshold)
        stage.add(near_failures, near_counts, entry=entry)
    books = stage(docs, "chunk", ChunkBook(tokenizer, options.context))
    batches = (
        books
        | "spread books" >> beam.Reshuffle()
        | "batch books" >> beam.BatchElements(min_batch_size=1, max_batch_size=options.books_per_batch)
    )
    generated = stage(
        batches, "generate", GenerateBatch(generator, options.cache_directory, options.max_attempts, options.retry_failures)
    )
    books = stage(generated, "validate", validate)
    contexts = stage(books, "assemble", AssembleBook(tokenizer, options.context))

    stats_path = join(options.output, STATS_FILE)
    (
        (
            generated | "generation stats" >> beam.Map(generation_stats),
            contexts | "context stats" >> beam.Map(context_stats),
        )
        | "all stats" >> beam.Flatten()
        | "sum stats" >> beam.CombineGlobally(QAStatsFn())
        | "write stats" >> beam.Map(lambda s: write_output_bytes(stats_path, json.dumps(s, sort_keys=True).encode()))
    )
    return write_datasets(
        p,
        contexts,
        stage.failures,
        stage.counts,
        output=options.output,
        seq_lens=(options.context.seq_len,),
        shard_tokens=options.shard_tokens,
        pack=options.pack,
        job=job,
        chain=CHAIN.with_stage("near_dedup", after="dedup") if near else CHAIN,
        retried=retried,
        manifest_entries=stage.entries,
    )


def _has_qa_section(output: str) -> bool | None:
    """Whether an existing job manifest has its `qa` section (None: no readable manifest)."""
    raw = read_output_bytes(join(output, "manifest.json"))
    try:
        return None if raw is None else "qa" in json.loads(raw)
    except json.JSONDecodeError:
        return None


def _add_qa_section(output: str, seq_len: int, retried: Sequence[dict] | None) -> dict[str, Any]:
    """Moves the job's statistics into its manifest (the finalize stage wrote it without them),
    restates its stage counts in one unit per stage (in every dataset manifest too) and, after
    --retry-failures, counts the retry in failure rows (`qa.accounting`)."""
    raw_stats = read_output_bytes(join(output, STATS_FILE))
    if raw_stats is None:
        raise RuntimeError(f"{join(output, STATS_FILE)}: the job wrote no statistics")
    manifest = json.loads(read_output_bytes(join(output, "manifest.json")))
    manifest["qa"] = qa_summary(json.loads(raw_stats), seq_len)
    manifest["stages"] = stage_counts(manifest["stages"], manifest["qa"])
    if retried is not None:
        raw = read_output_bytes(join(output, FAILURES_FILE)) or b""
        now = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
        manifest["retry"] = retry_entry(retried, now, manifest["qa"]["generation"])
    for name in manifest["datasets"]:
        path = join(output, name, "manifest.json")
        dataset = json.loads(read_output_bytes(path))
        write_output_bytes(path, dumps_json({**dataset, "stages": manifest["stages"]}))
    write_output_bytes(join(output, "manifest.json"), dumps_json(manifest))
    delete_outputs([join(output, STATS_FILE)])
    return manifest


def _inputs_line(options: QAOptions, files: list[str]) -> str:
    """What the job reads, for its first progress line: input files, or a documents/ directory's shards."""
    if options.documents:
        return f"documents of {options.documents} ({len(files)} shard{'s' if len(files) != 1 else ''})"
    return f"{len(files)} input file{'s' if len(files) != 1 else ''}"


def prepare_qa(options: QAOptions) -> PreparedJob:
    """Reads the tokenizer, matches the inputs (or a documents/ directory), builds the job record
    with the generator's description; see `launch.PreparedJob`. The QA job resumes through its
    reply cache, not the work store, so `build` ignores receipts.

    Raises:
      FileNotFoundError: an input pattern matches nothing, or the tokenizer file is missing.
      TokenizerError: the tokenizer file is not a SentencePiece model.
      ValueError: `documents` is not a documents/ directory of this tokenizer.
    """
    tokenizer = read_tokenizer(options.tokenizer)
    files = _document_shards(options.documents, tokenizer) if options.documents else match_inputs(options.inputs)
    generator = make_generator(options.generator)
    job = job_record(
        options.recorded(),
        files,
        {**tokenizer.fingerprint(), "path": options.tokenizer},
        runner_lib.describe(options.runner, options.direct_running_mode),
    )
    job["generator"] = generator.describe()
    c = options.context
    return PreparedJob(
        files=files,
        job=job,
        build=lambda p, receipts=(), retried=None: build_pipeline(p, options, files, tokenizer, generator, job, retried),
        stages=STAGES,
        summary=f"{_inputs_line(options, files)}; tokenizer {tokenizer.name} ({tokenizer.vocab_size} pieces); generator "
        f"{job['generator']['kind']}; chunks of ~{c.chunk_tokens} tokens into contexts of {c.seq_len}; "
        f"reply cache {options.cache_directory}; runner {job['runner']}",
    )


def run_qa(options: QAOptions) -> dict[str, Any]:
    """Runs the QA job and waits for it.

    Returns:
      The job manifest (also written to `<output>/manifest.json`), with its `qa` section.

    Raises:
      FileNotFoundError: an input pattern matches nothing, or the tokenizer file is missing.
      TokenizerError: the tokenizer file is not a SentencePiece model.
      ValueError: `documents` is not a documents/ directory of this tokenizer.
      NoValidContextsError: no context was assembled (see failures.jsonl for why).
      CountMismatchError (via the runner): records were lost between stages.
    """
    log = progress_log(options.progress)
    beam_options = runner_lib.pipeline_options(  # first: storage flags apply to reading inputs too
        options.runner, options.direct_running_mode, options.direct_num_workers, options.beam_args
    )
    prepared = prepare_qa(options)
    files, job = prepared.files, prepared.job
    log(prepared.summary)
    force = options.force or _has_qa_section(options.output) is False  # a run that stopped before its last step
    # A retry runs the whole job again: the reply cache answers every request that succeeded
    # before, so only the failed chunks cost generator calls.
    retried = previous_failures(options.output) if options.retry_failures else None
    manifest = run_job(
        lambda p: prepared.build(p, (), retried),
        output=options.output,
        job=job,
        force=force,
        log=log,
        pipeline_options=beam_options,
        rerun=options.retry_failures,
        progress=progress_folder(options), stages=prepared.stages,
    )
    if "qa" not in manifest:
        manifest = _add_qa_section(options.output, options.context.seq_len, retried)
    g = manifest["qa"]["generation"]
    log(f"{g['calls']} generator calls, {g['cache_hits']} cache hits, {g['usage']['total_tokens']} tokens used")
    require_documents(manifest, NoValidContextsError, "no QA context assembled from", files, options.output)
    return manifest


register_dry_run(QAOptions, "qa", prepare_qa)
