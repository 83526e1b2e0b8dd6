"""engine.runner.fresh_receivers (the Dask compatibility fix): every partition of a ParDo on Beam 2.77's Dask runner gets its own receiver
and keeps what `finish_bundle` emits. The end-to-end check (books and images shards byte-identical
to the DirectRunner's) is tests/pipelines/test_runners.py. Also: lwmkit's DoFns whose setup builds
runtime state pickle after setup without it (that runner pickles DoFns again inside a worker); the
RunInference DoFn's loaded model is tested in test_inference.py."""

from __future__ import annotations

import apache_beam as beam
import pytest

pytest.importorskip("distributed")

from apache_beam.transforms.window import GlobalWindow  # noqa: E402
from apache_beam.utils.windowed_value import WindowedValue  # noqa: E402
from lwmkit.pipelines.engine.runner import (  # noqa: E402
    apply_dofn_to_fresh_bundle,  # noqa: E402
    pipeline_options,
    running,
)


class _TagAndFlush(beam.DoFn):
    """Emits ('p', x) per element and ('f', n) from finish_bundle (n: elements in the bundle)."""

    def start_bundle(self):
        self._n = 0

    def process(self, x):
        self._n += 1
        yield "p", x

    def finish_bundle(self):
        yield WindowedValue(("f", self._n), 0, (GlobalWindow(),))


def _partition(values):
    return [WindowedValue(v, 0, (GlobalWindow(),)) for v in values]


def _dask_pardo_args():
    """The arguments Beam's Dask ParDo translation builds ONCE per ParDo, as a worker that reuses
    one deserialized task graph holds them for every partition."""
    from apache_beam.runners.common import DoFnContext, DoFnSignature

    kwargs = dict(context=DoFnContext("t", state=None), side_inputs=None, input_args=[], input_kwargs={},
                  user_state_context=None, bundle_finalizer_param=beam.DoFn.BundleFinalizerParam())
    return DoFnSignature(_TagAndFlush()), kwargs


def test_each_partition_returns_only_its_own_outputs_and_its_finish_bundle_outputs():
    signature, kwargs = _dask_pardo_args()
    first = apply_dofn_to_fresh_bundle(_partition([1, 2]), signature, None, kwargs)
    second = apply_dofn_to_fresh_bundle(_partition([3]), signature, None, kwargs)
    assert first == [("p", 1), ("p", 2), ("f", 2)]
    assert second == [("p", 3), ("f", 1)]  # Beam's own: [p1, p2, p3], and no ('f', ...) at all


def test_beams_dask_pardo_still_repeats_outputs_and_drops_finish_bundle():
    """Shows the Beam 2.77 behaviour fresh_receivers exists for; when this fails, Beam fixed it and
    the Dask compatibility fix in engine/runner.py can go."""
    from apache_beam.runners.common import _OutputHandler
    from apache_beam.runners.dask.transform_evaluator import OneReceiver, apply_dofn_to_bundle

    signature, kwargs = _dask_pardo_args()
    receivers = OneReceiver()
    handler = _OutputHandler(window_fn=None, main_receivers=receivers[None], tagged_receivers=receivers,
                             per_element_output_counter=None, output_batch_converter=None,
                             process_yields_batches=False, process_batch_yields_elements=False)
    apply_dofn_to_bundle(_partition([1, 2]), [signature, handler], kwargs, receivers)
    second = apply_dofn_to_bundle(_partition([3]), [signature, handler], kwargs, receivers)
    assert second == [("p", 1), ("p", 2), ("f", 2), ("p", 3)]


def test_running_swaps_the_dask_pardo_translation_only_for_a_dask_run():
    from apache_beam.runners.dask.transform_evaluator import TRANSLATIONS, ParDo

    assert TRANSLATIONS[beam.ParDo] is ParDo
    with running(pipeline_options("DirectRunner", "in_memory", 0)):
        assert TRANSLATIONS[beam.ParDo] is ParDo
    options = pipeline_options("DaskRunner", "in_memory", 0, ["--dask_client_address=127.0.0.1:1"])
    with running(options):  # an address: no local cluster is started
        assert TRANSLATIONS[beam.ParDo].__name__ == "FreshReceiverParDo"
        assert issubclass(TRANSLATIONS[beam.ParDo], ParDo)
    assert TRANSLATIONS[beam.ParDo] is ParDo


def test_dofns_with_runtime_state_pickle_after_setup_without_it_and_work_after_setup(tmp_path):
    import pickle

    from lwmkit.pipelines.engine.resume import SkipDone
    from lwmkit.pipelines.engine.stages import MAIN
    from lwmkit.pipelines.writing.plan import PackOptions
    from lwmkit.pipelines.writing.shards import RouteDoFn, WriteShardDoFn

    dofns = [(WriteShardDoFn(str(tmp_path), PackOptions()), "_units"), (RouteDoFn(), "_index"),
             (SkipDone(("a",)), "_done")]
    for dofn, runtime in dofns:
        dofn.setup()
        assert hasattr(dofn, runtime)
        again = pickle.loads(pickle.dumps(dofn))
        assert not hasattr(again, runtime), type(dofn).__name__
        again.setup()
        assert hasattr(again, runtime)
    skip = dofns[2][0]
    list(skip.process({"file": "f", "line": 0}, [(("f", 0), {"a": 1})]))  # indexes the side input
    again = pickle.loads(pickle.dumps(skip))
    again.setup()
    done = [(("f", 0), {"a": 1})]
    assert list(again.process({"file": "g", "line": 1}, done)) == [(MAIN, {"file": "g", "line": 1})]
    assert (MAIN, {"file": "f", "line": 0}) not in list(again.process({"file": "f", "line": 0}, done))
