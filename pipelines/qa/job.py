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

import json
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from lwmkit.packing.shards import dumps_json
from lwmkit.pipelines.books import job as books_job
from lwmkit.pipelines.books.job import LengthFilter, keep_first, match_inputs, normalize
from lwmkit.pipelines.books.sources import read_documents
from lwmkit.pipelines.engine import runner as runner_lib
from lwmkit.pipelines.engine.dataflow import register_dry_run
from lwmkit.pipelines.engine.inputs import read_tokenizer
from lwmkit.pipelines.engine.lifecycle import (
    PreparedJob,
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
from lwmkit.pipelines.qa.options import (
    STAGES,
    QAOptions,
    document_shards,
    generation_line,
    has_qa_section,
    make_generator,
    qa_job,
    qa_job_summary,
)
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
from lwmkit.pipelines.writing.tail import write_datasets

# generate receives batches of books and yields one per book
CHAIN = StageChain(STAGES, stage_links(STAGES), last="assemble", grouped=("dedup", "generate"))
STATS_FILE = "qa_stats.json"


class NoValidContextsError(ValueError):
    """The job read its inputs but assembled no context."""


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
    files = document_shards(options.documents, tokenizer) if options.documents else match_inputs(options.inputs)
    generator = make_generator(options.generator)
    job = qa_job(options, files, tokenizer, generator)
    return PreparedJob(
        files=files,
        job=job,
        build=lambda p, receipts=(), retried=None: build_pipeline(p, options, files, tokenizer, generator, job, retried),
        stages=STAGES,
        summary=qa_job_summary(options, files, tokenizer, job),
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
    force = options.force or has_qa_section(options.output) is False  # a run that stopped before its last step
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
    log(generation_line(manifest))
    require_documents(manifest, NoValidContextsError, "no QA context assembled from", files, options.output)
    return manifest


register_dry_run(QAOptions, "qa", prepare_qa)
