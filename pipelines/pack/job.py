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
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from lwmkit.packing.manifest import load_manifest
from lwmkit.packing.records import KINDS, RecordError, decode_record
from lwmkit.packing.shards import read_shard
from lwmkit.pipelines.engine import runner as runner_lib
from lwmkit.pipelines.engine.lifecycle import job_record, progress_log, run_job
from lwmkit.pipelines.engine.outputs import is_local, join, read_output_bytes
from lwmkit.pipelines.engine.progress import progress_folder
from lwmkit.pipelines.engine.stages import Dropped, run_stage
from lwmkit.pipelines.writing.finalize import StageChain
from lwmkit.pipelines.writing.payload import compact_payload
from lwmkit.pipelines.writing.plan import PackOptions
from lwmkit.pipelines.writing.tail import write_datasets

SCHEDULES = {
    "lwm-text": (32768, 131072, 262144, 524288, 1048576),
    "lwm-vision": (1024, 8192, 32768, 131072, 1048576),
}
CHAIN = StageChain(stages=("read_documents",), links=(), last="read_documents")


@dataclass(frozen=True)
class StagesOptions(runner_lib.RunOptions):
    """Options of the stages job.

    Attributes:
      documents: a document dataset directory (the books job's `documents/`).
      output: output directory for the stage datasets.
      schedule: the stages' seq_lens, e.g. (32768, 131072), or a name in SCHEDULES via `parse`.
      min_doc_tokens: per stage, pack only documents with at least this many tokens (default 0).
      shard_tokens, pack, runner, direct_running_mode, direct_num_workers, progress, beam_args,
      force: as for the books job.
    """

    documents: str
    output: str
    schedule: tuple[int, ...]
    min_doc_tokens: tuple[int, ...] = ()
    shard_tokens: int = 1 << 24
    pack: PackOptions = field(default_factory=PackOptions)

    def __post_init__(self):
        if not self.schedule:
            raise ValueError("schedule: give at least one stage length")
        if list(self.schedule) != sorted(set(self.schedule)):
            raise ValueError(f"schedule: {self.schedule} must rise strictly, like 32768,131072")
        for n in self.schedule:
            if not 2 <= n <= 1 << 24:
                raise ValueError(f"schedule: {n} is outside 2..{1 << 24}")
        if self.min_doc_tokens and len(self.min_doc_tokens) != len(self.schedule):
            raise ValueError(
                f"min_doc_tokens: {len(self.min_doc_tokens)} values for {len(self.schedule)} stages; give one per stage"
            )
        if any(m < 0 for m in self.min_doc_tokens):
            raise ValueError(f"min_doc_tokens: {self.min_doc_tokens} must be >= 0")
        super().__post_init__()

    def per_stage_minimum(self) -> dict[int, int]:
        return dict(zip(self.schedule, self.min_doc_tokens or [0] * len(self.schedule), strict=True))

    def recorded(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "schedule": list(self.schedule),
            "min_doc_tokens": list(self.min_doc_tokens),
            "shard_tokens": self.shard_tokens,
            "pack": self.pack.to_json(),
        }


def parse_schedule(text: str) -> tuple[int, ...]:
    """A schedule from a name in SCHEDULES or comma-separated lengths.

    Raises:
      ValueError: listing the named schedules when the text is neither.
    """
    if text in SCHEDULES:
        return SCHEDULES[text]
    try:
        return tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise ValueError(f"schedule {text!r} is not a list of lengths nor one of {sorted(SCHEDULES)}") from e


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
    source = load_manifest(options.documents)
    if source["kind"] != "document":
        raise ValueError(f"{options.documents}: holds {source['kind']} records; `pack` reads a documents/ directory")
    shards = [join(options.documents, s["file"]) for s in source["shards"]]
    job = job_record(
        options.recorded(),
        [s["file"] + ":" + s["sha256"] for s in source["shards"]],
        source.get("tokenizer"),
        runner_lib.describe(options.runner, options.direct_running_mode),
    )
    log(f"{len(shards)} document shards, {source['documents']} documents; stages {list(options.schedule)}")

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
