"""A job's life: launched from its options, run unless its output is complete, checked when done.

A job module provides `prepare_<job>(options) -> PreparedJob`: it matches the inputs, reads the
tokenizer (and the VQGAN), builds the job record and returns a function that adds the job's
stages to a pipeline. `launch` runs it: `run_job` withdraws old manifests, keeps or empties the
work store (`work_store.py`) by the job's identity, runs the Beam pipeline and deletes the store
after success unless it is to be kept; `require_documents` fails a job that kept nothing. The
Dataflow dry run (`dataflow/dry_run.py`) builds the same graph from the same `PreparedJob`, so the two
cannot drift apart. A rerun whose output is already complete for the same inputs and options
(`complete_output`) returns at once.

This module imports Beam only when a pipeline runs, so a command can answer a no-op rerun of a
local output (`complete_output`, `answer_complete`) before Beam loads: each job's `options.py`
(`books/`, `images/`, `videos/`, `video_qa/`, `qa/`, `pack/`) has its `complete_<job>`.

Example (what `run_books` is):
    launch(options, prepare_books, NoValidDocumentsError, "no valid documents in")
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lwmkit.packing.records import FORMAT_VERSION
from lwmkit.packing.shards import dumps_json
from lwmkit.pipelines.engine import runner as runner_lib
from lwmkit.pipelines.engine.inputs import input_stats, local_matches
from lwmkit.pipelines.engine.output_lock import LOCK_DIR, OutputLock, lock_path, remove_stale_temps
from lwmkit.pipelines.engine.outputs import (
    delete_outputs,
    is_local,
    join,
    list_outputs,
    read_output_bytes,
    write_output_bytes,
)
from lwmkit.pipelines.engine.progress import ProgressWatch, progress_folder

COMPLETE = "{output} is already complete for these inputs and options; nothing to do (--force rebuilds)"


def progress_log(enabled: bool) -> Callable[[str], None]:
    """A function that prints `[lwm-pack] message` lines to stderr, or does nothing."""
    if not enabled:
        return lambda message: None
    return lambda message: print(f"[lwm-pack] {message}", file=sys.stderr, flush=True)


def stage_count_lines(stages: dict[str, dict[str, int]], order: Sequence[str]) -> list[str]:
    """One line per stage of a manifest's `stages` counts, in the job's stage order (stages not in
    `order` follow, sorted): records in, records out (a stage may emit several per input, as `read`
    does one file into many documents) and dropped."""
    names = [s for s in order if s in stages] + sorted(set(stages) - set(order))
    return [f"{s}: {stages[s]['seen']} in, {stages[s]['kept']} out, {stages[s]['dropped']} dropped" for s in names]


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


def inputs_record(output: str) -> str:
    """Where a finished job records its inputs' `input_stats` (what the complete check compares)."""
    return join(output, LOCK_DIR, "inputs.json")


def complete_output(output: str, job: dict[str, Any], stats: list | None = None) -> dict | None:
    """The existing job manifest if `output` is complete for the same inputs and options.

    Complete means: the job and every dataset manifest are there, were written for these inputs
    and options (compared in their JSON form, as the manifest records them), every input still
    has the size and modification time it had then (`stats`, `inputs.input_stats`; recorded in
    `<output>/.lwm-pack/inputs.json`), and every shard they list exists with the listed size (one
    listing per dataset; `lwm-pack inspect` re-hashes them).
    """
    raw = read_output_bytes(join(output, "manifest.json"))
    if raw is None:
        return None
    if stats is not None:
        recorded = read_output_bytes(inputs_record(output))
        if recorded is None or json.loads(recorded) != json.loads(dumps_json(stats)):
            return None
    try:
        old = json.loads(raw)
    except json.JSONDecodeError:
        return None
    keys = ("options", "input_files", "tokenizer", "lwmkit_version")
    recorded = json.loads(dumps_json({k: job[k] for k in keys}))  # as the manifest holds them: tuples are lists
    same = all(old.get(k) == recorded[k] for k in keys)
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
    if (paths := local_matches([pattern])) is not None:  # what Beam's local match finds, without Beam
        return [(path, os.path.getsize(path)) for path in paths]
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
    """What the work store's units depend on: the job's inputs, tokenizer, version, the record
    format and the options, except the packing options (documents do not depend on them, so packing
    an output again to other lengths reuses its units)."""
    identity = {k: job[k] for k in ("lwmkit_version", "options", "input_files", "tokenizer")}
    identity["options"] = {k: v for k, v in job["options"].items() if k not in PACKING_OPTIONS}
    identity["format_version"] = FORMAT_VERSION  # units of another format lack fields (a v1 unit: no kind)
    return identity


