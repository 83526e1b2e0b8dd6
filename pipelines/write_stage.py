"""The stages every lwmkit job ends with: plan -> (pack windows) -> route -> write shards -> finalize.

A job's earlier stages produce `tokenized`, a PCollection of `(doc_id, payload)` (see
`shard_writing.doc_arrays` for the payload), plus its failures and counts outputs; this module turns
them into document and packed datasets, `failures.jsonl` and the manifests.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import apache_beam as beam
from lwmkit.pipelines.engine import work_store
from lwmkit.pipelines.engine.outputs import (
    delete_outputs,
    is_local,
    join,
    list_outputs,
    read_output_bytes,
)
from lwmkit.pipelines.engine.work_store import DEFAULT_UNIT_BYTES, SpillDoFn
from lwmkit.pipelines.finalize import FinalizeDoFn, StageChain
from lwmkit.pipelines.planning import (
    PackOptions,
    make_plan,
    merge_windows,
    pack_window_of,
    packing_windows,
)
from lwmkit.pipelines.shard_writing import RouteDoFn, WriteShardDoFn


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
):
    """Adds the spill, planning, writing and finalize stages; returns the finalize output.

    `tokenized` holds `(doc_id, payload)`, or with `spilled` already `(doc_id, reference)` from
    the work store (see `work_store.SpillDoFn`). `stored`: references of the documents an earlier
    run already put in the work store (`work_store.stored_documents`), merged in after the spill.
    `retried`: the earlier run's failure rows that this run processed again (the job manifest
    then says how many were recovered).
    """
    if not spilled:
        tokenized = tokenized | "spill" >> beam.ParDo(SpillDoFn(output, unit_bytes))
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
        )
    )


def progress_log(enabled: bool) -> Callable[[str], None]:
    """A function that prints `[lwm-pack] message` lines to stderr, or does nothing."""
    if not enabled:
        return lambda message: None
    return lambda message: print(f"[lwm-pack] {message}", file=sys.stderr, flush=True)


def job_record(options: dict[str, Any], input_files: list[str], tokenizer: dict | None, runner: str) -> dict[str, Any]:
    """What every manifest records about the job that made it (and what makes a rerun a no-op)."""
    from importlib.metadata import version

    return {
        "lwmkit_version": version("lwmkit"),
        "options": options,
        "input_files": input_files,
        "tokenizer": tokenizer,
        "runner": runner,
    }


def complete_output(output: str, job: dict[str, Any]) -> dict | None:
    """The existing job manifest if `output` is complete for the same inputs and options.

    Complete means: the job and every dataset manifest are there, were written for these inputs
    and options, and every shard they list exists with the listed size (one listing per dataset;
    `lwm-pack inspect` re-hashes them).
    """
    raw = read_output_bytes(join(output, "manifest.json"))
    if raw is None:
        return None
    try:
        old = json.loads(raw)
    except json.JSONDecodeError:
        return None
    same = all(old.get(k) == job[k] for k in ("options", "input_files", "tokenizer", "lwmkit_version"))
    if not same or not old.get("documents"):
        return None
    for dataset in old.get("datasets", {}):
        raw = read_output_bytes(join(output, dataset, "manifest.json"))
        if raw is None or _shards_missing(join(output, dataset), json.loads(raw)):
            return None
    return old


def _shards_missing(directory: str, manifest: dict[str, Any]) -> list[str]:
    """Shards a dataset manifest lists that are absent or of another size (one listing, no reads)."""
    found = {p.rsplit("/", 1)[-1]: size for p, size in _sizes(join(directory, "*.array_record-*"))}
    return [s["file"] for s in manifest.get("shards", []) if found.get(s["file"]) != s["bytes"]]


def _sizes(pattern: str) -> list[tuple[str, int]]:
    from apache_beam.io.filesystems import FileSystems

    return [(m.path, m.size_in_bytes) for r in FileSystems.match([pattern]) for m in r.metadata_list]


PACKING_OPTIONS = ("seq_lens", "shard_tokens", "pack")


def require_documents(manifest: dict[str, Any], error: type[Exception], lead: str, files: Sequence[str],
                      output: str) -> None:
    """Raises `error` when a job kept no document, naming its inputs and the failure reasons.

    The message reads "<lead> N input files (a, b, c, ...); failures: <stage:reason> xK, ...;
    see <output>/failures.jsonl".
    """
    if manifest["documents"]:
        return
    reasons = ", ".join(f"{k} x{v}" for k, v in manifest["failures"]["by_reason"].items()) or "none"
    raise error(
        f"{lead} {len(files)} input files ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''}); "
        f"failures: {reasons}; see {join(output, 'failures.jsonl')}"
    )


def work_identity(job: dict[str, Any]) -> dict[str, Any]:
    """What the work store's units depend on: the job's inputs, tokenizer, version and options,
    except the packing options (documents do not depend on them, so packing an output again to
    other lengths reuses its units)."""
    identity = {k: job[k] for k in ("lwmkit_version", "options", "input_files", "tokenizer")}
    identity["options"] = {k: v for k, v in job["options"].items() if k not in PACKING_OPTIONS}
    return identity


def run_job(
    build: Callable[[beam.Pipeline], Any],
    *,
    output: str,
    job: dict[str, Any],
    force: bool,
    log: Callable[[str], None],
    pipeline_options,
    identity: dict[str, Any] | None = None,
    keep_work: bool = False,
    rerun: bool = False,
) -> dict[str, Any]:
    """Runs a job unless its output is already complete; returns the job manifest.

    Before anything is rewritten, old manifests are withdrawn: a manifest marks a directory
    complete, so none may stand beside shards that are being replaced. The work store
    (`<output>/.work`, see `work_store.py`) is kept from an interrupted run of the same job
    (`identity`, by default `work_identity(job)`), emptied otherwise or with `force`, and deleted
    after success unless `keep_work` (and always when no document was kept). `rerun` runs even
    if the output is complete (e.g. to retry failures).
    """
    if not force and not rerun and (done := complete_output(output, job)):
        log(f"{output} is already complete for these inputs and options; nothing to do (--force rebuilds)")
        return done
    if is_local(output):
        os.makedirs(output, exist_ok=True)
    kept = work_store.prepare(output, identity or work_identity(job), fresh=force)
    if kept:
        log(f"resuming from {kept} work units of an earlier run in {work_store.work_dir(output)}")
    delete_outputs(list_outputs(join(output, "*", "manifest.json")) + [join(output, "manifest.json")])
    start = time.monotonic()
    with beam.Pipeline(options=pipeline_options) as p:
        build(p)
    log(f"finished in {time.monotonic() - start:.1f}s")
    manifest = json.loads(read_output_bytes(join(output, "manifest.json")))
    if not keep_work or not manifest["documents"]:  # a job that kept nothing leaves nothing worth keeping
        work_store.clear(output)
    return manifest
