"""`lwm-train`: lwmkit's packed shards -> Grain -> the LWM model on a device mesh, stage after stage.

One command and one config (a preset or a JSON file, plus `key=value` overrides, see
`train_config.py` / `train_presets.py`):

    lwm-train tiny-progressive data_root=out/books output=runs/tiny      # 512 then 2,048 tokens
    lwm-train text-32k data_root=DATA init_from=hf:Llama-2-7b-hf lr=2e-5
    lwm-train runs/tiny/config.json                                       # the same run again, or resumed

For each stage: the model gets the stage's `seq_len` and RoPE theta, the Grain loader reads the
stage's mixture (every packed field reaches the step: segment ids, positions, loss weights,
vision mask), batches become global arrays on the stage's mesh (laid out for the ring), and the
jitted step (`train_step.py`) trains; the first stage starts from `init_from` (or random), each
later one from the previous stage's parameters with a fresh optimiser. Checkpoints (`train_state.py`)
hold parameters, optimiser state, step and the loader's state, written asynchronously; a run
started again in the same `output` continues from the newest one, bit-identically. Progress
lines, `metrics.jsonl` and `loss.png` are `train_log.py`'s.

The command line is `train_cli.py`'s: it checks the config, its datasets and `init_from` before JAX
starts, makes the virtual CPU devices the meshes need and enables the compilation cache.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import jax
import numpy as np
from lwmkit.lwm_model.config import LWMConfig
from lwmkit.lwm_model.mesh import SEQUENCE, layout_batch, make_mesh, sequence_parallel
from lwmkit.lwm_model.train_config import StageConfig, TrainConfig
from lwmkit.lwm_model.train_log import MetricsLog, plot_losses, print_progress, read_metrics
from lwmkit.lwm_model.train_state import StageCheckpoints, initial_params
from lwmkit.lwm_model.train_step import (
    STEP_FIELDS,
    abstract_train_state,
    build_train_step,
    init_state,
    model_flops_per_token,
    peak_flops,
)

_DTYPES = {"fp32": ("float32", "float32"), "bf16": ("bfloat16", "float32")}


@dataclass
class TrainResult:
    """What `train` did in this call.

    Attributes:
      output: the run directory.
      records: the step records written by this call (as in metrics.jsonl).
      params: the parameters at the end (on the last stage's mesh).
      stage, step: where it stopped (the last stage's name and steps when finished).
      interrupted: stopped early (`stop_after` or SIGTERM); run again to continue.
    """

    output: str
    records: list[dict[str, Any]] = field(default_factory=list)
    params: Any = None
    stage: str = ""
    step: int = 0
    interrupted: bool = False


def stage_model_config(config: TrainConfig, stage: StageConfig, ring_size: int, vocab_size: int | None,
                       ulysses: int = 1, tp: int = 1) -> LWMConfig:
    """The model of `stage`: the run's preset with the stage's RoPE theta and length, attention and precision.

    Raises:
      ValueError: when the ring layout or block size cannot split the stage's sequence, the
        sequence does not split over ring x Ulysses devices, or (ring attention) the heads per
        `tp` shard do not split over the `ulysses` devices.
    """
    from lwmkit.lwm_model.layout import check_layout

    base = config.model_config()
    local = stage.seq_len // ring_size if stage.seq_len % ring_size == 0 else 0
    block = min(config.ring_block, local) if local else config.ring_block
    if config.attention == "ring":
        try:
            check_layout(config.ring_layout, stage.seq_len, ring_size)
        except ValueError as e:
            raise ValueError(f"stage {stage.name!r}: {e}") from e
        if local % block:
            raise ValueError(f"stage {stage.name!r}: ring_block={config.ring_block} does not divide the "
                             f"{local} tokens each of the {ring_size} ring devices holds")
    if stage.seq_len % (ring_size * ulysses):
        raise ValueError(f"stage {stage.name!r}: seq_len={stage.seq_len} does not split over sp={ring_size} x "
                         f"ulysses={ulysses} sequence devices")
    if config.attention == "ring" and ulysses > 1 and (base.num_heads % tp or (base.num_heads // tp) % ulysses):
        raise ValueError(f"stage {stage.name!r}: mesh {stage.mesh!r}: the model's {base.num_heads} heads over tp={tp} "
                         f"do not split over ulysses={ulysses}")
    dtype, param_dtype = _DTYPES[config.precision]
    fields = dict(rope_theta=stage.rope_theta, max_sequence_length=max(base.max_sequence_length, stage.seq_len),
                  attention_impl=config.attention, ring_layout=config.ring_layout, ring_block_q=block,
                  ring_block_k=block, dtype=dtype, param_dtype=param_dtype)
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    return config.model_config(**fields)


def _sources(config: TrainConfig, stage: StageConfig) -> list[Any]:
    """The stage's datasets, checked to be packed at its seq_len."""
    from lwmkit.packing import ShardDataSource

    out = []
    for directory in stage.directories(config.data_root):
        source = ShardDataSource(directory)
        if source.kind != "packed" or source.seq_len != stage.seq_len:
            raise ValueError(f"{directory}: holds {source.kind} records of seq_len {source.seq_len}; stage "
                             f"{stage.name!r} needs packed records of seq_len {stage.seq_len}")
        out.append(source)
    return out


def _data_vocab(config: TrainConfig) -> int | None:
    """The largest tokenizer vocabulary of all stages' datasets (their manifests), if `vocab_from_data`."""
    if not config.vocab_from_data:
        return None
    sources = [s for stage in config.stages for s in _sources(config, stage)]
    sizes = [(s.manifest.get("tokenizer") or {}).get("vocab_size") for s in sources]
    if not sizes or any(not isinstance(n, int) for n in sizes):
        raise ValueError("vocab_from_data=true: every dataset manifest must record tokenizer.vocab_size")
    return max(sizes)


def _check_ids(batch: dict[str, np.ndarray], model: LWMConfig, where: str) -> None:
    """Token ids must fit the model's tables (an out-of-range embedding lookup would clamp silently)."""
    tokens, vision = batch["tokens"], batch["vision_mask"]
    top_text = int(tokens.max(initial=0, where=~vision))
    if top_text >= model.vocab_size:
        raise ValueError(f"{where}: text id {top_text} is outside the model's vocabulary of {model.vocab_size}")
    if vision.any():
        if not model.vision:
            raise ValueError(f"{where}: vision tokens in a text-only model (model.vision=false)")
        top = int(tokens.max(where=vision, initial=0))
        if top >= model.vision_vocab_size:
            raise ValueError(f"{where}: vision id {top} is outside the model's {model.vision_vocab_size} vision ids")


class _StopFlag:
    """Set by SIGTERM (a preemption notice) while training runs in the main thread."""

    def __init__(self):
        self.set = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "set", True))
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(config: TrainConfig, *, stop_after: int | None = None, stream: TextIO | None = None) -> TrainResult:
    """Trains through `config.stages`, continuing from the newest checkpoint in `config.output`.

    Args:
      config: the run.
      stop_after: stop (and checkpoint) after this many steps of this call, like a preemption.
      stream: where progress lines go (default stderr).

    Returns:
      A `TrainResult`.

    Raises:
      ValueError: a dataset that does not fit its stage, token ids outside the model's tables, a
        mesh that does not fit the devices, or a checkpoint that does not fit the model.
    """
    os.makedirs(config.output, exist_ok=True)
    main_process = jax.process_index() == 0
    if main_process:
        with open(os.path.join(config.output, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config.to_dict(), f, indent=1, sort_keys=True)
    vocab = _data_vocab(config)
    result = TrainResult(output=config.output)
    log = MetricsLog(os.path.join(config.output, "metrics.jsonl")) if main_process else None
    previous: tuple[StageCheckpoints, int] | None = None  # a finished stage's checkpoints, when not in memory
    params, base_step, budget = None, 0, stop_after
    try:
        with _StopFlag() as stop:
            for index, stage in enumerate(config.stages):
                ckpts = StageCheckpoints(os.path.join(config.output, "checkpoints", stage.name),
                                         config.keep_checkpoints, config.async_checkpoints)
                latest = ckpts.latest_step()
                if latest is not None and latest >= stage.steps:
                    if previous is not None:
                        previous[0].close()
                    previous, params, base_step = (ckpts, latest), None, base_step + stage.steps
                    continue
                if budget is not None and budget <= 0:
                    ckpts.close()
                    result.interrupted, result.stage, result.step = True, stage.name, latest or 0
                    break
                run = _StageRun(config, index, stage, vocab, base_step, log, stream)
                try:
                    # Wait for the stage's start state (resharded or converted parameters) before
                    # the first step: on the CPU backend two programs with collectives in flight at
                    # once over the same virtual devices can deadlock in XLA's rendezvous.
                    state = jax.block_until_ready(run.start_state(ckpts, latest, params, previous))
                    state, done = run.loop(state, ckpts, budget, stop)
                finally:
                    ckpts.close()
                    if previous is not None:
                        previous[0].close()
                result.records += run.records
                result.params, result.stage, result.step = state["params"], stage.name, done
                if done < stage.steps:
                    result.interrupted = True
                    break
                if budget is not None:
                    budget -= done - (latest or 0)
                params, previous, base_step = state["params"], None, base_step + stage.steps
            else:
                if previous is not None:  # the last stage was already done before this call
                    previous[0].close()
                    result.stage, result.step = config.stages[-1].name, config.stages[-1].steps
    finally:
        if log is not None:
            log.close()
    metrics_path = os.path.join(config.output, "metrics.jsonl")
    if main_process and os.path.exists(metrics_path) and read_metrics(metrics_path):
        plot_losses(read_metrics(metrics_path), os.path.join(config.output, "loss.png"),
                    title=f"{os.path.basename(os.path.abspath(config.output))}: {config.model} model")
    return result


class _StageRun:
    """One stage's mesh, model, compiled step and loader."""

    def __init__(self, config: TrainConfig, index: int, stage: StageConfig, vocab: int | None, base_step: int,
                 log: MetricsLog | None, stream: TextIO | None):
        self.config, self.index, self.stage, self.base_step = config, index, stage, base_step
        self.log, self.stream, self.records = log, stream, []
        self.mesh = make_mesh(stage.mesh)
        self.ring, ulysses = sequence_parallel(self.mesh)
        self.model = stage_model_config(config, stage, self.ring, vocab, ulysses, self.mesh.shape["tp"])
        data = self.mesh.shape["dp"] * self.mesh.shape["fsdp"]
        if (stage.rows // stage.grad_accum) % data:
            raise ValueError(f"stage {stage.name!r}: {stage.rows // stage.grad_accum} rows per micro-batch do not "
                             f"split over the mesh's {data} data-parallel devices (dp x fsdp)")
        if stage.rows % jax.process_count():
            raise ValueError(f"stage {stage.name!r}: {stage.rows} rows per step do not split over "
                             f"{jax.process_count()} hosts")
        self.step_fn, self.tx, self.shardings = build_train_step(
            self.model, self.mesh, stage.optimizer, stage.steps, config.loss, stage.grad_accum)
        self.flops = model_flops_per_token(self.model, stage.seq_len) * stage.batch_tokens
        peak = peak_flops(jax.devices()[0], config.peak_tflops)
        self.peak = None if peak is None else peak * self.mesh.size

    def start_state(self, ckpts: StageCheckpoints, latest: int | None, params: Any,
                    previous: tuple[StageCheckpoints, int] | None) -> dict[str, Any]:
        """The state to start from: this stage's newest checkpoint, else the previous stage's parameters."""
        from lwmkit.packing import make_loader

        stage, config = self.stage, self.config
        sources = _sources(config, stage)
        self.loader = make_loader([s.directory for s in sources], stage.rows // jax.process_count(),
                                  weights=[w for _, w in stage.mixture], seed=config.seed + self.index,
                                  num_epochs=None, worker_count=config.loader_workers)
        self.start = latest or 0
        abstract = abstract_train_state(self.model, self.mesh, stage.optimizer, stage.steps)
        origin = f"checkpoint {ckpts.directory}/{latest}"
        if latest is not None:
            state, loader_state, _ = ckpts.restore(latest, abstract)
            self.loader.set_state(loader_state)
            self._say(f"resuming from {origin}")
            return state
        if params is not None:
            params, origin = jax.device_put(params, self.shardings["params"]), "the previous stage"
        elif previous is not None:
            params = previous[0].restore_params(previous[1], abstract["params"])
            origin = f"checkpoint {previous[0].directory}/{previous[1]}"
        else:
            key = jax.random.key(config.seed)
            params, fresh = initial_params(config.init_from, self.model, self.shardings["params"], key)
            origin = config.init_from or f"random (seed {config.seed})"
            if config.init_from and fresh:
                self._say(f"not in {config.init_from}, starting random: {', '.join(fresh)}")
        self._say(f"starting from {origin}")
        return jax.jit(lambda p: init_state(p, self.tx), out_shardings=self.shardings)(params)

    def _say(self, text: str) -> None:
        s = self.stage
        print(f"[{s.name}] {text}; seq_len {s.seq_len}, rope_theta {s.rope_theta:g}, {s.rows} rows x "
              f"{s.grad_accum} micro-batches, mesh {dict(self.mesh.shape)}, attention {self.config.attention}",
              file=self.stream or sys.stderr, flush=True)

    def loop(self, state: dict[str, Any], ckpts: StageCheckpoints, budget: int | None,
             stop: _StopFlag) -> tuple[dict[str, Any], int]:
        """Steps from the start to the stage's end (or an early stop); returns (state, last step)."""
        stage, layout = self.stage, self.config.ring_layout
        pending, clock = None, (time.perf_counter(), time.process_time())
        step = self.start
        while step < stage.steps:
            step += 1
            batch = next(self.loader)
            where = f"stage {stage.name!r} step {step} (datasets {stage.directories(self.config.data_root)})"
            _check_ids(batch, self.model, where)
            host = {"padding": float(np.mean(batch["tokens_segment_ids"] == 0))}
            fields = {k: batch[k] for k in STEP_FIELDS}
            if self.config.attention == "ring" and layout != "contiguous":
                fields = layout_batch(fields, layout, self.ring, (self.model.ring_block_q, self.model.ring_block_k))
            state, metrics = self.step_fn(state, _global(fields, self.mesh))
            if pending is not None:
                clock = self._finish(*pending, clock)
            pending = (step, metrics, host)
            quit_now = stop.set or (budget is not None and step - self.start >= budget)
            if step % stage.checkpoint_every == 0 or step == stage.steps or quit_now:
                clock, pending = self._finish(*pending, clock), None
                meta = {"stage": stage.name, "step": step, "seq_len": stage.seq_len, "time": time.time()}
                ckpts.save(step, state, self.loader.get_state(), meta)  # returns once the arrays are copied
                clock = (time.perf_counter(), time.process_time())  # the next step's time leaves the save out
            if quit_now:
                break
        if pending is not None:
            self._finish(*pending, clock)
        ckpts.wait()
        return state, step

    def _finish(self, step: int, metrics: Any, host: dict[str, float], clock: tuple[float, float]):
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = (time.perf_counter(), time.process_time())
        step_s = max(now[0] - clock[0], 1e-9)
        record = {"stage": self.stage.name, "stage_index": self.index, "step": step,
                  "global_step": self.base_step + step, "seq_len": self.stage.seq_len, **values, **host,
                  "step_s": step_s, "cpu_s": now[1] - clock[1], "tokens_per_s": self.stage.batch_tokens / step_s,
                  "mfu": None if self.peak is None else self.flops / step_s / self.peak, "time": time.time()}
        self.records.append(record)
        if self.log is not None:
            self.log.write(record)
        first = step == self.start + 1
        if first or step % self.config.log_every == 0 or step == self.stage.steps:
            print_progress(record, self.stage.steps, self.stream)
        return now


def _global(fields: dict[str, np.ndarray], mesh: Any) -> dict[str, Any]:
    from lwmkit.packing.device_arrays import to_global_arrays

    return to_global_arrays(fields, mesh, seq_axis=SEQUENCE)


def main(argv: Sequence[str] | None = None) -> int:
    """The `lwm-train` console script (`train_cli.main`, which checks its arguments before JAX starts)."""
    from lwmkit.lwm_model.train_cli import main as cli_main

    return cli_main(argv)

if __name__ == "__main__":
    sys.exit(main())
