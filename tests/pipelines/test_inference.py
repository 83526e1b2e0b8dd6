"""JaxModelHandler: real RunInference pipelines over a tiny Flax model (and the tiny VQGAN)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import uuid

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from lwmkit.pipelines.engine.inference import JaxModelHandler
from lwmkit.pipelines.engine.runner import pipeline_options

FEATURES = 4
OUT = 3
_COLLECTED: dict[str, list] = {}  # run id -> pipeline outputs (in_memory runs in this process)
_TRACED: dict[str, list] = {}  # load log path -> batch shapes seen while jit traced apply


def _dense():
    import flax.linen as nn

    return nn.Dense(OUT)


def _dense_params(seed: int = 0):
    import jax
    import jax.numpy as jnp

    return jax.device_get(_dense().init(jax.random.PRNGKey(seed), jnp.zeros((1, FEATURES), jnp.float32)))


def _direct(params, x: np.ndarray) -> np.ndarray:
    return np.asarray(_dense().apply(params, x))


class _TracingApply:
    """A fresh object per load, so jit traces it afresh; records the batch shapes it is traced with."""

    def __init__(self, key: str, pytree: bool = False):
        self.key, self.pytree = key, pytree

    def __call__(self, params, x):
        _TRACED.setdefault(self.key, []).append(tuple(x.shape))
        y = _dense().apply(params, x)
        return {"y": y, "top": y.argmax(-1)} if self.pytree else y


class CountingLoad:
    """Picklable `load`: appends this process id to `path` on every call."""

    def __init__(self, path: str, pytree: bool = False):
        self.path, self.pytree = path, pytree

    def __call__(self):
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()}\n")
        return _TracingApply(self.path, self.pytree), _dense_params()


def _collect(element, run_id: str) -> None:
    _COLLECTED.setdefault(run_id, []).append(element)


def _inputs(n: int, seed: int = 1) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(i, rng.normal(size=FEATURES).astype(np.float32)) for i in range(n)]


def _run(handler: JaxModelHandler, items, extra=()):
    run_id = uuid.uuid4().hex
    p = beam.Pipeline(options=pipeline_options("DirectRunner", "in_memory", 0, tuple(extra)))
    _ = p | beam.Create(items) | RunInference(KeyedModelHandler(handler)) | beam.Map(_collect, run_id)
    result = p.run()
    result.wait_until_finish()
    return _COLLECTED.pop(run_id, []), result


def _metrics(result, namespace: str) -> dict:
    found = result.metrics().query(MetricsFilter().with_namespace(namespace))
    return {m.key.metric.name: m.committed for kind in ("counters", "distributions") for m in found[kind]}


def _loads(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_keyed_pipeline_matches_direct_apply_once_loaded_and_compiled(tmp_path):
    log = tmp_path / "loads.txt"
    handler = JaxModelHandler(CountingLoad(str(log)), 8, (FEATURES,), np.float32, name="dense")
    items = _inputs(37)
    out, result = _run(handler, items)

    assert sorted(k for k, _ in out) == list(range(37))  # every key exactly once: no padding leaked
    params, by_key = _dense_params(), dict(items)
    for key, pred in out:
        assert pred.example is by_key[key] or np.array_equal(pred.example, by_key[key])
        assert pred.inference.shape == (OUT,)
        np.testing.assert_allclose(pred.inference, _direct(params, by_key[key][None])[0], rtol=1e-5, atol=1e-6)
        assert pred.model_id == "dense"
    assert _loads(log) == [str(os.getpid())]
    assert _TRACED[str(log)] == [(8, FEATURES)]  # one compile, at the padded shape

    m = _metrics(result, "lwmkit.jax.dense")
    assert (m["examples"], m["batches"], m["padded_examples"], m["num_inferences"]) == (37, 5, 3, 37)
    fill = m["batch_fill_percent"]
    assert (fill.count, fill.min, fill.max) == (5, round(100 * 5 / 8), 100)
    assert m["batch_latency_us"].count == 5 and m["examples_per_second"].count == 5
    assert m["examples_per_second"].min > 0


def test_parameters_load_once_across_parallel_bundles_in_one_process(tmp_path):
    # Four workers in in_memory mode: the input is split into four bundles, each run by its own
    # RunInference DoFn instance in this process; Beam's shared handle must give them one model.
    log = tmp_path / "loads.txt"
    handler = JaxModelHandler(CountingLoad(str(log)), 8, (FEATURES,), np.float32, name="bundles")
    items = _inputs(37, seed=2)
    out, result = _run(handler, items, extra=("--direct_num_workers=4",))

    assert sorted(k for k, _ in out) == list(range(37))
    params, by_key = _dense_params(), dict(items)
    got = np.stack([pred.inference for _, pred in sorted(out, key=lambda kv: kv[0])])
    np.testing.assert_allclose(got, _direct(params, np.stack([by_key[k] for k in range(37)])), rtol=1e-5, atol=1e-6)
    m = _metrics(result, "lwmkit.jax.bundles")
    assert m["batches"] > 5  # more partial batches than one bundle would make: several bundles ran
    assert m["examples"] == 37 and m["padded_examples"] == 8 * m["batches"] - 37
    assert _loads(log) == [str(os.getpid())]


def test_run_inference_pads_short_and_chunks_long_batches(tmp_path):
    log = str(tmp_path / "loads.txt")
    handler = JaxModelHandler(CountingLoad(log), 8, (FEATURES,), np.float32)
    model = handler.load_model()
    params = _dense_params()
    for n in (3, 8, 19):  # short, exact, and longer than one batch (as with with_no_batching)
        xs = [x for _, x in _inputs(n, seed=n)]
        preds = list(handler.run_inference(xs, model))
        assert len(preds) == n
        got = np.stack([p.inference for p in preds])
        np.testing.assert_allclose(got, _direct(params, np.stack(xs)), rtol=1e-5, atol=1e-6)
    assert list(handler.run_inference([], model)) == []
    assert _TRACED[log] == [(8, FEATURES)]


def test_pytree_outputs_are_split_per_example(tmp_path):
    handler = JaxModelHandler(CountingLoad(str(tmp_path / "l.txt"), pytree=True), 4, (FEATURES,), np.float32)
    model = handler.load_model()
    xs = [x for _, x in _inputs(6)]
    preds = list(handler.run_inference(xs, model))
    direct = _direct(_dense_params(), np.stack(xs))
    for pred, want in zip(preds, direct, strict=True):
        assert set(pred.inference) == {"y", "top"} and pred.inference["y"].shape == (OUT,)
        assert int(pred.inference["top"]) == int(want.argmax())
        pred.inference["y"][0] = 0.0  # results are writable copies, not views of a device buffer


@pytest.mark.parametrize("device, index", [(3, 3), ("cpu", 0), (None, 0)])
def test_device_option_places_params_and_batches(tmp_path, device, index):
    import jax

    handler = JaxModelHandler(CountingLoad(str(tmp_path / "l.txt")), 4, (FEATURES,), np.float32, device=device)
    model = handler.load_model()
    want = jax.local_devices()[index]
    assert model.device == want
    assert {d for leaf in jax.tree_util.tree_leaves(model.params) for d in leaf.devices()} == {want}
    xs = [x for _, x in _inputs(5)]
    got = np.stack([p.inference for p in handler.run_inference(xs, model)])
    np.testing.assert_allclose(got, _direct(_dense_params(), np.stack(xs)), rtol=1e-5, atol=1e-6)


def test_device_index_out_of_range_is_named(tmp_path):
    handler = JaxModelHandler(CountingLoad(str(tmp_path / "l.txt")), 4, (FEATURES,), np.float32, device=99)
    with pytest.raises(ValueError, match="index 99 is out of range; this process has 8 local devices"):
        handler.load_model()


def test_bad_examples_and_outputs_are_named(tmp_path):
    handler = JaxModelHandler(CountingLoad(str(tmp_path / "l.txt")), 4, (FEATURES,), np.float32, name="m")
    model = handler.load_model()
    good = np.zeros(FEATURES, np.float32)
    with pytest.raises(ValueError, match=r"m: example 2 of the batch has shape \(5,\), expected \(4,\)"):
        handler.run_inference([good, good, np.zeros(5, np.float32)], model)
    with pytest.raises(ValueError, match="example 1 of the batch has dtype complex64"):
        handler.run_inference([good, good.astype(np.complex64)], model)
    ints = list(handler.run_inference([np.arange(FEATURES)], model))  # int -> float32 is same_kind
    want = _direct(_dense_params(), np.arange(FEATURES, dtype=np.float32)[None])[0]
    np.testing.assert_allclose(ints[0].inference, want, rtol=1e-5)

    summed = JaxModelHandler(_load_summing, 4, (FEATURES,), np.float32, name="sum")
    with pytest.raises(ValueError, match="leading batch axis of 4"):
        summed.run_inference([good], summed.load_model())
    with pytest.raises(ValueError, match=r"load\(\) must return \(apply_fn, params\)"):
        JaxModelHandler(_load_not_a_pair, 4, (FEATURES,), np.float32).load_model()


def _sum_all(params, x):
    return x.sum()


def _load_summing():
    return _sum_all, {}


def _load_not_a_pair():
    return {"w": np.zeros(2)}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"load": 3}, "load: 3 is not callable"),
        ({"batch_size": 0}, "batch_size: 0 must be an int >= 1"),
        ({"batch_size": 2.0}, "batch_size: 2.0 must be an int >= 1"),
        ({"example_shape": (4, -1)}, r"example_shape: \(4, -1\)"),
        ({"example_dtype": "no-such-dtype"}, "example_dtype: 'no-such-dtype' is not a numpy dtype"),
        ({"name": ""}, "name: '' must be a non-empty string"),
        ({"device": "quantum"}, r"device: 'quantum' must be None, one of \['cpu', 'gpu', 'tpu'\]"),
        ({"device": -1}, "device: -1 must be None"),
    ],
)
def test_constructor_validates_arguments(kwargs, match):
    args = {"load": _load_summing, "batch_size": 4, "example_shape": (FEATURES,), "example_dtype": np.float32}
    with pytest.raises(ValueError, match=match):
        JaxModelHandler(**{**args, **kwargs})


def test_beam_plumbing(tmp_path):
    handler = JaxModelHandler(CountingLoad(str(tmp_path / "l.txt")), 8, (FEATURES,), np.float32, name="x")
    assert handler.batch_elements_kwargs() == {"min_batch_size": 8, "max_batch_size": 8}
    assert handler.get_metrics_namespace() == "lwmkit.jax.x"
    assert handler.share_model_across_processes() is False
    assert handler.get_num_bytes([np.zeros(FEATURES, np.float32)] * 3) == 3 * FEATURES * 4
    with pytest.raises(ValueError, match=r"inference_args \['temperature'\] are not supported"):
        handler.validate_inference_args({"temperature": 1.0})
    with pytest.raises(ValueError, match="cannot switch to model path 'gs://m'"):
        handler.update_model_path("gs://m")
    handler.update_model_path(None)
    model = handler.load_model()
    list(handler.run_inference([np.zeros(FEATURES, np.float32)], model))  # creates metric handles
    again = pickle.loads(pickle.dumps(handler))  # a plain top-level load object pickles with stdlib pickle
    assert again.batch_size == 8 and again._metrics is None
    assert len(list(again.run_inference([np.zeros(FEATURES, np.float32)], again.load_model()))) == 1


def _load_tiny_vqgan():
    from lwmkit.tokenizers.vqgan import ImageTokenizer

    return ImageTokenizer.random("tiny", seed=0).encode_fn()


def test_tiny_vqgan_encode_fn_runs_in_a_pipeline_like_encode():
    from lwmkit.tokenizers.vision import to_model_input
    from lwmkit.tokenizers.vqgan import ImageTokenizer

    rng = np.random.default_rng(0)
    # Smooth random images (4x4 blocks upsampled) so codes vary but no pixel sits on a knife edge.
    images = np.repeat(np.repeat(rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8), 64, 1), 64, 2)
    want = ImageTokenizer.random("tiny", seed=0).encode(images)  # int32 [3, 16, 16]
    handler = JaxModelHandler(_load_tiny_vqgan, 2, (256, 256, 3), np.float32, name="vqgan")
    out, result = _run(handler, [(f"img{i}", to_model_input(images[i])) for i in range(3)])

    got = {key: pred.inference for key, pred in out}
    assert sorted(got) == [f"img{i}" for i in range(3)]
    for i in range(3):
        assert got[f"img{i}"].dtype == np.int32 and got[f"img{i}"].shape == (16, 16)
        np.testing.assert_array_equal(got[f"img{i}"], want[i])
    m = _metrics(result, "lwmkit.jax.vqgan")
    assert (m["examples"], m["batches"], m["padded_examples"]) == (3, 2, 1)


def test_module_imports_without_jax():
    code = (
        "import sys, json\nimport lwmkit.pipelines.engine.inference\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_jit_false_runs_the_loaded_function_as_it_is():
    """An apply function compiled with its own options must not be re-jitted (that would drop them)."""
    import jax

    calls = []

    def compiled(params, batch):  # stands in for a function jitted with custom compiler options
        calls.append(type(batch).__name__)
        return np.asarray(batch) * params

    plain = JaxModelHandler(lambda: (compiled, 2.0), batch_size=2, example_shape=(3,), example_dtype=np.float32, jit=False)
    model = plain.load_model()
    assert model.apply is compiled
    out = list(plain.run_inference([np.ones(3, np.float32)], model))
    assert np.array_equal(out[0].inference, np.full(3, 2.0)) and calls  # called eagerly, not traced
    wrapped = JaxModelHandler(lambda: (compiled, 2.0), batch_size=2, example_shape=(3,), example_dtype=np.float32)
    assert wrapped.load_model().apply is not compiled and isinstance(jax.jit(compiled), type(wrapped.load_model().apply))


def test_beam_reads_model_memory_without_torch_and_without_warning(caplog):
    """Beam loses `resource` when torch is missing and warns at each model load (twice per video
    job); importing the handler's module gives it back (`restore_beam_resource`)."""
    import logging

    from apache_beam.ml.inference import base
    from lwmkit.pipelines.engine import inference

    assert base.resource is not None
    assert inference.restore_beam_resource() is False  # already done when the module loaded
    with caplog.at_level(logging.WARNING):
        assert base._get_current_process_memory_in_bytes() > 0
    assert "Resource module is not available" not in caplog.text