def retry_summary(manifest: dict[str, Any]) -> str | None:
    """The line a command prints after --retry-failures, from the job manifest's `retry` entry."""
    r = manifest.get("retry")
    if r is None:
        return None
    return f"retried {r['rows']} failed rows: {r['recovered']} recovered, {r['still_failing']} still failing"


def may_answer_complete(options: Any) -> bool:
    """Whether `answer_complete` could answer for `options` at all: a local output holding a job
    manifest and no lock, without `force` or `retry_failures` (a job without the latter, `pack`,
    never retries). Cheap (no input listing, no tokenizer), so a first run pays nothing for the
    no-op check."""
    output = options.output
    return not (options.force or getattr(options, "retry_failures", False) or not is_local(output)
                or os.path.exists(lock_path(output)) or not os.path.isfile(join(output, "manifest.json")))


def print_warnings(job: dict[str, Any]) -> None:
    """Prints the job record's `warnings` to stderr (e.g. a randomly initialised VQGAN), --quiet or not."""
    for warning in job.get("warnings", ()):
        print(f"[lwm-pack] WARNING: {warning}", file=sys.stderr, flush=True)


def answer_complete(options: Any, job: dict[str, Any], summary: str, stages: Sequence[str],
                    closing: Callable[[dict[str, Any]], Sequence[str]] | None = None) -> dict[str, Any] | None:
    """The no-op answer of a rerun over a complete local output, before Beam loads, or None.

    Returns the job manifest, having said what the full path says for it (the job record's
    warnings, which its `prepare` prints; the job's `summary`, the complete line, then the stage
    counts in the order of `stages`, or the lines `closing(manifest)` gives instead), when
    `complete_output(options.output, job, ...)` holds, no job holds the output's lock, and neither
    `force` nor `retry_failures` is set. None, and nothing said, for anything else, an
    object-store output included: the caller then runs the job, which checks again under the lock
    (it never answers differently for a complete output). `job` must be the record the job's
    `prepare` builds (e.g. `books.options.books_job`).
    """
    if not may_answer_complete(options):
        return None
    output = options.output
    done = complete_output(output, job, input_stats(job["input_files"]))
    if done:
        print_warnings(job)
        log = progress_log(options.progress)
        log(summary)
        log(COMPLETE.format(output=output))
        lines = closing(done) if closing else stage_count_lines(done.get("stages") or {}, stages)
        for line in lines:
            log(line)
    return done or None


def run_job(
    build: Callable[..., Any],
    *,
    output: str,
    job: dict[str, Any],
    force: bool,
    log: Callable[[str], None],
    pipeline_options,
    identity: dict[str, Any] | None = None,
    keep_work: bool = False,
    rerun: bool = False,
    num_workers: int = 0,
    progress: str | None = None,
    stages: Sequence[str] = (),
) -> dict[str, Any]:
    """Runs a job unless its output is already complete; returns the job manifest.

    Before anything is rewritten, old manifests are withdrawn: a manifest marks a directory
    complete, so none may stand beside shards that are being replaced. The work store
    (`<output>/.work`, see `work_store.py`) is kept from an interrupted run of the same job
    (`identity`, by default `work_identity(job)`), emptied otherwise or with `force`, and deleted
    after success unless `keep_work` (and always when no document was kept). `rerun` runs even
    if the output is complete (e.g. to retry failures). The whole run holds the output's lock
    (`output_lock.py`: a second job on the same output fails at once), and starts by removing the
    temporary files of earlier, killed runs. The work store's identity includes each input's
    size and modification time (`inputs.input_stats`), so changed inputs never meet stale units.
    `num_workers`: the size of the local cluster a Dask run without a scheduler address starts
    (`runner.running`). `progress`: the job's progress folder (`progress.progress_folder`), whose
    counts are shown in the order of `stages` while the pipeline runs (`progress.ProgressWatch`).
    """
    lock = OutputLock(output)
    if took_over := lock.acquire():
        log(took_over)
    try:
        return _run_locked(build, output=output, job=job, force=force, log=log, pipeline_options=pipeline_options,
                           identity=identity, keep_work=keep_work, rerun=rerun, lock=lock, num_workers=num_workers,
                           progress=progress, stages=stages)
    finally:
        lock.release()


