"""The trainer's config: LWM's stage presets, validation naming the field, overrides, config files, the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from lwmkit.lwm_model.train import main
from lwmkit.lwm_model.train_config import (
    OptimizerConfig,
    StageConfig,
    TrainConfig,
    apply_overrides,
    parse_mixture,
)
from lwmkit.lwm_model.train_presets import TRAIN_PRESETS, load_config, train_preset

LWM_PRESETS = [n for n in TRAIN_PRESETS if n.startswith(("text-", "vision-"))]


def _mesh_sizes(mesh: str, devices: int) -> dict[str, int]:
    sizes = [int(p) for p in mesh.split(",")]
    if -1 in sizes:
        sizes[sizes.index(-1)] = devices // -int(np.prod(sizes))
    assert int(np.prod(sizes)) == devices, mesh
    return dict(zip(("dp", "fsdp", "tp", "sp"), sizes, strict=True))


@pytest.mark.parametrize("name", LWM_PRESETS)
def test_lwm_presets_fit_a_512_device_pod(name):
    config = train_preset(name)
    assert config.model == "7b" and config.attention == "ring"
    for stage in config.stages:
        mesh = _mesh_sizes(stage.mesh, 512)
        assert (stage.rows // stage.grad_accum) % (mesh["dp"] * mesh["fsdp"]) == 0, stage.name
        assert stage.seq_len % (2 * mesh["sp"]) == 0  # zigzag needs two chunks per ring device
        assert stage.seq_len // mesh["sp"] <= 1 << 15  # the ring keeps each device's share bounded
        assert stage.directories("DATA")[0].startswith("DATA/") and str(stage.seq_len) in stage.directories("D")[0]


def test_lwm_text_and_vision_stage_numbers():
    text = train_preset("text-progressive")
    assert [s.name for s in text.stages] == ["text-32k", "text-128k", "text-256k", "text-512k", "text-1m"]
    assert [s.seq_len for s in text.stages] == [1 << 15, 1 << 17, 1 << 18, 1 << 19, 1 << 20]
    assert [s.rope_theta for s in text.stages] == [1e6, 1e7, 1e7, 2.5e7, 5e7]
    assert {s.batch_tokens for s in text.stages} == {1 << 22}
    assert all(s.optimizer.schedule == "constant" and s.optimizer.lr == 4e-5 for s in text.stages)
    assert text.model_config().vision is False  # LWM-Text has no vision tables
    vision = train_preset("vision-progressive")
    assert [s.seq_len for s in vision.stages] == [1 << 10, 1 << 13, 1 << 15, 1 << 17, 1 << 20]
    assert {s.rope_theta for s in vision.stages} == {5e7} and {s.batch_tokens for s in vision.stages} == {1 << 23}
    assert all(s.optimizer.schedule == "cosine" for s in vision.stages) and vision.model_config().vision
    one = train_preset("text-128k")
    assert one.stages == (text.stages[1],) and one.output == "runs/text-128k"


def test_tiny_presets():
    tiny = train_preset("tiny-cpu")
    (stage,) = tiny.stages
    assert (stage.seq_len, stage.rows, stage.mesh) == (512, 8, "2,1,1,4")
    assert tiny.vocab_from_data and tiny.model == "tiny"
    two = train_preset("tiny-progressive")
    assert [(s.seq_len, s.rope_theta) for s in two.stages] == [(512, 1e4), (2048, 1e5)]
    assert stage.directories("out/books") == ["out/books/packed-512"]


def test_overrides_reach_the_right_fields_with_their_types():
    config = apply_overrides(train_preset("tiny-progressive"), [
        "output=runs/x", "attention=dense", "async_checkpoints=false", "peak_tflops=100",
        "model.hidden_size=128", "model.num_kv_heads=none",
        "steps=7", "lr=0.001", "schedule=constant",  # every stage
        "stages.1.steps=3", "stages.tiny-2048.optimizer.warmup_steps=0", "stages.0.mesh=1,1,1,8",
        "mixture=books/packed-{seq_len}:0.7,/abs/qa/packed-{seq_len}:0.3,s3://bucket/images",
    ])
    assert (config.output, config.attention, config.async_checkpoints, config.peak_tflops) == (
        "runs/x", "dense", False, 100.0)
    assert config.model_overrides == {"vision": False, "hidden_size": 128, "num_kv_heads": None}
    assert config.model_config().hidden_size == 128
    assert [s.steps for s in config.stages] == [7, 3]
    assert {s.optimizer.lr for s in config.stages} == {0.001}
    assert [s.optimizer.warmup_steps for s in config.stages] == [3, 0]
    assert config.stages[0].mesh == "1,1,1,8" and config.stages[1].mesh == "2,1,1,4"
    assert config.stages[1].mixture == (("books/packed-{seq_len}", 0.7), ("/abs/qa/packed-{seq_len}", 0.3),
                                        ("s3://bucket/images", 1.0))
    assert config.stages[1].directories("D") == ["D/books/packed-2048", "/abs/qa/packed-2048", "s3://bucket/images"]
    # The preset itself is untouched (configs are values).
    assert train_preset("tiny-progressive").model_overrides == {"vision": False}


@pytest.mark.parametrize("override, message", [
    ("steps", "expected key=value"),
    ("stepz=3", r"unknown key; run keys are .*'attention'"),
    ("model.hidden=3", r"unknown model field; known: .*'hidden_size'"),
    ("stages.9.steps=3", r"no stage '9'; stages are \['tiny-512'\]"),
    ("stages.0.bogus=1", r"unknown key; stage keys are .*'seq_len'.*optimiser keys .*'lr'"),
    ("steps=ten", r"steps='ten': invalid literal"),
    ("async_checkpoints=maybe", "expected true or false"),
    ("attention=flash", r"TrainConfig.attention='flash': must be one of \['dense', 'ring'\]"),
    ("schedule=linear", r"OptimizerConfig.schedule='linear': must be one of \['constant', 'cosine'\]"),
    ("batch_tokens=1000", r"StageConfig\('tiny-512'\).batch_tokens=1000: must be a multiple of seq_len=512"),
    ("grad_accum=3", r"grad_accum=3: must divide the 8 rows"),
    ("mesh=1,2,4", r"mesh='1,2,4': need four or five sizes"),
    ("model.num_heads=3", r"LWMConfig.hidden_size=64: must be a multiple of num_heads=3"),
    ("init_from=gs://x", r"init_from='gs://x': must be '' or start with orbax:, lwm: or hf:"),
    ("b2=1.5", r"OptimizerConfig.b2=1.5: must be in \[0, 1\)"),
])
def test_bad_overrides_name_the_field_and_value(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(train_preset("tiny-cpu"), [override])


def test_direct_construction_is_validated():
    with pytest.raises(ValueError, match="stage names repeat"):
        TrainConfig(stages=(train_preset("tiny-cpu").stages[0],) * 2)
    with pytest.raises(ValueError, match=r"mixture=\(\): need"):
        StageConfig(name="s", seq_len=8, rope_theta=1e4, steps=1, batch_tokens=8, mixture=())
    with pytest.raises(ValueError, match="OptimizerConfig.clip_norm=0"):
        OptimizerConfig(clip_norm=0)
    with pytest.raises(ValueError, match="unknown training preset 'huge'"):
        train_preset("huge")
    assert parse_mixture("a:2,b") == (("a", 2.0), ("b", 1.0))


def test_config_files_round_trip(tmp_path):
    config = apply_overrides(train_preset("vision-progressive"), ["data_root=/data", "stages.2.lr=1e-5"])
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config.to_dict()))
    assert load_config(str(path)) == config
    assert load_config(str(path), ["seed=3"]) == dataclasses.replace(config, seed=3)
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"preset": "vision-progressive", "overrides": ["data_root=/data", "stages.2.lr=1e-5"]}))
    assert load_config(str(short)) == config
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stages": [], "colour": "red"}))
    with pytest.raises(ValueError, match=r"bad.json: not a training config: TrainConfig: unknown fields \['colour'\]"):
        load_config(str(bad))
    bad.write_text("[" * 100_000)
    with pytest.raises(ValueError, match=r"bad.json: not a training config: .*nested too deeply"):
        load_config(str(bad))  # not a RecursionError
    with pytest.raises(ValueError, match="neither a preset"):
        load_config(str(tmp_path / "missing.json"))


def test_cli_prints_lists_and_reports_errors(capsys):
    assert main(["tiny-cpu", "steps=3", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["stages"][0]["steps"] == 3 and printed["model"] == "tiny"
    assert TrainConfig.from_dict(printed) == load_config("tiny-cpu", ["steps=3"])
    assert main(["--list-presets"]) == 0
    listed = capsys.readouterr().out
    assert all(f"{name}: " in listed for name in TRAIN_PRESETS)
    assert main(["tiny-cpu", "stepz=3"]) == 2
    assert "lwm-train: error: override stepz: unknown key" in capsys.readouterr().err


def test_a_2d_mesh_is_accepted_and_checked_against_the_model():
    from lwmkit.lwm_model.train import stage_model_config

    config = load_config("tiny-cpu", ["mesh=1,1,1,2,4", "ring_layout=balanced"])
    (stage,) = config.stages
    assert stage.mesh == "1,1,1,2,4" and config.ring_layout == "balanced"
    model = stage_model_config(config, stage, 2, 512, ulysses=4)
    assert (model.attention_impl, model.ring_layout, model.ring_block_q) == ("ring", "balanced", model.ring_block_k)
    with pytest.raises(ValueError, match=r"4 heads over tp=2 do not split over ulysses=4"):
        stage_model_config(config, stage, 2, 512, ulysses=4, tp=2)
    with pytest.raises(ValueError, match=r"seq_len=512 does not split over sp=2 x ulysses=3"):
        stage_model_config(config, stage, 2, 512, ulysses=3)
    with pytest.raises(ValueError, match=r"mesh='1,1,1,2,4,1': need four or five sizes"):
        load_config("tiny-cpu", ["mesh=1,1,1,2,4,1"])
    # Dense attention has no head split to check: the sequence axes only shard activations.
    dense = load_config("tiny-cpu", ["mesh=1,1,1,2,4", "attention=dense"])
    assert stage_model_config(dense, dense.stages[0], 2, 512, ulysses=4, tp=2).attention_impl == "dense"
