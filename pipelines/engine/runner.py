"""Beam pipeline options for lwmkit jobs, with a DirectRunner that never needs the network.

A plain `DirectRunner` may first try to download a Prism binary; naming the running mode
explicitly keeps it on the Python FnApiRunner. `multi_threading` is refused: it was seen to drop
elements on this project's machines, and lwmkit reconciles every count anyway.

`DaskRunner` is accepted as a short name for Beam's `apache_beam.runners.dask.dask_runner.DaskRunner`
(Beam knows it only by its full path). Its scheduler is Beam's `--dask_client_address`; without one,
`running` starts a `distributed.LocalCluster` on 127.0.0.1 (`num_workers` processes, default 2, one
thread each) for the run and stops it afterwards, together with the client Beam opened. While a
Dask run is built and runs, `fresh_receivers` gives each of its bundles its own output receiver
and keeps what `finish_bundle` emits (Beam 2.77 does neither; see the section below).
"""

from __future__ import annotations

import contextlib
import logging
import typing as t
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
    so whatever `finish_bundle` emits is lost; a DoFn that buffers must then flush per element.

    Still False under `running`, whose `fresh_receivers` keeps those outputs: lwmkit's own DoFns
    do not depend on the fix, which a Dask pipeline run outside `running` lacks."""
    return not is_dask(options)


@contextlib.contextmanager
def running(options, num_workers: int = 0) -> Iterator[None]:
    """Around a pipeline run: for the Dask runner, its compatibility fix and, without a scheduler
    address, a local cluster.

    The fix (`fresh_receivers`) gives every partition of a ParDo its own output receiver, keeps
    what `finish_bundle` emits and runs every branch of the graph; Beam 2.77 shares one receiver
    (partitions then repeat earlier partitions' outputs), drops those outputs and computes only
    the last branch. The cluster (processes on 127.0.0.1, no dashboard) serves this run only; on the way out the Dask
    clients this process opened are closed, then the cluster.
    """
    if not is_dask(options):
        yield
        return
    with fresh_receivers():
        yield from _dask_cluster(options, num_workers)


def _dask_cluster(options, num_workers: int) -> Iterator[None]:
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


# -- Beam 2.77's Dask runner: a compatibility fix ---------------------------------------------
#
# Beam's `apache_beam.runners.dask.transform_evaluator.ParDo.apply` builds ONE `OneReceiver` (a
# list of outputs) per ParDo when the graph is built and hands it, with an `_OutputHandler` that
# appends to it, to `apply_dofn_to_bundle` for every partition. That function never empties the
# list, so every partition that runs against the same deserialized receiver (a worker computing a
# side input's bag inside another task does) returns the outputs of the partitions before it
# again: records repeat. It also takes a bundle's outputs before it calls `finish_bundle`, so what
# that emits is lost: `BatchElements` (inside RunInference) flushes its last, short batch there.
#
# `fresh_receivers()` swaps the runner's ParDo translation for `FreshReceiverParDo`, which builds
# the same graph except that each partition calls `apply_dofn_to_fresh_bundle`: Beam's
# `apply_dofn_to_bundle` with a new receiver and output handler per call, and the outputs taken
# after `finish_bundle`. Nothing inside Beam is patched; a Dask worker imports
# `apply_dofn_to_fresh_bundle` from this module by reference, so the fix reaches every worker with
# nothing installed there. Only the Dask runner's translation table changes, and only while
# `running` runs a Dask job; other runners never read it. Remove this section when Beam's Dask
# runner makes its receiver per bundle and keeps `finish_bundle`'s outputs
# (tests/pipelines/test_dask_receivers.py then fails).


def apply_dofn_to_fresh_bundle(items, signature, window_fn, do_fn_invoker_kwargs):
    """Beam's `apply_dofn_to_bundle` over one partition, with a receiver of its own, returning
    what `finish_bundle` emitted too."""
    from apache_beam.runners.common import DoFnInvoker, _OutputHandler
    from apache_beam.runners.dask.transform_evaluator import OneReceiver

    receivers = OneReceiver()
    handler = _OutputHandler(
        window_fn=window_fn,
        main_receivers=receivers[None],
        tagged_receivers=receivers,
        per_element_output_counter=None,
        output_batch_converter=None,
        process_yields_batches=False,
        process_batch_yields_elements=False,
    )
    invoker = DoFnInvoker.create_invoker(signature, handler, **do_fn_invoker_kwargs)
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(item)
    invoker.invoke_finish_bundle()  # Beam takes the outputs before this call, losing what it emits
    results = [v.value for v in receivers.values]
    invoker.invoke_teardown()
    return results


def _fresh_receiver_pardo():
    import apache_beam
    from apache_beam import DoFn
    from apache_beam.runners.common import DoFnContext, DoFnSignature
    from apache_beam.runners.dask.transform_evaluator import ParDo, get_windowed_value

    class FreshReceiverParDo(ParDo):
        """Beam 2.77's Dask `ParDo` translation, less its one receiver shared by all partitions."""

        def apply(self, input_bag, side_inputs=None):
            transform = t.cast(apache_beam.ParDo, self.transform)
            args, kwargs = transform.raw_side_inputs
            main_input = next(iter(self.applied.main_inputs.values()))
            window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
            do_fn_invoker_kwargs = dict(
                context=DoFnContext(transform.label, state=None),
                side_inputs=side_inputs,
                input_args=list(args),
                input_kwargs=kwargs,
                user_state_context=None,
                bundle_finalizer_param=DoFn.BundleFinalizerParam(),
            )
            return input_bag.map(get_windowed_value, window_fn).map_partitions(
                apply_dofn_to_fresh_bundle, DoFnSignature(transform.fn), window_fn, do_fn_invoker_kwargs
            )

    return FreshReceiverParDo


def leaf_bags(bags: dict) -> list:
    """The bags of the transforms whose outputs nothing consumes (main or side input): every branch
    of the graph ends in one of them."""
    consumed = set()
    for node in bags:
        for pcoll in [*node.inputs, *(si.pvalue for si in node.side_inputs)]:
            consumed.add(id(getattr(pcoll, "producer", None)))
    return [bag for node, bag in bags.items() if id(node) not in consumed]


def _run_every_branch(self, pipeline, options):
    """Beam 2.77's `DaskRunner.run_pipeline`, computing every leaf bag instead of the last one only
    (it computes "just the last value", so a branch that ends elsewhere never runs)."""
    import dask
    import dask.distributed as ddist
    from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunnerResult
    from apache_beam.runners.dask.overrides import dask_overrides

    dask_options = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
    bag_kwargs = DaskOptions._extract_bag_kwargs(dask_options)
    client = ddist.Client(**dask_options)
    pipeline.replace_all(dask_overrides())
    visitor = self.to_dask_bag_visitor(bag_kwargs)
    pipeline.visit(visitor)
    futures = client.compute(list(dask.optimize(*leaf_bags(visitor.bags))))
    return DaskRunnerResult(client, futures)


@contextlib.contextmanager
def fresh_receivers() -> Iterator[None]:
    """While inside: the Dask runner translates a ParDo with `FreshReceiverParDo` and runs every
    branch of the graph (`_run_every_branch`)."""
    import apache_beam
    from apache_beam.runners.dask.dask_runner import DaskRunner
    from apache_beam.runners.dask.transform_evaluator import TRANSLATIONS

    before, run_before = TRANSLATIONS[apache_beam.ParDo], DaskRunner.run_pipeline
    TRANSLATIONS[apache_beam.ParDo] = _fresh_receiver_pardo()
    DaskRunner.run_pipeline = _run_every_branch
    try:
        yield
    finally:
        TRANSLATIONS[apache_beam.ParDo] = before
        DaskRunner.run_pipeline = run_before


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
