"""The DataflowRunner's dry run of a built pipeline, checked, as JSON-ready dicts.

`build_graph` takes a pipeline whose options ask for a dry run (`--dry_run=True`), round-trips
every DoFn through the workers' pickler, lets the DataflowRunner translate it without submitting
anything, checks that the named stages are top-level transforms of the graph, and rebuilds the job
request Dataflow would receive (`create_job_description` without its uploads). `dry_run.py` runs
it for lwmkit's jobs.

Example:
    p = beam.Pipeline(options=PipelineOptions([..., "--runner=DataflowRunner", "--dry_run=True"]))
    p | "inputs" >> beam.Create([1]) | "double" >> beam.Map(lambda x: 2 * x)
    graph = build_graph(p, ("inputs", "double"))
    graph.request["type"], graph.stages    # -> "JOB_TYPE_BATCH", ("inputs", "double")
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DataflowGraph:
    """What the DataflowRunner built, checked.

    Attributes:
      request: the Dataflow job request (name, type, environment with worker pool and options).
      pipeline: the portable Beam pipeline (the graph) Dataflow would stage as pipeline.pb.
      stages: the named stages checked, in order.
      transforms: number of transforms in `pipeline`.
      dofns: number of DoFns that pickled and unpickled.
      pickler: the pickle library the workers use.
      artifacts: names the workers' files would be staged under.
    """

    request: dict[str, Any]
    pipeline: dict[str, Any]
    stages: tuple[str, ...]
    transforms: int
    dofns: int
    pickler: str
    artifacts: tuple[str, ...]

    def workers(self) -> dict[str, Any]:
        """The worker settings of the request: images, machine type, service options, artifacts."""
        env = self.request.get("environment", {})
        pool = (env.get("workerPools") or [{}])[0]
        images = {c["containerImage"] for c in pool.get("sdkHarnessContainerImages", [])}
        if pool.get("workerHarnessContainerImage"):
            images.add(pool["workerHarnessContainerImage"])
        return {
            "images": sorted(images),
            "machine_type": pool.get("machineType"),
            "service_options": env.get("serviceOptions", []),
            "artifacts": list(self.artifacts),
        }


def build_graph(pipeline, stages: Sequence[str]) -> DataflowGraph:
    """Checks a built pipeline whose options ask the DataflowRunner for a dry run.

    Every DoFn must survive a pickle round trip with the workers' pickler, the DataflowRunner must
    translate the pipeline (its overrides, a coder for every collection, the worker environment),
    and every name in `stages` must be a top-level transform of the resulting graph.

    Raises:
      ValueError: the options do not ask for a dry run, a DoFn does not pickle (named by its
        stage), the runner cannot prepare the job (e.g. a missing --extra_package), or stages are
        missing from the graph (named).
    """
    from apache_beam.options.pipeline_options import SetupOptions, TestOptions
    from google.protobuf import json_format

    if not pipeline.options.view_as(TestOptions).dry_run:
        raise ValueError("--dry_run: build_graph needs --dry_run=True (it would submit the job)")
    library = pipeline.options.view_as(SetupOptions).pickle_library
    dofns, pickler = _check_pickling(pipeline, library)
    try:
        result = pipeline.run()  # a dry run: returns once the job request is built
    except RuntimeError as e:  # the stager's: a missing --extra_package, a failing --setup_file
        raise ValueError(f"the DataflowRunner could not prepare the job: {e}") from e
    proto = result.job.proto_pipeline
    names = {t.unique_name for t in proto.components.transforms.values()}
    missing = [s for s in stages if s not in names]
    if missing:
        raise ValueError(
            f"stages {missing} are not in the job graph (its top-level stages: {_top_level(proto)})"
        )
    artifacts = _artifacts(proto)
    request = _job_request(result.job, artifacts)
    return DataflowGraph(
        request=request,
        pipeline=json_format.MessageToDict(proto),
        stages=tuple(stages),
        transforms=len(proto.components.transforms),
        dofns=dofns,
        pickler=pickler,
        artifacts=tuple(artifacts),
    )


def _check_pickling(pipeline, library: str) -> tuple[int, str]:
    """Pickles and unpickles every DoFn with the workers' pickle library; returns (count, library).

    Beam round-trips a DoFn when it is added to the pipeline; this runs again just before
    submission, with the library the workers use, and names the stage of each one that fails.
    """
    import apache_beam as beam
    from apache_beam.internal import pickler
    from apache_beam.pipeline import PipelineVisitor

    found: list[tuple[str, Any]] = []

    class DoFns(PipelineVisitor):
        def visit_transform(self, node):
            if isinstance(node.transform, beam.ParDo):
                found.append((node.full_label, node.transform.fn))

    pipeline.visit(DoFns())
    pickler.set_library(library)
    library = pickler.DEFAULT_PICKLE_LIB if library == "default" else library
    broken = []
    for label, fn in found:
        try:
            pickler.loads(pickler.dumps(fn))
        except Exception as e:  # noqa: BLE001 - any failure is reported with its stage
            broken.append(f"{label} ({type(fn).__name__}: {type(e).__name__}: {e})")
    if broken:
        raise ValueError(f"DoFns that workers could not unpickle ({library}): {'; '.join(broken)}")
    return len(found), library


def _top_level(proto) -> list[str]:
    ids = proto.root_transform_ids
    if len(ids) == 1:
        ids = proto.components.transforms[ids[0]].subtransforms
    return [proto.components.transforms[i].unique_name for i in ids]


def _artifacts(proto) -> list[str]:
    """The names every file the workers would be given is staged under."""
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2 as api

    out: list[str] = []
    for _, env in sorted(proto.components.environments.items()):
        for dep in env.dependencies:
            if dep.role_urn == common_urns.artifact_roles.STAGING_TO.urn:
                name = api.ArtifactStagingToRolePayload.FromString(dep.role_payload).staged_name
            else:
                name = api.ArtifactFilePayload.FromString(dep.type_payload).path.rsplit("/", 1)[-1]
            if name not in out:
                out.append(name)
    return out


def _job_request(job, packages: list[str]) -> dict[str, Any]:
    """The Dataflow job request as `create_job` would send it, without staging anything.

    Mirrors `DataflowApplicationClient.create_job_description` (Beam 2.77): container image
    overrides, then the environment (worker pool, options) that points at the staged pipeline.
    """
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import GoogleCloudOptions, WorkerOptions
    from apache_beam.runners.dataflow.internal import apiclient
    from apache_beam.runners.internal import names

    overrides = job.options.view_as(WorkerOptions).sdk_harness_container_image_overrides or []
    apiclient.DataflowApplicationClient._apply_sdk_environment_overrides(
        job.proto_pipeline, dict(s.split(",", 1) for s in overrides), job.options
    )
    staging = job.options.view_as(GoogleCloudOptions).staging_location
    job.proto.environment = apiclient.Environment(
        packages=packages,
        options=job.options,
        environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,
        proto_pipeline_staged_url=FileSystems.join(staging, names.STAGED_PIPELINE_FILENAME),
        proto_pipeline=job.proto_pipeline,
    ).proto
    return json.loads(job.json())
