"""`build_graph` on small pipelines: a DoFn that does not pickle, a stage missing from the graph."""

from __future__ import annotations

import pytest
from lwmkit.pipelines.engine.dataflow.graph import build_graph

from .offline import DATAFLOW, offline  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("offline")


def _toy_pipeline(extra=()):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    return beam.Pipeline(options=PipelineOptions([*DATAFLOW, *extra]))


class _Client:
    """A client that pickles until the launcher connects it (class-level state, like a module's
    client): Beam's own check, when the stage is added, passes; the job would fail at submission."""

    connected = False

    def __reduce__(self):
        if _Client.connected:
            raise TypeError("a connected client does not pickle")
        return _Client, ()


def test_a_dofn_that_does_not_pickle_is_named(monkeypatch):
    import apache_beam as beam

    p = _toy_pipeline()
    client = _Client()
    p | "inputs" >> beam.Create([1]) | "call" >> beam.Map(lambda x: (x, client)[0])
    monkeypatch.setattr(_Client, "connected", True)
    with pytest.raises(
        ValueError, match=r"could not unpickle \(cloudpickle\): call .*connected client"
    ):
        build_graph(p, ("inputs", "call"))


def test_a_missing_stage_is_named():
    import apache_beam as beam

    p = _toy_pipeline()
    p | "inputs" >> beam.Create([1]) | "double" >> beam.Map(lambda x: 2 * x)
    with pytest.raises(ValueError, match=r"stages \['finalize'\] are not in the job graph"):
        build_graph(p, ("inputs", "double", "finalize"))


def test_the_job_request_holds_the_options():
    import apache_beam as beam

    p = _toy_pipeline(["--machine_type", "n2-standard-8"])
    p | "inputs" >> beam.Create([1]) | "double" >> beam.Map(lambda x: 2 * x)
    graph = build_graph(p, ("inputs", "double"))
    assert graph.request["type"] == "JOB_TYPE_BATCH" and graph.stages == ("inputs", "double")
    assert graph.request["environment"]["sdkPipelineOptions"]["options"]["project"] == "lwm-test"
    assert graph.workers()["machine_type"] == "n2-standard-8"
    assert graph.dofns >= 2 and graph.pickler == "cloudpickle"


def test_without_dry_run_nothing_is_built():
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    # (Beam's own checks of a DataflowRunner pipeline without --dry_run already reach Google.)
    p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    with pytest.raises(ValueError, match="needs --dry_run=True"):
        build_graph(p, ())
