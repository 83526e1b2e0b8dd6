"""The stages job: pack existing document shards into every stage of a progressive context schedule.

LWM trained with rising context: 32K -> 128K -> 256K -> 512K -> 1M tokens for text and
1K -> 8K -> 32K -> 128K -> 1M for vision-language. This job reads a `documents/` directory once and
writes one packed dataset per stage, with a stage manifest (`kind: "stages"`) holding per-stage
token counts, fill, the recommended RoPE theta and how many documents are long enough to fill a
stage. `--min-doc-tokens` keeps, per stage, only documents that need that much context.

Stages: read_documents -> plan -> write shards -> finalize. Output:
    <output>/packed-<seq_len>/   one packed dataset per stage
    <output>/manifest.json       kind "stages", with `stages_schedule`
    <output>/failures.jsonl      documents a long-document policy kept out of a stage

Run (LWM's text schedule on the demo's documents):
    lwm-pack pack --documents /tmp/lwm-demo/shards/documents --schedule 2048,8192,32768 \
        --output /tmp/lwm-demo/stages
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from lwmkit.packing.records import KINDS, RecordError, decode_record
from lwmkit.packing.shards import read_shard
from lwmkit.pipelines.engine import runner as runner_lib
from lwmkit.pipelines.engine.lifecycle import progress_log, run_job
from lwmkit.pipelines.engine.outputs import is_local, read_output_bytes
from lwmkit.pipelines.engine.progress import progress_folder
from lwmkit.pipelines.engine.stages import Dropped, run_stage
from lwmkit.pipelines.pack.options import SCHEDULES as SCHEDULES
from lwmkit.pipelines.pack.options import (
    STAGES,
    StagesOptions,
    read_source,
    stages_job,
    stages_summary,
)
from lwmkit.pipelines.pack.options import parse_schedule as parse_schedule
from lwmkit.pipelines.writing.finalize import StageChain
from lwmkit.pipelines.writing.payload import compact_payload
from lwmkit.pipelines.writing.tail import write_datasets

CHAIN = StageChain(stages=STAGES, links=(), last="read_documents")


def _local_copy(path: str, scratch: str) -> str:
    if is_local(path):
        return path
    local = os.path.join(scratch, os.path.basename(path))
    with open(local, "wb") as f:
        f.write(read_output_bytes(path) or b"")
    return local


def read_document_records(path: str) -> Iterator[dict[str, Any] | Dropped]:
    """The decoded records of one document shard (local, or remote and copied to local scratch
    first), and a `Dropped` for each record that does not decode or is not a document record."""
    with tempfile.TemporaryDirectory(prefix="lwmkit-docs-") as scratch:
        for i, data in enumerate(read_shard(_local_copy(path, scratch))):
            try:
                rec = decode_record(data)
            except RecordError as e:
                yield Dropped("bad_record", str(e), path, i + 1)
                continue
            if KINDS[rec["format"]] != "document":  # v1 documents too: their kind is derived
                yield Dropped("not_a_document", rec["format"], path, i + 1)
                continue
            yield rec


class ReadDocumentShard:
    """Reads one document shard; yields (doc_id, payload), or a Dropped for a record it cannot decode."""

    def __call__(self, path: str) -> Iterator[tuple[int, dict] | Dropped]:
        for rec in read_document_records(path):
            yield rec if isinstance(rec, Dropped) else (rec["doc_id"], compact_payload(rec))


def run_stages(options: StagesOptions) -> dict[str, Any]:
    """Packs a document directory into every stage of the schedule and waits for the job.

    Returns:
      The stage job's manifest (kind "stages").

    Raises:
      ManifestError: the documents directory has no readable manifest.
      ValueError: it does not hold document records.
    """
    log = progress_log(options.progress)
    source, shards = read_source(options)
    job = stages_job(options, source)
    log(stages_summary(options, source, shards))

    def build(p: beam.Pipeline):
        paths = p | "document shards" >> beam.Create(shards) | "spread shards" >> beam.Reshuffle()
        docs, failures, counts = run_stage(paths, "read_documents", ReadDocumentShard(), progress_folder(options))
        return write_datasets(
            p,
            docs,
            [failures],
            [counts],
            output=options.output,
            seq_lens=options.schedule,
            shard_tokens=options.shard_tokens,
            pack=options.pack,
            job=job,
            chain=CHAIN,
            kind="stages",
            write_documents=False,
            min_doc_tokens=options.per_stage_minimum(),
        )

    return run_job(
        build,
        output=options.output,
        job=job,
        force=options.force,
        log=log,
        pipeline_options=runner_lib.pipeline_options(
            options.runner, options.direct_running_mode, options.direct_num_workers, options.beam_args
        ),
        progress=progress_folder(options),
        stages=CHAIN.stages,
    )
