"""Named training runs: LWM's progressive text and vision-language stages, and tiny CPU runs for tests.

Each preset is a function returning a `TrainConfig`; its docstring holds the command that runs it
(a stage after the first of a chain alone is `_later_stage`'s, from the stage tables).
Every single-stage preset names its data mixture, `seq_len`, RoPE theta, batch in tokens, mesh,
optimiser and checkpoint cadence; `text-progressive` and `vision-progressive` chain them, each stage
starting from the previous stage's parameters as LWM did.

LWM's numbers, as recorded from the tables of its paper (arXiv 2402.08268, appendix; check them
there before a long run):
    text   32K   128K  256K  512K  1M     theta 1e6, 1e7, 1e7, 2.5e7, 5e7; 4M tokens per batch;
                                          steps 1200, 3000, 3000, 720, 450; warmup 100, 200, 200, 50, 25;
                                          AdamW, constant LR 4e-5; LWM-Text is text only (no vision tables)
    vision 1K    8K    32K   128K  1M     theta 5e7; 8M tokens per batch; steps 45000, 14000, 1200, 450, 50;
                                          warmup 1000, 500, 100, 50, 5; cosine LR 6e-4 (1K, 8K) and 8e-5
The meshes (dp, fsdp, tp, sp) are lwmkit's, written for 512 devices: fsdp takes what the ring (sp)
leaves (one sequence per data-parallel device), and the ring grows with the context so each device
holds 8K-32K tokens of a sequence.

Dataset directories are templates under the run's `data_root`, as `lwm-pack` writes them, e.g.
`lwm-pack books --output DATA/books --seq-len 32768` makes DATA/books/packed-32768.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence

from lwmkit.lwm_model.train_config import OptimizerConfig, StageConfig, TrainConfig, apply_overrides

_TEXT = (("books/packed-{seq_len}", 1.0),)
# Image-text and video-text pairs with some text kept in (LWM mixed text into its vision stages).
_VISION = (("images/packed-{seq_len}", 0.45), ("video/packed-{seq_len}", 0.4), ("books/packed-{seq_len}", 0.15))
# Chat stages: model-generated long-context QA next to image and video chat.
_CHAT = (("qa/packed-{seq_len}", 0.3), ("images/packed-{seq_len}", 0.2), ("video/packed-{seq_len}", 0.4),
         ("books/packed-{seq_len}", 0.1))

# name, seq_len, theta, steps, warmup, mesh, checkpoint_every
_TEXT_STAGES = (
    ("text-32k", 1 << 15, 1e6, 1200, 100, "1,-1,1,4", 200),
    ("text-128k", 1 << 17, 1e7, 3000, 200, "1,-1,1,16", 250),
    ("text-256k", 1 << 18, 1e7, 3000, 200, "1,-1,1,32", 250),
    ("text-512k", 1 << 19, 2.5e7, 720, 50, "1,-1,1,64", 100),
    ("text-1m", 1 << 20, 5e7, 450, 25, "1,-1,4,32", 50),
)
# name, seq_len, steps, warmup, peak lr, end lr, mesh, checkpoint_every, mixture
_VISION_STAGES = (
    ("vision-1k", 1 << 10, 45000, 1000, 6e-4, 6e-5, "1,-1,1,1", 2000, _VISION),
    ("vision-8k", 1 << 13, 14000, 500, 6e-4, 6e-5, "1,-1,1,1", 1000, _VISION),
    ("vision-32k", 1 << 15, 1200, 100, 8e-5, 8e-5, "1,-1,1,2", 200, _CHAT),
    ("vision-128k", 1 << 17, 450, 50, 8e-5, 8e-5, "1,-1,1,8", 50, _CHAT),
    ("vision-1m", 1 << 20, 50, 5, 8e-5, 8e-5, "1,-1,1,64", 10, _CHAT),
)


def _text_stage(name: str) -> StageConfig:
    _, seq_len, theta, steps, warmup, mesh, every = next(s for s in _TEXT_STAGES if s[0] == name)
    return StageConfig(
        name=name, seq_len=seq_len, rope_theta=theta, steps=steps, batch_tokens=1 << 22, mixture=_TEXT,
        mesh=mesh, optimizer=OptimizerConfig(lr=4e-5, schedule="constant", warmup_steps=warmup),
        checkpoint_every=every,
    )


def _vision_stage(name: str) -> StageConfig:
    _, seq_len, steps, warmup, lr, end_lr, mesh, every, mixture = next(s for s in _VISION_STAGES if s[0] == name)
    return StageConfig(
        name=name, seq_len=seq_len, rope_theta=5e7, steps=steps, batch_tokens=1 << 23, mixture=mixture,
        mesh=mesh, optimizer=OptimizerConfig(lr=lr, end_lr=end_lr, schedule="cosine", warmup_steps=warmup),
        checkpoint_every=every,
    )


def _later_stage(run: Callable[..., TrainConfig], name: str, previous: str) -> Callable[[], TrainConfig]:
    """The preset of stage `name` alone, starting from the checkpoint of the stage before it."""

    def preset() -> TrainConfig:
        return run(name)

    preset.__name__ = preset.__qualname__ = name.replace("-", "_")
    preset.__doc__ = f"lwm-train {name} data_root=DATA init_from=orbax:runs/{previous}/checkpoints/{previous}"
    return preset


def _text_run(*names: str) -> TrainConfig:
    return TrainConfig(stages=tuple(_text_stage(n) for n in names), output=f"runs/{names[-1]}", model="7b",
                       model_overrides={"vision": False}, attention="ring", ring_layout="zigzag")


def _vision_run(*names: str) -> TrainConfig:
    return TrainConfig(stages=tuple(_vision_stage(n) for n in names), output=f"runs/{names[-1]}", model="7b",
                       attention="ring", ring_layout="zigzag")


def text_32k() -> TrainConfig:
    """LWM-Text 32K from LLaMA-2 7B:
    lwm-train text-32k data_root=DATA init_from=hf:Llama-2-7b-hf output=runs/text-32k"""
    return _text_run("text-32k")


def text_progressive() -> TrainConfig:
    """All of LWM-Text, 32K -> 1M, in one command:
    lwm-train text-progressive data_root=DATA init_from=hf:Llama-2-7b-hf output=runs/lwm-text"""
    return _text_run(*(s[0] for s in _TEXT_STAGES))


def vision_1k() -> TrainConfig:
    """LWM 1K from LWM-Text-1M (the vision tables start random):
    lwm-train vision-1k data_root=DATA init_from=orbax:runs/lwm-text/checkpoints/text-1m"""
    return _vision_run("vision-1k")


def vision_progressive() -> TrainConfig:
    """All of LWM's vision-language stages, 1K -> 1M:
    lwm-train vision-progressive data_root=DATA init_from=orbax:runs/lwm-text/checkpoints/text-1m"""
    return _vision_run(*(s[0] for s in _VISION_STAGES))


def _tiny_stage(name: str, seq_len: int, theta: float, steps: int, rows: int) -> StageConfig:
    return StageConfig(
        name=name, seq_len=seq_len, rope_theta=theta, steps=steps, batch_tokens=rows * seq_len,
        mixture=(("packed-{seq_len}", 1.0),), mesh="2,1,1,4", checkpoint_every=max(steps // 2, 1),
        optimizer=OptimizerConfig(lr=1e-2, end_lr=1e-3, schedule="cosine", warmup_steps=3, weight_decay=0.0),
    )


def _tiny_run(*stages: StageConfig) -> TrainConfig:
    return TrainConfig(stages=stages, output="runs/tiny", model="tiny", model_overrides={"vision": False},
                       vocab_from_data=True, attention="ring", ring_layout="zigzag", ring_block=64,
                       keep_checkpoints=2, log_every=5)


def tiny_cpu() -> TrainConfig:
    """The tiny text model on 8 CPU devices (2 data-parallel x a ring of 4), on one `lwm-pack books` output:
    lwm-train tiny-cpu data_root=out/books output=runs/tiny
    (lwm-train makes the 8 virtual CPU devices itself unless XLA_FLAGS already sets a count)

    dp, not fsdp, next to the ring: with jax 0.10.2 on CPU, dense attention's training step on an
    fsdp=2 x sp=4 mesh can hang in mismatched collectives (XLA's concurrency-optimised CPU
    scheduler; --xla_cpu_enable_concurrency_optimized_scheduler=false avoids it)."""
    return _tiny_run(_tiny_stage("tiny-512", 512, 1e4, 40, 8))


def tiny_progressive() -> TrainConfig:
    """Two tiny stages, 512 then 2,048 tokens with a larger RoPE theta, on 8 CPU devices:
    lwm-train tiny-progressive data_root=out/books output=runs/tiny-progressive
    (the books output must hold packed-512 and packed-2048: lwm-pack books --seq-len 512,2048)"""
    return _tiny_run(_tiny_stage("tiny-512", 512, 1e4, 20, 8), _tiny_stage("tiny-2048", 2048, 1e5, 10, 4))


TRAIN_PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "tiny-cpu": tiny_cpu,
    "tiny-progressive": tiny_progressive,
    "text-32k": text_32k,
    **{n: _later_stage(_text_run, n, prev) for prev, n in itertools.pairwise(s[0] for s in _TEXT_STAGES)},
    "text-progressive": text_progressive,
    "vision-1k": vision_1k,
    **{n: _later_stage(_vision_run, n, prev) for prev, n in itertools.pairwise(s[0] for s in _VISION_STAGES)},
    "vision-progressive": vision_progressive,
}


def train_preset(name: str) -> TrainConfig:
    """The named preset.

    Raises:
      ValueError: an unknown name, listing the known ones.
    """
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; known: {list(TRAIN_PRESETS)}")
    return TRAIN_PRESETS[name]()


def load_config(source: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """A preset name or a JSON file, then `key=value` overrides.

    A JSON file holds either a whole config (`TrainConfig.to_dict`, as every run writes to its
    config.json) or {"preset": NAME, "overrides": ["key=value", ...]}.

    Raises:
      ValueError: an unknown preset (listing them), a file that does not hold a config (naming it
        and why), or a bad override.
    """
    from lwmkit.packing.json_input import read_json

    if source in TRAIN_PRESETS:
        config = TRAIN_PRESETS[source]()
    elif os.path.isfile(source):
        try:
            values = read_json(source, ValueError, 1 << 20, expect=object)  # never RecursionError
            if isinstance(values, dict) and "preset" in values:
                config = load_config(str(values["preset"]), [str(o) for o in values.get("overrides", [])])
            else:
                config = TrainConfig.from_dict(values)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: not a training config: {e}") from e
    else:
        raise ValueError(f"config {source!r}: neither a preset ({list(TRAIN_PRESETS)}) nor a JSON file")
    return apply_overrides(config, overrides)
