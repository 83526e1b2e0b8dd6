"""The trainer's configuration: typed, frozen dataclasses and `key=value` overrides.

A run is a `TrainConfig`: run-wide choices (model size, attention, precision, loss, output) and a list
of `StageConfig`s that run one after another, each starting from the previous stage's parameters
with its own `seq_len`, RoPE theta, data mixture, batch, mesh and `OptimizerConfig` (LWM's
progressive recipe: a fresh optimiser per stage, parameters carried over). The named presets live
in `train_presets.py`.

Overrides (command line `key=value`, see `apply_overrides`):
    output=runs/a  attention=dense  model.hidden_size=128     run-wide fields; model.* = LWMConfig fields
    steps=100  lr=1e-3  mesh=1,2,1,4                            a stage or optimiser field: every stage
    stages.1.steps=50  stages.tiny-2048.lr=1e-4                 one stage, by index or name
    mixture=books/packed-{seq_len}:0.7,qa/packed-{seq_len}:0.3  dataset templates under data_root:weight

Example:
    config = apply_overrides(train_preset("tiny-cpu"), ["data_root=out/books", "steps=20"])  # train_presets
    config.stages[0].rows                          # 8 sequences of 512 tokens per step
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lwmkit.lwm_model.config import ATTENTION_IMPLS, LOSS_MIXES, RING_LAYOUTS, LWMConfig, preset

SCHEDULES = ("constant", "cosine")
PRECISIONS = ("fp32", "bf16")  # bf16: bfloat16 compute, float32 parameters and optimiser state


def _positive(owner: str, name: str, value: Any, minimum: float = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ValueError(f"{owner}.{name}={value!r}: must be a number >= {minimum}")


def _choice(owner: str, name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}.{name}={value!r}: must be one of {list(allowed)}")


@dataclass(frozen=True)
class OptimizerConfig:
    """optax AdamW with linear warmup, then a constant or cosine learning rate (LWM's OptimizerFactory).

    Attributes:
      lr: peak learning rate, reached after `warmup_steps`.
      end_lr: cosine: the rate at the end of `decay_steps` (default lr / 10); constant: unused.
      schedule: "constant" or "cosine".
      warmup_steps: linear warmup from 0 to `lr`.
      decay_steps: cosine: steps from 0 to `end_lr` (default: the stage's steps).
      weight_decay: decoupled decay on matrices (norm scales are excluded, as in LWM).
      b1, b2, eps: Adam moments.
      clip_norm: global gradient-norm clip (None: no clip).
    """

    lr: float = 4e-5
    end_lr: float | None = None
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int | None = None
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float | None = 1.0

    def __post_init__(self) -> None:
        _positive("OptimizerConfig", "lr", self.lr, 0)
        if self.end_lr is not None:
            _positive("OptimizerConfig", "end_lr", self.end_lr, 0)
        _choice("OptimizerConfig", "schedule", self.schedule, SCHEDULES)
        _positive("OptimizerConfig", "warmup_steps", self.warmup_steps, 0)
        if self.decay_steps is not None:
            _positive("OptimizerConfig", "decay_steps", self.decay_steps)
        _positive("OptimizerConfig", "weight_decay", self.weight_decay, 0)
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"OptimizerConfig.{name}={getattr(self, name)!r}: must be in [0, 1)")
        if not self.eps > 0:
            raise ValueError(f"OptimizerConfig.eps={self.eps!r}: must be > 0")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"OptimizerConfig.clip_norm={self.clip_norm!r}: must be > 0 or None")


@dataclass(frozen=True)
class StageConfig:
    """One stage of progressive training.

    Attributes:
      name: the stage's name (checkpoint folder, log lines); unique within a run.
      seq_len: tokens per sequence; the datasets must be packed to it.
      rope_theta: RoPE base for this context length (LWM raises it with the context).
      steps: optimiser steps in this stage.
      batch_tokens: tokens per optimiser step; rows = batch_tokens // seq_len.
      mixture: (dataset directory, weight) pairs; a relative directory is under the run's
        `data_root`, and "{seq_len}" in it is replaced by this stage's seq_len.
      mesh: device mesh sizes (dp, fsdp, tp, sp[, ulysses]), e.g. "1,-1,1,4"; sp is the RingAttention
        ring, ulysses (default 1) the Ulysses all-to-all axis of 2D sequence parallelism.
      grad_accum: micro-batches per step (each of rows / grad_accum sequences).
      optimizer: this stage's optimiser (a fresh one each stage; its step count starts at 0).
      checkpoint_every: save every this many steps (the stage's last step is always saved).
    """

    name: str
    seq_len: int
    rope_theta: float
    steps: int
    batch_tokens: int
    mixture: tuple[tuple[str, float], ...]
    mesh: str = "1,-1,1,1"
    grad_accum: int = 1
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint_every: int = 1000

    def __post_init__(self) -> None:
        owner = f"StageConfig({self.name!r})"
        if not self.name or "/" in self.name:
            raise ValueError(f"{owner}.name: must be a non-empty name without '/'")
        for name in ("seq_len", "steps", "batch_tokens", "grad_accum", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{owner}.{name}={value!r}: must be an int >= 1")
        _positive(owner, "rope_theta", self.rope_theta, 1)
        if self.batch_tokens % self.seq_len:
            raise ValueError(
                f"{owner}.batch_tokens={self.batch_tokens}: must be a multiple of seq_len={self.seq_len}"
            )
        if self.rows % self.grad_accum:
            raise ValueError(
                f"{owner}.grad_accum={self.grad_accum}: must divide the {self.rows} rows per step "
                f"(batch_tokens / seq_len)"
            )
        if not self.mixture or any(not d or not w >= 0 for d, w in self.mixture):
            raise ValueError(f"{owner}.mixture={self.mixture!r}: need (directory, weight >= 0) pairs")
        if sum(w for _, w in self.mixture) <= 0:
            raise ValueError(f"{owner}.mixture={self.mixture!r}: the weights are all 0")
        parts = self.mesh.split(",")
        if len(parts) not in (4, 5) or not all(p.strip().lstrip("-").isdigit() for p in parts):
            raise ValueError(f"{owner}.mesh={self.mesh!r}: need four or five sizes (dp, fsdp, tp, sp[, ulysses]) "
                             f"like '1,-1,1,4' or '1,-1,1,4,2'")

    @property
    def rows(self) -> int:
        """Sequences per optimiser step."""
        return self.batch_tokens // self.seq_len

    def directories(self, data_root: str) -> list[str]:
        """The mixture's dataset directories for this stage (templates filled, under `data_root`)."""
        out = []
        for template, _ in self.mixture:
            path = template.replace("{seq_len}", str(self.seq_len))
            out.append(path if "://" in path or os.path.isabs(path) else os.path.join(data_root, path))
        return out


@dataclass(frozen=True)
class TrainConfig:
    """A training run: run-wide choices and the stages it trains through.

    Attributes:
      stages: the stages, run in order; each starts from the previous one's parameters.
      output: run directory (checkpoints/, metrics.jsonl, loss.png, config.json).
      data_root: base of the mixtures' relative dataset directories.
      model: an `lwm_model.config` size preset ("tiny" .. "7b").
      model_overrides: LWMConfig fields over the preset (e.g. {"vision": False}).
      vocab_from_data: size the text vocabulary from the datasets' tokenizer (manifest).
      attention: "ring" (RingAttention over the mesh's sp axis) or "dense" (reference).
      ring_layout: "contiguous", "zigzag", "striped" or "balanced" (per packed row, from its
        segment ids: equal attention work on every ring device) token order over the ring.
      ring_block: RingAttention block size (shrunk to a stage's per-device length when larger).
      precision: "fp32", or "bf16" (bfloat16 compute; float32 parameters and optimiser state).
      loss: "lwm" (0.5 x vision loss + 0.5 x text loss, each over its own weighted tokens) or
        "tokens" (one weighted mean over all tokens).
      init_from: "" (random, from `seed`), or "orbax:DIR", "lwm:FILE", "hf:DIR" pretrained
        parameters for the first stage; parameters they lack (e.g. vision tables) start random.
      seed: parameter init and data order.
      keep_checkpoints: checkpoints kept per stage (the newest).
      async_checkpoints: write checkpoints in the background.
      log_every: steps between progress lines (metrics.jsonl gets every step).
      loader_workers: Grain worker processes.
      peak_tflops: peak dense TFLOP/s of one device for MFU (None: looked up for known
        accelerators; no MFU on CPU).
    """

    stages: tuple[StageConfig, ...]
    output: str = "runs/lwm"
    data_root: str = "."
    model: str = "7b"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    vocab_from_data: bool = False
    attention: str = "ring"
    ring_layout: str = "zigzag"
    ring_block: int = 512
    precision: str = "fp32"
    loss: str = "lwm"
    init_from: str = ""
    seed: int = 0
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    log_every: int = 10
    loader_workers: int = 0
    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("TrainConfig.stages: give at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"TrainConfig.stages: stage names repeat: {names}")
        _choice("TrainConfig", "attention", self.attention, ATTENTION_IMPLS)
        _choice("TrainConfig", "ring_layout", self.ring_layout, RING_LAYOUTS)
        _choice("TrainConfig", "precision", self.precision, PRECISIONS)
        _choice("TrainConfig", "loss", self.loss, LOSS_MIXES)
        for name in ("ring_block", "keep_checkpoints", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig.{name}={value!r}: must be an int >= 1")
        if self.loader_workers < 0:
            raise ValueError(f"TrainConfig.loader_workers={self.loader_workers}: must be >= 0")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ValueError(f"TrainConfig.peak_tflops={self.peak_tflops!r}: must be > 0 or None")
        if self.init_from and self.init_from.split(":", 1)[0] not in ("orbax", "lwm", "hf"):
            raise ValueError(
                f"TrainConfig.init_from={self.init_from!r}: must be '' or start with orbax:, lwm: or hf:"
            )
        self.model_config()  # the preset and overrides must make a valid LWMConfig

    def model_config(self, **fields: Any) -> LWMConfig:
        """The LWMConfig of the preset with `model_overrides`, then `fields`, applied."""
        return preset(self.model, **{**self.model_overrides, **fields})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The inverse of `to_dict` (e.g. a `config.json`); unknown keys are an error naming them."""
        return _build(cls, values, "TrainConfig")


def _build(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected an object, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown}; known: {sorted(names)}")
    out = dict(values)
    if cls is TrainConfig and "stages" in out:
        out["stages"] = tuple(_build(StageConfig, s, f"{where}.stages[{i}]") for i, s in enumerate(out["stages"]))
    if cls is StageConfig:
        if "optimizer" in out:
            out["optimizer"] = _build(OptimizerConfig, out["optimizer"], f"{where}.optimizer")
        if "mixture" in out:
            out["mixture"] = tuple((str(d), float(w)) for d, w in out["mixture"])
    return cls(**out)


# --- overrides ---------------------------------------------------------------------------------------------


def _coerce(text: str, annotation: Any, where: str) -> Any:
    """`text` as a value of the field type `annotation` (int, float, str, bool, optional)."""
    args = typing.get_args(annotation)
    if type(None) in args:
        if text.lower() in ("none", "null", ""):
            return None
        annotation = next(a for a in args if a is not type(None))
    try:
        if annotation is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("expected true or false")
            return text.lower() in ("true", "1", "yes")
        if annotation is int:
            return int(text)
        if annotation is float:
            return float(text)
        if annotation is str:
            return text
    except ValueError as e:
        raise ValueError(f"{where}={text!r}: {e}") from e
    raise ValueError(f"{where}: cannot be set from the command line")


def parse_mixture(text: str) -> tuple[tuple[str, float], ...]:
    """"dir:weight,dir2:weight2" (a missing weight is 1) -> ((dir, weight), ...)."""
    out = []
    for part in text.split(","):
        path, sep, weight = part.rpartition(":")
        if not sep or "/" in weight or not weight.replace(".", "", 1).replace("e-", "", 1).isdigit():
            path, weight = part, "1"
        out.append((path.strip(), float(weight)))
    return tuple(out)


def _set_field(obj: Any, key: str, text: str, where: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    if key == "mixture" and isinstance(obj, StageConfig):
        return dataclasses.replace(obj, mixture=parse_mixture(text))
    return dataclasses.replace(obj, **{key: _coerce(text, hints[key], where)})


def _override_stage(stage: StageConfig, key: str, text: str, where: str) -> StageConfig:
    stage_fields = {f.name for f in dataclasses.fields(StageConfig)} - {"optimizer"}
    opt_fields = {f.name for f in dataclasses.fields(OptimizerConfig)}
    key = key.removeprefix("optimizer.")
    if key in stage_fields:
        return _set_field(stage, key, text, where)
    if key in opt_fields:
        return dataclasses.replace(stage, optimizer=_set_field(stage.optimizer, key, text, where))
    raise ValueError(
        f"{where}: unknown key; stage keys are {sorted(stage_fields)}, optimiser keys {sorted(opt_fields)}"
    )


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """`config` with `key=value` overrides applied in order (see the module docstring).

    Raises:
      ValueError: for a malformed override, an unknown key (listing the known ones) or an invalid value.
    """
    top = {f.name for f in dataclasses.fields(TrainConfig)} - {"stages", "model_overrides"}
    model_fields = {f.name for f in dataclasses.fields(LWMConfig)}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected key=value")
        if key in top:
            config = _set_field(config, key, text, key)
        elif key.startswith("model."):
            name = key[len("model.") :]
            if name not in model_fields:
                raise ValueError(f"override {key}: unknown model field; known: {sorted(model_fields)}")
            value = _coerce(text, typing.get_type_hints(LWMConfig)[name], key)
            config = dataclasses.replace(config, model_overrides={**config.model_overrides, name: value})
        elif key.startswith("stages."):
            _, which, rest = key.split(".", 2) if key.count(".") >= 2 else (None, None, None)
            if rest is None:
                raise ValueError(f"override {key}: expected stages.<index or name>.<field>")
            names = [s.name for s in config.stages]
            index = int(which) if which.isdigit() else names.index(which) if which in names else None
            if index is None or not 0 <= index < len(names):
                raise ValueError(f"override {key}: no stage {which!r}; stages are {names}")
            stages = list(config.stages)
            stages[index] = _override_stage(stages[index], rest, text, key)
            config = dataclasses.replace(config, stages=tuple(stages))
        else:
            try:
                stages = tuple(_override_stage(s, key, text, key) for s in config.stages)
            except ValueError as e:
                if "unknown key" not in str(e):
                    raise
                raise ValueError(
                    f"override {key}: unknown key; run keys are {sorted(top)}, model.<LWMConfig field>, "
                    f"stages.<i>.<field>, or a stage/optimiser field for every stage"
                ) from e
            config = dataclasses.replace(config, stages=stages)
    return config


__all__ = [
    "OptimizerConfig",
    "PRECISIONS",
    "SCHEDULES",
    "StageConfig",
    "TrainConfig",
    "apply_overrides",
    "parse_mixture",
]
