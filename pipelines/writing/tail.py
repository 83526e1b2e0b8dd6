"""The write tail every lwmkit job ends with: spill -> plan -> (pack windows) -> route -> write shards -> finalize.

A job's earlier stages produce `tokenized`, a PCollection of `(doc_id, payload)` (see
`writing.payload.doc_arrays` for the payload), plus its failures and counts outputs; `write_datasets`
turns them into document and packed datasets, `failures.jsonl` and the manifests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from lwmkit.pipelines.engine.work_store import DEFAULT_UNIT_BYTES, spill
from lwmkit.pipelines.writing.finalize import FinalizeDoFn, StageChain
from lwmkit.pipelines.writing.plan import (
    PackOptions,
    make_plan,
    merge_windows,
    pack_window_of,
    packing_windows,
)
from lwmkit.pipelines.writing.shards import RouteDoFn, WriteShardDoFn


def index_entry(item: tuple[int, dict]) -> dict[str, Any]:
    """The small per-document tuple the plan is built from (from a work-store reference)."""
    doc_id, ref = item
    return {
        "doc_id": doc_id,
        "file": ref["file"],
        "line": ref["line"],
        "chars": ref["chars"],
        "tokens": ref["num_tokens"],
        "meta": ref["meta"],
        "spans": ref.get("atomic_spans"),
        "shape": ref.get("shape"),
    }


def write_datasets(
    p: beam.Pipeline,
    tokenized,
    failures: list,
    counts: list,
    *,
    output: str,
    seq_lens: Sequence[int],
    shard_tokens: int,
    pack: PackOptions,
    job: dict[str, Any],
    chain: StageChain,
    kind: str = "job",
    write_documents: bool = True,
    min_doc_tokens: dict[int, int] | None = None,
    spilled: bool = False,
    unit_bytes: int = DEFAULT_UNIT_BYTES,
    retried: Sequence[dict] | None = None,
    stored=None,
    manifest_entries: Sequence | None = None,
):
    """Adds the spill, planning, writing and finalize stages; returns the finalize output.

    `tokenized` holds `(doc_id, payload)`, or with `spilled` already `(doc_id, reference)` from
    the work store (see `work_store.spill`). `stored`: references of the documents an earlier
    run already put in the work store (`work_store.stored_documents`), merged in after the spill.
    `retried`: the earlier run's failure rows that this run processed again (the job manifest
    then says how many were recovered). `manifest_entries`: PCollections of `(key, value)` the job
    manifest adds (e.g. near-dedup's parameters and histogram).
    """
    if not spilled:
        tokenized = spill(tokenized, output, unit_bytes)  # on Dask, one work unit per document
    if stored is not None:  # documents already in the work store, from an earlier run
        tokenized = (tokenized, stored) | "new and stored" >> beam.Flatten()
    plan = (
        tokenized
        | "index" >> beam.Map(index_entry)
        | "gather index" >> beam.combiners.ToList()
        | "plan"
        >> beam.Map(
            make_plan, seq_lens, shard_tokens, pack, write_documents=write_documents, min_doc_tokens=min_doc_tokens
        )
    )
    if pack.window is not None:
        # The distributed form: every window is packed by its own worker, then merged and topped up.
        windows = (
            plan
            | "windows" >> beam.FlatMap(packing_windows, pack)
            | "spread windows" >> beam.Reshuffle()
            | "pack windows" >> beam.Map(pack_window_of, beam.pvalue.AsSingleton(plan), pack)
            | "group windows" >> beam.GroupByKey()
        )
        plan = plan | "merge windows" >> beam.Map(
            merge_windows, beam.pvalue.AsDict(windows), pack, shard_tokens
        )
    shards = (
        tokenized
        | "route pieces" >> beam.ParDo(RouteDoFn(), plan=beam.pvalue.AsSingleton(plan))
        | "group by shard" >> beam.GroupByKey()
        | "write shards" >> beam.ParDo(WriteShardDoFn(output, pack))
    )
    all_failures = failures | "all failures" >> beam.Flatten()
    all_counts = counts | "all counts" >> beam.Flatten()
    entries = list(manifest_entries or ()) or [p | "no manifest entries" >> beam.Create([])]
    all_entries = entries | "all manifest entries" >> beam.Flatten()
    return (
        p
        | "finalize trigger" >> beam.Create([None])
        | "finalize"
        >> beam.ParDo(
            FinalizeDoFn(output, job, chain, pack, kind, retried),
            plan=beam.pvalue.AsSingleton(plan),
            shards=beam.pvalue.AsList(shards),
            failures=beam.pvalue.AsList(all_failures),
            counts=beam.pvalue.AsList(all_counts),
            entries=beam.pvalue.AsList(all_entries),
        )
    )


def write_job_datasets(p: beam.Pipeline, tokenized, failures: list, counts: list, options: Any, **rest):
    """`write_datasets` for a job whose options carry `output`, `seq_lens`, `shard_tokens` and `pack`.

    Example (the end of the books job): write_job_datasets(p, kept, failures, counts, options,
    job=job, chain=CHAIN, spilled=True, retried=retried)
    """
    return write_datasets(
        p, tokenized, failures, counts, output=options.output, seq_lens=options.seq_lens,
        shard_tokens=options.shard_tokens, pack=options.pack, **rest,
    )