def _run_locked(
    build, *, output, job, force, log, pipeline_options, identity, keep_work, rerun, lock, num_workers, progress, stages
) -> dict[str, Any]:
    import apache_beam as beam
    from lwmkit.pipelines.engine import work_store

    stats = input_stats(job["input_files"])
    if not force and not rerun and (done := complete_output(output, job, stats)):
        log(COMPLETE.format(output=output))
        return done
    if stale := remove_stale_temps(output):
        log(f"removed {len(stale)} temporary files of an earlier, interrupted run")
    kept = work_store.prepare(output, {**(identity or work_identity(job)), "input_stats": stats}, fresh=force)
    if kept:
        log(f"resuming from {kept} work units of an earlier run in {work_store.work_dir(output)}")
    delete_outputs(list_outputs(join(output, "*", "manifest.json")) + [join(output, "manifest.json")])
    start = time.monotonic()
    with (
        runner_lib.running(pipeline_options, num_workers),
        ProgressWatch(progress, stages),  # leaves after the pipeline, with its last counts
        beam.Pipeline(options=pipeline_options) as p,
    ):
        build(p)
    log(f"finished in {time.monotonic() - start:.1f}s")
    lock.check()
    write_output_bytes(inputs_record(output), dumps_json(stats))
    manifest = json.loads(read_output_bytes(join(output, "manifest.json")))
    if not keep_work or not manifest["documents"]:  # a job that kept nothing leaves nothing worth keeping
        work_store.clear(output)
    return manifest


@dataclass(frozen=True)
class PreparedJob:
    """A job as its launcher knows it before anything runs.

    Attributes:
      files: the matched inputs (sorted).
      job: the job record every manifest carries (options, inputs, tokenizer, runner, ...).
      build: `build(p, receipts=(), retried=None)` adds the job's stages to pipeline `p`; receipts
        are the work store's unit receipts to resume from, retried the earlier failure rows.
      stages: the job's named stages, in order.
      summary: one line for the progress log.
    """

    files: list[str]
    job: dict[str, Any]
    build: Callable[..., Any]
    stages: tuple[str, ...]
    summary: str


def launch(
    options: Any,
    prepare: Callable[[Any], PreparedJob],
    error: type[Exception],
    lead: str,
) -> dict[str, Any]:
    """Runs the job `options` describe and waits for it; returns the job manifest.

    Args:
      options: a job's options (`BooksOptions`, `ImagesOptions`, `VideosOptions`): output, runner
        fields, force, retry_failures and keep_work.
      prepare: the job's `prepare_<job>`.
      error, lead: what `require_documents` raises when no document was kept.

    Raises:
      What `prepare` raises (missing inputs, tokenizer or VQGAN), FileNotFoundError for
      `retry_failures` without an earlier run, `error`, and CountMismatchError via the runner.
    """
    from lwmkit.pipelines.engine.resume import previous_failures
    from lwmkit.pipelines.engine.work_store import receipt_paths

    log = progress_log(options.progress)
    beam_options = runner_lib.pipeline_options(  # first: storage flags apply to matching inputs too
        options.runner, options.direct_running_mode, options.direct_num_workers, options.beam_args
    )
    prepared = prepare(options)
    log(prepared.summary)
    retried = previous_failures(options.output) if options.retry_failures else None
    if retried is not None:
        log(f"retrying {len(retried)} failed rows of the previous run; what it kept comes from the work store")
    manifest = run_job(
        lambda p: prepared.build(p, receipt_paths(options.output), retried),
        output=options.output,
        job=prepared.job,
        force=options.force,
        log=log,
        pipeline_options=beam_options,
        identity=work_identity(prepared.job),
        keep_work=options.keep_work,
        rerun=options.retry_failures,
        num_workers=options.direct_num_workers,
        progress=progress_folder(options),
        stages=prepared.stages,
    )
    for line in stage_count_lines(manifest.get("stages") or {}, prepared.stages):
        log(line)  # the final counts, as the manifest records them
    require_documents(manifest, error, lead, prepared.files, options.output)
    return manifest
