"""Launching a job: one path from options to a finished, checked output, shared by every job.

A job module provides `prepare_<job>(options) -> PreparedJob`: it matches the inputs, reads the
tokenizer (and the VQGAN), builds the job record and returns a function that adds the job's
stages to a pipeline. `launch` runs it (resume from the work store, `--retry-failures`, the
no-documents check); the Dataflow dry run (`dataflow.py`) builds the same graph from the same
`PreparedJob`, so the two cannot drift apart.

Example (what `run_books` is):
    launch(options, prepare_books, NoValidDocumentsError, "no valid documents in")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lwmkit.pipelines.engine import runner as runner_lib
from lwmkit.pipelines.engine.resume import previous_failures
from lwmkit.pipelines.engine.work_store import receipt_paths
from lwmkit.pipelines.write_stage import progress_log, require_documents, run_job, work_identity


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
    )
    require_documents(manifest, error, lead, prepared.files, options.output)
    return manifest
