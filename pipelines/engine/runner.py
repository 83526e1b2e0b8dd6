"""Beam pipeline options for lwmkit jobs, with a DirectRunner that never needs the network.

A plain `DirectRunner` may first try to download a Prism binary; naming the running mode
explicitly keeps it on the Python FnApiRunner. `multi_threading` is refused: it was seen to drop
elements on this project's machines, and lwmkit reconciles every count anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

DIRECT_MODES = ("in_memory", "multi_processing")


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
    args = [f"--runner={runner}", *extra]
    if runner == "DirectRunner":
        args.append(f"--direct_running_mode={mode}")
        if not any(a.startswith("--default_sdk_harness_log_level") for a in extra):
            args.append("--default_sdk_harness_log_level=WARNING")  # worker INFO lines drown progress
        if num_workers:
            args.append(f"--direct_num_workers={num_workers}")
    options = PipelineOptions(args)
    FileSystems.set_options(options)
    return options
