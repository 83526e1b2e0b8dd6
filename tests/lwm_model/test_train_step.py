"""The train step on synthetic packed batches: LWM's loss split, exact gradient accumulation, precision,
the learning-rate schedule, weight decay, and the FLOP count behind MFU."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import jax
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict
from lwmkit.lwm_model.config import preset
from lwmkit.lwm_model.loss import lwm_loss
from lwmkit.lwm_model.mesh import make_mesh
from lwmkit.lwm_model.model import LWM, forward
from lwmkit.lwm_model.train import stage_model_config
from lwmkit.lwm_model.train_config import OptimizerConfig
from lwmkit.lwm_model.train_presets import load_config
from lwmkit.lwm_model.train_step import (
    build_train_step,
    init_model_params,
    init_state,
    learning_rate_schedule,
    loss_and_grads,
    make_optimizer,
    model_flops_per_token,
    peak_flops,
)
from lwmkit.packing.device_arrays import to_global_arrays

from tests.lwm_model.test_model import packed_batch

VISION_TINY = preset("tiny")  # the tiny preset keeps LWM's vision embedding and head
OPT = OptimizerConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0)


@pytest.fixture(scope="module")
def params():
    return jax.jit(lambda: init_model_params(VISION_TINY, jax.random.key(0)))()


def _step(config, mesh, params, batch, opt=OPT, mix="lwm", grad_accum=1):
    step, tx, shardings = build_train_step(config, mesh, opt, 10, mix, grad_accum)
    state = jax.device_put(init_state(params, tx), shardings)
    new_state, metrics = step(state, batch)
    return new_state, {k: float(v) for k, v in jax.device_get(metrics).items()}


@pytest.mark.parametrize("mix", ["lwm", "tokens"])
def test_step_loss_is_lwm_loss_over_the_loader_fields(params, mix):
    batch = packed_batch(seed=3, rows=2)
    weighted = batch["target_loss_weights"] > 0
    assert (batch["target_vision_mask"] & weighted).any() and (~batch["target_vision_mask"] & weighted).any()
    mesh = make_mesh("1,1,1,1", devices=jax.devices()[:1])
    _, metrics = _step(VISION_TINY, mesh, params, batch, mix=mix)
    want, parts = lwm_loss(forward(LWM(VISION_TINY), params, batch), batch, mix)
    np.testing.assert_allclose(metrics["loss"], float(want), rtol=1e-6)
    for name in ("text_loss", "vision_loss", "text_accuracy", "vision_accuracy", "text_weight", "vision_weight"):
        np.testing.assert_allclose(metrics[name], float(parts[name]), rtol=1e-6, err_msg=name)
    if mix == "lwm":  # LWM's split: half the vision loss plus half the text loss, each over its own tokens
        np.testing.assert_allclose(metrics["loss"], 0.5 * (metrics["text_loss"] + metrics["vision_loss"]), rtol=1e-6)
    assert metrics["lr"] == pytest.approx(1e-2) and metrics["grad_norm"] > 0


def test_gradient_accumulation_equals_the_whole_batch(params):
    # 4 rows over dp=2: each micro-batch of 2 rows keeps one row per device.
    batch = packed_batch(seed=4, rows=4, docs=((0, 7), (7, 20), (20, 30)))
    batch["target_loss_weights"][1] *= 3.0  # unequal row weights: per-micro-batch means would differ
    mesh = make_mesh("2,1,1,1", devices=jax.devices()[:2])
    model, global_batch = LWM(VISION_TINY, mesh), to_global_arrays(batch, mesh)
    whole, accum = (jax.jit(lambda p, b, n=n: loss_and_grads(model, p, b, "lwm", n))(params, global_batch)
                    for n in (1, 2))
    np.testing.assert_allclose(float(accum[0]), float(whole[0]), rtol=1e-6)
    for k, g in flatten_dict(whole[2], sep="/").items():
        np.testing.assert_allclose(np.asarray(flatten_dict(accum[2], sep="/")[k]), np.asarray(g), atol=1e-7,
                                   err_msg=k)
    # The step with grad_accum=2 reports the whole batch's loss and gradient norm.
    _, metrics = _step(VISION_TINY, mesh, params, batch, grad_accum=2)
    np.testing.assert_allclose(metrics["loss"], float(whole[0]), rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], float(optax.tree.norm(whole[2])), rtol=1e-5)


def test_bf16_policy_computes_in_bfloat16_and_keeps_float32_parameters(params):
    config = load_config("tiny-cpu", ["precision=bf16", "model.vision=true"])
    model = stage_model_config(config, config.stages[0], 4, VISION_TINY.vocab_size)
    assert (model.dtype, model.param_dtype) == ("bfloat16", "float32")
    assert dataclasses.replace(model, dtype="float32", attention_impl="dense", ring_layout="contiguous",
                               ring_block_q=512, ring_block_k=512, max_sequence_length=2048) == VISION_TINY
    mesh = make_mesh("1,1,1,1", devices=jax.devices()[:1])
    batch = packed_batch(seed=5, rows=2)
    model = dataclasses.replace(model, attention_impl="dense")
    state, bf16 = _step(model, mesh, params, batch)
    _, fp32 = _step(VISION_TINY, mesh, params, batch)
    assert {v.dtype for v in jax.tree.leaves(state["params"])} == {np.dtype("float32")}
    np.testing.assert_allclose(bf16["loss"], fp32["loss"], rtol=2e-2)
    assert bf16["loss"] != fp32["loss"]


def test_learning_rate_schedules():
    warm = learning_rate_schedule(OptimizerConfig(lr=1.0, warmup_steps=4), steps=10)
    np.testing.assert_allclose([float(warm(i)) for i in range(6)], [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    cosine = learning_rate_schedule(OptimizerConfig(lr=1.0, end_lr=0.1, schedule="cosine", warmup_steps=2), 10)
    lrs = [float(cosine(i)) for i in range(10)]
    assert lrs[:2] == [0.5, 1.0] and lrs[-1] == pytest.approx(0.1) and all(np.diff(lrs[1:]) < 0)
    assert float(learning_rate_schedule(OptimizerConfig(lr=3e-4), 5)(0)) == pytest.approx(3e-4)


def test_weight_decay_skips_norm_scales(params):
    tx = make_optimizer(OptimizerConfig(lr=1.0, weight_decay=0.5, clip_norm=None), steps=1)
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    flat, p = flatten_dict(updates, sep="/"), flatten_dict(params, sep="/")
    for k, u in flat.items():
        if k.endswith(("norm/kernel", "ln_f/kernel")):
            assert not np.asarray(u).any(), k
        else:
            np.testing.assert_allclose(np.asarray(u), -0.5 * np.asarray(p[k]), rtol=1e-6, err_msg=k)
    assert optax.tree.norm(updates) > 0


def test_model_flops_count_by_hand():
    # tiny: hidden 64, 4 heads of 16 with 2 kv heads, MLP 128, 2 layers, vocab 256, vision vocab 8448.
    attention = 64 * 64 + 2 * 64 * (2 * 16) + 64 * 64  # q, k, v, o
    mlp = 3 * 64 * 128
    heads = 64 * 256 + 64 * 8448
    params = 2 * (attention + mlp) + heads
    assert model_flops_per_token(VISION_TINY, 512) == 6 * params + 6 * 2 * 512 * 64
    text_only = dataclasses.replace(VISION_TINY, vision=False)
    assert model_flops_per_token(VISION_TINY, 512) - model_flops_per_token(text_only, 512) == 6 * 64 * 8448


def test_peak_flops_by_device_kind():
    assert peak_flops(SimpleNamespace(device_kind="NVIDIA H200")) == 989e12
    assert peak_flops(SimpleNamespace(device_kind="TPU v4")) == 275e12
    assert peak_flops(jax.devices()[0]) is None  # CPU: no meaningful peak
    assert peak_flops(jax.devices()[0], override_tflops=2.5) == 2.5e12
