"""Dataflow dry runs: build a job for the DataflowRunner and check it, submitting nothing.

`lwm-pack books|images|videos|qa ... --runner DataflowRunner --dry_run=True` ends here instead of
running the job. Beam's `--dry_run` makes the DataflowRunner do everything up to the request it
would send (its overrides, the portable graph with its coders, the worker environment and its
artifacts, prepared locally but not uploaded), and lwmkit checks what it can without a project:
every DoFn pickles and unpickles, the graph holds every named stage of the job
(`graph.py`), and the options can work on workers (lwmkit is packaged for them, no path
is local, GPU workers have an image). With `--dataflow_job_file=PATH` the job request Dataflow
would receive and the Beam pipeline it would stage are written to PATH. The launcher reads what a
real launch reads (the inputs' listing, the tokenizer, the VQGAN), so with local files for those
the dry run needs no credentials and no network; nothing is read or written at the output.

Not checked (only a submitted job finds out): quota, IAM and bucket access, and whether the
workers start (install lwmkit, find a GPU).

Example (prints a report like the one below and writes job.json):
    lwm-pack books --input 'books/*.jsonl.zst' --tokenizer tokenizer.model --output gs://bucket/out \\
        --runner DataflowRunner --project my-project --region us-central1 \\
        --temp_location gs://bucket/tmp --sdk_container_image IMAGE --dry_run=True \\
        --dataflow_job_file job.json
    dry run of the books job on DataflowRunner: graph built and checked, nothing submitted or written
      stages:   read -> normalize -> filter -> tokenize -> dedup -> plan -> write shards -> finalize
      ...
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from lwmkit.pipelines.engine.lifecycle import PreparedJob

# Every job ends with these stages (`writing.tail.write_datasets`).
FINAL_STAGES = ("plan", "write shards", "finalize")
NOT_CHECKED = "quota, IAM and bucket access, worker start-up (installing lwmkit, finding a GPU)"
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


@dataclass(frozen=True)
class GraphReport:
    """What a dry run built and checked.

    Attributes:
      job: the job's kind (books, images, videos, qa).
      job_name: the Dataflow job name.
      stages: the job's named stages, in order; every one is in the graph.
      transforms: transforms in the Beam pipeline Dataflow would stage.
      dofns: DoFns that pickled and unpickled.
      pickler: the pickle library the workers will use.
      workers: worker settings Dataflow would get (image, machine type, service options, artifacts).
      job_file: where the job request was written, or None.
      warnings: what would make a submitted job fail or crawl (local paths, no lwmkit on workers, ...).
    """

    job: str
    job_name: str
    stages: tuple[str, ...]
    transforms: int
    dofns: int
    pickler: str
    workers: dict[str, Any]
    job_file: str | None
    warnings: tuple[str, ...]

    def lines(self) -> list[str]:
        w = self.workers
        workers = [f"image {', '.join(w['images']) or 'Beam default'}"]
        if w.get("machine_type"):
            workers.append(f"machine {w['machine_type']}")
        if w.get("service_options"):
            workers.append(f"service options {'; '.join(w['service_options'])}")
        workers.append(f"artifacts {', '.join(w['artifacts']) or 'none'}")
        out = [
            f"dry run of the {self.job} job on DataflowRunner: graph built and checked, nothing submitted or written",
            f"  job:      {self.job_name}",
            f"  stages:   {' -> '.join(self.stages)} ({self.transforms} transforms in all)",
            f"  pickling: {self.dofns} DoFns pickle and unpickle ({self.pickler})",
            f"  workers:  {'; '.join(workers)}",
            f"  job file: {self.job_file or 'not written (add --dataflow_job_file=PATH)'}",
            f"  not checked: {NOT_CHECKED}",
        ]
        return out + [f"  warning:  {message}" for message in self.warnings]


def dry_run_requested(beam_args: Sequence[str]) -> bool:
    """Whether Beam's `--dry_run` is among the job's Beam options.

    Raises:
      ValueError: for `--dry_run=False` (Beam reads any value as true) or a value that is not a boolean.
    """
    value = None
    for i, arg in enumerate(beam_args):
        if arg == "--dry_run":
            value = beam_args[i + 1] if i + 1 < len(beam_args) else ""
        elif arg.startswith("--dry_run="):
            value = arg.split("=", 1)[1]
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        raise ValueError(
            f"--dry_run={value}: Beam would treat it as true; leave the flag out to run the job"
        )
    raise ValueError(f"--dry_run={value!r}: give --dry_run=True")


def dry_run_instead(options: Any, out: TextIO | None = None) -> bool:
    """If the job's Beam options ask for a dry run, does it and prints the report; says whether it did.

    What `lwm-pack books|images|videos|qa` call before running a job.
    """
    if not dry_run_requested(options.beam_args):
        return False
    print("\n".join(dry_run(options).lines()), file=out or sys.stdout)
    return True


def dry_run(options: Any) -> GraphReport:
    """Builds and checks the graph of the job `options` describe on the DataflowRunner; submits nothing.

    Args:
      options: `BooksOptions`, `ImagesOptions`, `VideosOptions` or `QAOptions` with
        `runner="DataflowRunner"` and the Dataflow flags (`--project`, `--region`,
        `--temp_location`, `--dry_run=True`, optionally `--dataflow_job_file=PATH`) in `beam_args`.

    Returns:
      What was built and checked, with warnings about options that would fail on workers.

    Raises:
      ValueError: another runner, invalid Dataflow options (Beam's message), a DoFn that does not
        pickle, or a stage missing from the graph (each names the culprit).
      FileNotFoundError: inputs, tokenizer or VQGAN missing (read as a real launch reads them).
    """
    import apache_beam as beam
    from lwmkit.pipelines.engine import runner as runner_lib
    from lwmkit.pipelines.engine.dataflow.graph import build_graph

    kind = _JOBS.get(type(options))
    if kind is None:
        raise ValueError(
            f"options: {type(options).__name__} has no dry run; one of {sorted(c.__name__ for c in _JOBS)}"
        )
    if "dataflow" not in options.runner.lower():
        raise ValueError(
            f"--dry_run: only --runner DataflowRunner builds a job without running it, not {options.runner}"
        )
    beam_options = runner_lib.pipeline_options(
        options.runner,
        options.direct_running_mode,
        options.direct_num_workers,
        _dry_run_args(options.beam_args),
    )
    _check_locations(beam_options)
    # Beam checks the project, region and locations here.
    pipeline = beam.Pipeline(options=beam_options)
    job, prepare = kind
    prepared = prepare(options)  # the same inputs, tokenizer, job record and graph as a real launch
    stages = prepared.stages
    try:
        prepared.build(pipeline)
    except RuntimeError as e:  # Beam pickles each DoFn as it is added and raises RuntimeError
        raise ValueError(f"the {job} job graph could not be built: {e}") from e
    graph = build_graph(pipeline, (*stages, *FINAL_STAGES))
    warnings = option_warnings(options, beam_options)
    job_file = _job_file(beam_options)
    if job_file:
        from lwmkit.pipelines.engine.outputs import write_output_bytes

        document = {
            "job": graph.request,
            "pipeline": graph.pipeline,
            "lwmkit": {"stages": list(graph.stages), "dofns": graph.dofns, "warnings": warnings},
        }
        write_output_bytes(job_file, json.dumps(document, indent=1, sort_keys=True).encode("utf-8"))
    return GraphReport(
        job=job,
        job_name=graph.request["name"],
        stages=graph.stages,
        transforms=graph.transforms,
        dofns=graph.dofns,
        pickler=graph.pickler,
        workers=graph.workers(),
        job_file=job_file,
        warnings=tuple(warnings),
    )


# --- options ---------------------------------------------------------------------------------------


def _dry_run_args(beam_args: Sequence[str]) -> list[str]:
    """The job's Beam options for a dry run: Beam's pip download of --requirements_file is skipped."""
    args = list(beam_args)
    if not any(a.startswith("--requirements_cache") for a in args):
        args.append("--requirements_cache=skip")
    return args


def _check_locations(beam_options) -> None:
    """Fails where Beam would reach Google even in a dry run.

    With neither a valid --temp_location nor a valid --staging_location, Beam creates a default
    bucket (credentials, network).
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

    view = beam_options.view_as(GoogleCloudOptions)
    validator = PipelineOptionsValidator(beam_options, None)
    errors = [validator.validate_gcs_path(view, n) for n in ("temp_location", "staging_location")]
    if all(errors):
        raise ValueError(
            f"--temp_location: {' '.join(errors[0])} A dry run needs a valid gs://BUCKET/PATH "
            "(without one Beam would create a default bucket, which needs credentials)"
        )


def _job_file(beam_options) -> str | None:
    from apache_beam.options.pipeline_options import DebugOptions

    return beam_options.view_as(DebugOptions).dataflow_job_file


def option_warnings(options: Any, beam_options) -> list[str]:
    """What in these options would make a submitted Dataflow job fail or crawl (empty: nothing found)."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, SetupOptions, WorkerOptions
    from lwmkit.pipelines.engine.outputs import is_local

    setup = beam_options.view_as(SetupOptions)
    image = beam_options.view_as(WorkerOptions).sdk_container_image
    service = beam_options.view_as(GoogleCloudOptions).dataflow_service_options or []
    out = []
    if not (image or setup.setup_file or setup.extra_packages or setup.requirements_file):
        out.append(
            "workers would not have lwmkit: give --sdk_container_image, --setup_file or --extra_package "
            "(docs/running-at-scale.md, Dataflow)"
        )
    paths = [("--input", p) for p in getattr(options, "inputs", None) or ()]
    # Not --tokenizer: the launcher reads it (engine.inputs.read_tokenizer) and its bytes travel
    # inside the pickled stages (SentencePieceTokenizer keeps its model proto), so workers never open it.
    paths += [("--output", options.output)]
    paths += [
        (f"--{k}", getattr(options, k)) for k in ("vqgan", "documents") if getattr(options, k, None)
    ]
    local = [f"{flag} {path}" for flag, path in paths if is_local(path)]
    if local:
        out.append(
            f"workers cannot read local paths ({', '.join(local)}); a real job uses gs:// paths"
        )
    accelerator = any("worker_accelerator" in s for s in service)
    if hasattr(options, "vqgan_preset"):
        if not accelerator:
            out.append(
                "the VQGAN stage would run on CPU workers; for GPUs add --dataflow_service_options "
                "'worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver' and a g2 machine type"
            )
        elif not image:
            out.append(
                "GPU workers need a container image with jax[cuda12] and lwmkit (--sdk_container_image)"
            )
    download = getattr(options, "download", None)
    if getattr(download, "time_ranges", False):
        out.append("--time-ranges needs ffmpeg on the workers: use a container image that has it")
    client = getattr(getattr(options, "generator", None), "client", None)
    if client is not None:
        out.append(
            f"workers read the API key from their own ${client.api_key_env} and call {client.base_url}: "
            "set the variable in the container image and make the server reachable from the workers"
        )
    return out


# --- the jobs' graphs: each job module registers how its graph is prepared -------------------

_JOBS: dict[type, tuple[str, Callable[[Any], PreparedJob]]] = {}


def register_dry_run(options_class: type, job: str, prepare: Callable[[Any], PreparedJob]) -> None:
    """Lets `dry_run` build the job `options_class` describes with `prepare` (what its launch runs).

    Each job module registers itself when it is imported, so the engine never imports a job.
    Example (in books/job.py): register_dry_run(BooksOptions, "books", prepare_books)
    """
    _JOBS[options_class] = (job, prepare)