def test_run_inference_dofn_pickles_after_setup_and_works_after_unpickling(tmp_path):
    """A runner may pickle a DoFn after its setup (Beam 2.77's Dask runner does, for a side input
    computed in a worker): the loaded model (JAX device, jitted apply, device arrays) stays behind,
    and the copy's setup loads it again."""
    import cloudpickle
    from apache_beam.ml.inference.base import _RunInferenceDoFn

    handler = JaxModelHandler(CountingLoad(str(tmp_path / "l.txt")), 2, (FEATURES,), np.float32, name="p")
    dofn = _RunInferenceDoFn(handler, clock=time, metrics_namespace=None)
    x = _inputs(2)
    batch = [v for _, v in x]
    dofn.setup()
    before = [r.inference for r in dofn.process(batch, None, None)]
    assert dofn._model is not None
    blob = cloudpickle.dumps(dofn)  # raised "cannot pickle 'Device' object" before
    assert b"Device" not in blob
    again = cloudpickle.loads(blob)
    again.setup()
    after = [r.inference for r in again.process(batch, None, None)]
    np.testing.assert_array_equal(np.stack(after), np.stack(before))
    np.testing.assert_allclose(np.stack(after), _direct(_dense_params(), np.stack(batch)), rtol=1e-5, atol=1e-5)
