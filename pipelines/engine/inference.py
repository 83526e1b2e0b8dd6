"""A Beam RunInference `ModelHandler` for any JAX/Flax model: `JaxModelHandler`.

Beam ships handlers for PyTorch, scikit-learn, TensorFlow and ONNX but none for JAX. This module owns
that missing piece and nothing model-specific: give it a `load()` that returns
`(apply_fn(params, batch) -> outputs, params)` and it

- loads the parameters ONCE per worker process (RunInference keeps the loaded model in Beam's
  per-process `shared.Shared` cache, so every bundle and every DoFn instance of the step reuses it),
  jits `apply_fn` once and puts the parameters on one local device with `jax.device_put`;
- runs fixed-size batches only: `batch_elements_kwargs` asks `BatchElements` for exactly
  `batch_size` elements, and `run_inference` pads a short (last) batch up to `batch_size` by
  repeating its last example, so the jitted function compiles once per process, never per batch
  size; the padding rows' outputs are dropped before anything is emitted;
- emits one `PredictionResult(example, inference)` per input, `inference` being that example's
  row of the outputs (a numpy array, or the same pytree with every leaf indexed);
- reports Beam metrics in `get_metrics_namespace()` (`lwmkit.jax.<name>`): counters `examples`,
  `batches`, `padded_examples`; distributions `batch_fill_percent`, `batch_latency_us` and
  `examples_per_second` (one value per jitted call). RunInference adds its own (`num_inferences`,
  `inference_batch_latency_micro_secs`, `load_model_latency_milli_secs`, ...) in the same namespace.

JAX is imported inside `load_model` / `run_inference` only, so `lwmkit.pipelines` imports without it.

Beam's warning "Resource module is not available for current platform, memory usage cannot be
fetched" does not apply here: `apache_beam.ml.inference.base` imports the standard `resource`
module and its torch-only `ModelManager` in one `try`, so without torch it sets `resource = None`
and warns at every model load (twice: the memory before and after it), recording a model size
of 0 (`load_model_byte_size`). Importing this module gives Beam its `resource` back on POSIX
systems (`restore_beam_resource`), in the launcher and in every worker that unpickles a handler:
no warning, and the model's real memory size.

`load` is pickled with the pipeline and called on the workers: make it a top-level function (or a
`functools.partial` of one) or an instance of a top-level class with `__call__`, and let it read
its weights itself (a path, not the arrays, travels with the pipeline). Lambdas and closures may
pickle with Beam's cloudpickle but capture whatever they close over.

Usage, keyed so results can be joined back to their source records:

    def load_vqgan():  # top-level: pickled by reference
        return ImageTokenizer.from_weights("/data/vqgan.safetensors").encode_fn()

    handler = JaxModelHandler(load_vqgan, batch_size=32, example_shape=(256, 256, 3),
                              example_dtype=np.float32, name="vqgan")
    codes = (
        images                                   # PCollection of (key, float32 [256,256,3] in [-1,1])
        | RunInference(KeyedModelHandler(handler))
        | beam.MapTuple(lambda key, r: (key, r.inference))  # (key, int32 [16,16])
    )

Before/after for one short batch (batch_size=4, 3 examples, apply = x -> 2x):
    in:  [a, b, c]              -> device batch [a, b, c, c] (one padded row)
    out: [2a, 2b, 2c, 2c]       -> PredictionResult(a, 2a), (b, 2b), (c, 2c)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from apache_beam.metrics.metric import Metrics
from apache_beam.ml.inference import base as _beam_inference
from apache_beam.ml.inference.base import ModelHandler, PredictionResult


def restore_beam_resource() -> bool:
    """Gives `apache_beam.ml.inference.base` the `resource` module its torch-bound import lost (see
    the module docstring); says whether it had to. Windows has no `resource`: nothing changes there."""
    if _beam_inference.resource is not None or sys.platform == "win32":
        return False
    import resource

    _beam_inference.resource = resource
    return True


restore_beam_resource()

DEVICE_KINDS = ("cpu", "gpu", "tpu")


@dataclass(eq=False)  # eq=False keeps it hashable and weak-referencable, which Beam's shared cache needs
class LoadedJaxModel:
    """What `JaxModelHandler.load_model` returns: the jitted apply, device-resident params, the device."""

    apply: Callable[[Any, Any], Any]
    params: Any
    device: Any

    def __reduce__(self):
        """Pickles as `None`: a loaded model is runtime state of one worker process, never data.

        RunInference's DoFn keeps the loaded model after `setup` (`_model`); a runner that pickles
        the DoFn again after that (Beam 2.77's Dask runner does, for a side input computed inside a
        worker) would otherwise try to pickle a JAX `Device`, jitted code and device arrays. The
        copy's `setup` loads the model again (from the process's shared cache when it is there).
        """
        return _not_loaded, ()


def _not_loaded() -> None:
    return None


class JaxModelHandler(ModelHandler[np.ndarray, PredictionResult, LoadedJaxModel]):
    """RunInference handler for a JAX/Flax model; see the module docstring.

    Args:
      load: picklable zero-argument callable returning `(apply_fn, params)`; `apply_fn(params, batch)`
        takes a `[batch_size, *example_shape]` array and returns an array or pytree of arrays whose
        leading axis is the batch. It may be plain or already jitted.
      batch_size: the one batch size the model ever sees (>= 1).
      example_shape: the shape of every input element (no batch axis).
      example_dtype: the dtype the batch is built in; elements are cast with `same_kind` casting.
      name: names the metrics namespace (`lwmkit.jax.<name>`) and `PredictionResult.model_id`.
      device: None = the first local device; "cpu" / "gpu" / "tpu" = that backend's first local
        device; an int = that index in `jax.local_devices()`.
      max_batch_duration_secs: streaming only: flush a partial batch after this long.
      jit: wrap the apply function in `jax.jit` (default). Pass False when `load()` returns a
        function that is already compiled with its own options: an outer jit would inline it and
        drop them (the VQGAN's CPU compiler options, for one).

    Raises:
      ValueError: a bad argument, naming it, its value and the allowed range.
    """

    def __init__(
        self,
        load: Callable[[], tuple[Callable[[Any, Any], Any], Any]],
        batch_size: int,
        example_shape: Sequence[int],
        example_dtype: Any,
        name: str = "model",
        *,
        device: str | int | None = None,
        max_batch_duration_secs: float | None = None,
        jit: bool = True,
    ):
        if not callable(load):
            raise ValueError(f"load: {load!r} is not callable; pass a function returning (apply_fn, params)")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size: {batch_size!r} must be an int >= 1")
        shape = tuple(example_shape)
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ValueError(f"example_shape: {example_shape!r} must be a sequence of ints >= 0")
        try:
            dtype = np.dtype(example_dtype)
        except TypeError as e:
            raise ValueError(f"example_dtype: {example_dtype!r} is not a numpy dtype") from e
        if not name or not isinstance(name, str):
            raise ValueError(f"name: {name!r} must be a non-empty string")
        if device is not None and not (
            device in DEVICE_KINDS or (isinstance(device, int) and not isinstance(device, bool) and device >= 0)
        ):
            raise ValueError(f"device: {device!r} must be None, one of {list(DEVICE_KINDS)} or an int >= 0")
        super().__init__(
            min_batch_size=batch_size, max_batch_size=batch_size, max_batch_duration_secs=max_batch_duration_secs
        )
        self._load = load
        self.batch_size = batch_size
        self.example_shape = tuple(int(d) for d in shape)
        self.example_dtype = dtype
        self.name = name
        self.device = device
        self.jit = jit
        self._metrics: dict[str, Any] | None = None

    # -- loading ---------------------------------------------------------------------------------

    def load_model(self) -> LoadedJaxModel:
        """Calls `load()`, jits the apply function and puts the params on the chosen device.

        RunInference calls this once per worker process (its shared handle caches the result).
        """
        import jax

        device = _pick_device(jax, self.device)
        loaded = self._load()
        if not (isinstance(loaded, tuple) and len(loaded) == 2 and callable(loaded[0])):
            raise ValueError(f"{self.name}: load() must return (apply_fn, params), got {type(loaded).__name__}")
        apply_fn, params = loaded
        apply = jax.jit(apply_fn) if self.jit else apply_fn
        return LoadedJaxModel(apply=apply, params=jax.device_put(params, device), device=device)

    # -- inference -------------------------------------------------------------------------------

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: LoadedJaxModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Runs `batch` in fixed-size chunks of `batch_size` (the last padded); one result per example.

        Raises:
          ValueError: an example whose shape differs from `example_shape` or whose dtype cannot be
            cast to `example_dtype` (naming its position in the batch), or outputs without a
            leading batch axis.
        """
        import jax

        self.validate_inference_args(inference_args)
        stacked = self._stack(batch)  # [n, *example_shape]
        results: list[PredictionResult] = []
        for start in range(0, len(batch), self.batch_size):
            chunk = stacked[start : start + self.batch_size]
            real = len(chunk)
            padded = _pad_rows(chunk, self.batch_size)  # [batch_size, *example_shape]
            t0 = time.perf_counter()
            out = jax.device_get(model.apply(model.params, jax.device_put(padded, model.device)))
            seconds = time.perf_counter() - t0
            leaves = jax.tree_util.tree_leaves(out)
            bad = [np.shape(leaf) for leaf in leaves if np.ndim(leaf) < 1 or np.shape(leaf)[0] != self.batch_size]
            if not leaves or bad:
                raise ValueError(
                    f"{self.name}: apply_fn must return arrays with a leading batch axis of {self.batch_size}; "
                    f"got leaf shapes {[np.shape(leaf) for leaf in leaves]}"
                )
            for i in range(real):  # padding rows (i >= real) are dropped here
                inference = jax.tree_util.tree_map(lambda a, i=i: np.array(a[i]), out)
                results.append(PredictionResult(batch[start + i], inference, self.name))
            self._record(real, seconds)
        return results

    def _stack(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        rows = []
        for i, example in enumerate(batch):
            arr = np.asarray(example)
            if arr.shape != self.example_shape:
                raise ValueError(
                    f"{self.name}: example {i} of the batch has shape {arr.shape}, expected {self.example_shape}"
                )
            if not np.can_cast(arr.dtype, self.example_dtype, casting="same_kind"):
                raise ValueError(
                    f"{self.name}: example {i} of the batch has dtype {arr.dtype}, which does not cast to "
                    f"{self.example_dtype}"
                )
            rows.append(arr)
        if not rows:
            return np.zeros((0, *self.example_shape), self.example_dtype)
        return np.stack(rows).astype(self.example_dtype, copy=False)

    # -- metrics ---------------------------------------------------------------------------------

    def _record(self, real: int, seconds: float) -> None:
        if self._metrics is None:
            ns = self.get_metrics_namespace()
            counters = ("examples", "batches", "padded_examples")
            distributions = ("batch_fill_percent", "batch_latency_us", "examples_per_second")
            self._metrics = {
                **{k: Metrics.counter(ns, k) for k in counters},
                **{k: Metrics.distribution(ns, k) for k in distributions},
            }
        m = self._metrics
        m["examples"].inc(real)
        m["batches"].inc()
        if real < self.batch_size:
            m["padded_examples"].inc(self.batch_size - real)
        m["batch_fill_percent"].update(round(100 * real / self.batch_size))
        m["batch_latency_us"].update(round(seconds * 1e6))
        m["examples_per_second"].update(round(real / max(seconds, 1e-9)))

    # -- ModelHandler plumbing -------------------------------------------------------------------

    def get_metrics_namespace(self) -> str:
        return f"lwmkit.jax.{self.name}"

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(int(np.asarray(x).nbytes) for x in batch)  # cheaper than Beam's default pickling

    def share_model_across_processes(self) -> bool:
        # Each process keeps its own copy on its own local device; Beam's cross-process sharing would
        # proxy every batch through another process.
        return False

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        if inference_args:
            raise ValueError(
                f"{self.name}: inference_args {sorted(inference_args)} are not supported; close over "
                "extra arguments in apply_fn (jit would recompile for every new value)"
            )

    def update_model_path(self, model_path: str | None = None) -> None:
        if model_path:
            raise ValueError(
                f"{self.name}: JaxModelHandler loads through its load() callable and cannot switch to "
                f"model path {model_path!r}; build a new handler instead"
            )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_metrics"] = None  # metric handles are made per worker
        return state


def _pad_rows(chunk: np.ndarray, size: int) -> np.ndarray:
    """`chunk` [n, ...] with its last row repeated up to `size` rows; real rows keep finite padding outputs."""
    if len(chunk) == size:
        return chunk
    return np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])


def _pick_device(jax: Any, device: str | int | None) -> Any:
    if device is None:
        return jax.local_devices()[0]
    if isinstance(device, str):
        try:
            return jax.local_devices(backend=device)[0]
        except RuntimeError as e:
            raise ValueError(f"device: {device!r} has no local device here ({e})") from e
    devices = jax.local_devices()
    if device >= len(devices):
        raise ValueError(f"device: index {device} is out of range; this process has {len(devices)} local devices")
    return devices[device]
