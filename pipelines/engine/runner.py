"""Beam pipeline options for lwmkit jobs, with a DirectRunner that never needs the network.

A plain `DirectRunner` may first try to download a Prism binary; naming the running mode
explicitly keeps it on the Python FnApiRunner. `multi_threading` is refused: it was seen to drop
elements on this project's machines, and lwmkit reconciles every count anyway.

`DaskRunner` is accepted as a short name for Beam's `apache_beam.runners.dask.dask_runner.DaskRunner`
(Beam knows it only by its full path). Its scheduler is Beam's `--dask_client_address`; without one,
`running` starts a `distributed.LocalCluster` on 127.0.0.1 (`num_workers` processes, default 2, one
thread each) for the run and stops it afterwards, together with the client Beam opened.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

DIRECT_MODES = ("in_memory", "multi_processing")
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
RUNNER_NAMES = {"DaskRunner": DASK_RUNNER}


def check_direct_mode(mode: str) -> None:
    """Raises ValueError for a DirectRunner mode lwmkit does not run."""
    if mode not in DIRECT_MODES:
        raise ValueError(f"direct_running_mode: {mode!r} is not one of {list(DIRECT_MODES)}")


def describe(runner: str, mode: str) -> str:
    return f"DirectRunner ({mode})" if runner == "DirectRunner" else runner


def pipeline_options(runner: str, mode: str, num_workers: int, extra: Sequence[str] = ()):
    """PipelineOptions for `runner`; extra Beam flags (e.g. Dataflow's --project) pass through.

    Also hands the options to Beam's `FileSystems` in this process, so the launcher's own reads
    and writes (matching inputs, checking for complete outputs) use the same storage flags as the
    workers (e.g. `--s3_endpoint_url`, `--s3_access_key_id`). Call it before touching inputs.
    """
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    check_direct_mode(mode)
    args = [f"--runner={RUNNER_NAMES.get(runner, runner)}", *extra]
    if runner == "DirectRunner":
        args.append(f"--direct_running_mode={mode}")
        if not any(a.startswith("--default_sdk_harness_log_level") for a in extra):
            args.append("--default_sdk_harness_log_level=WARNING")  # worker INFO lines drown progress
        if num_workers:
            args.append(f"--direct_num_workers={num_workers}")
    options = PipelineOptions(args)
    FileSystems.set_options(options)
    return options


def is_dask(options) -> bool:
    from apache_beam.options.pipeline_options import StandardOptions

    return options.view_as(StandardOptions).runner in ("DaskRunner", DASK_RUNNER)


def finish_bundle_outputs_kept(options) -> bool:
    """False for Beam 2.77's Dask runner, which collects a bundle's outputs before it calls the
    DoFn's `finish_bundle` (`apache_beam.runners.dask.transform_evaluator.apply_dofn_to_bundle`),
    so whatever `finish_bundle` emits is lost; a DoFn that buffers must then flush per element."""
    return not is_dask(options)


@contextlib.contextmanager
def running(options, num_workers: int = 0) -> Iterator[None]:
    """Around a pipeline run: for the Dask runner without a scheduler address, a local cluster.

    The cluster (processes on 127.0.0.1, no dashboard) serves this run only; on the way out the
    Dask clients this process opened are closed, then the cluster.
    """
    if not is_dask(options):
        yield
        return
    from apache_beam.runners.dask.dask_runner import DaskOptions
    from distributed import Client, LocalCluster

    dask = options.view_as(DaskOptions)
    if dask.address or dask.scheduler_file:
        yield
        return
    workers = num_workers or 2
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.WARNING) as cluster:
        dask.address = cluster.scheduler_address
        try:
            yield
        finally:
            dask.address = None
            with contextlib.suppress(ValueError):
                while (client := Client.current(allow_global=True)) is not None:
                    client.close()


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How and where a job runs, not what it makes: the fields every job's options carry.

    A job's options class derives from it (keyword-only fields, after the job's own) and calls
    `super().__post_init__()`; none of these fields is recorded in the manifest.

    Attributes:
      runner: Beam runner name.
      direct_running_mode: DirectRunner mode, `in_memory` or `multi_processing`.
      direct_num_workers: DirectRunner worker count (0: Beam's default).
      progress: print stage progress to stderr.
      beam_args: further Beam pipeline options, e.g. ('--project=p', '--region=r').
      force: rebuild even if the output is already complete for these inputs and options (this
        also empties the work store).
    """

    runner: str = "DirectRunner"
    direct_running_mode: str = "in_memory"
    direct_num_workers: int = 0
    progress: bool = False
    beam_args: tuple[str, ...] = ()
    force: bool = False

    def __post_init__(self):
        check_direct_mode(self.direct_running_mode)


@dataclass(frozen=True, kw_only=True)
class ResumeOptions(RunOptions):
    """`RunOptions` of a job that resumes from its work store and retries its failures.

    Attributes:
      retry_failures: run again over a finished output, processing only the rows its
        failures.jsonl lists (every other document comes from the work store) and merging them.
      keep_work: keep the work store (`<output>/.work`: the tokenized documents) after success,
        so that `retry_failures` and other packing options cost no tokenization.
    """

    retry_failures: bool = False
    keep_work: bool = True
