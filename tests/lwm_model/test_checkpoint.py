"""Parameter files: LWM's streaming msgpack format (read and write), Orbax round trips, layer layouts."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import jax
import msgpack
import numpy as np
import pytest
from flax.serialization import to_bytes
from flax.traverse_util import flatten_dict, unflatten_dict
from lwmkit.lwm_model.checkpoint import (
    expected_shapes,
    load_lwm_params,
    orbax_params_dir,
    read_lwm_params,
    restore_params,
    save_lwm_params,
    save_params,
    stack_layers,
    unstack_layers,
)
from lwmkit.lwm_model.config import preset
from lwmkit.lwm_model.mesh import make_mesh, param_shardings

TINY = preset("tiny", num_layers=2)


@pytest.fixture(scope="module")
def params():
    """Random arrays of the model's parameter shapes (traced, not compiled: these tests only move them)."""
    rng = np.random.default_rng(0)
    flat = {
        k: rng.normal(size=shape).astype(dtype)
        for k, (shape, dtype) in expected_shapes(TINY).items()
    }
    return unflatten_dict(flat, sep="/")


def write_like_lwm(path, tree, prefix=(), extra=()):
    """What tux/EasyLM's StreamingCheckpointer.save_train_state_to_file does: one msgpack
    (key tuple, flax to_bytes(array)) pair per leaf, streamed into the file."""
    packer = msgpack.Packer()
    with open(path, "wb") as f:
        for key, value in list(extra) + list(flatten_dict(tree).items()):
            f.write(packer.pack((prefix + key, to_bytes(np.asarray(value)))))


def assert_same_tree(a, b):
    fa, fb = flatten_dict(a, sep="/"), flatten_dict(b, sep="/")
    assert sorted(fa) == sorted(fb)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_reads_lwm_unrolled_train_state_into_scanned_model(tmp_path, params):
    unrolled = unstack_layers(flatten_dict(params, sep="/"))
    tree = {tuple(k.split("/")): v for k, v in unrolled.items()}
    path = tmp_path / "streaming_train_state"
    step = (("step",), np.int32(100))
    moment = (
        ("opt_state", "1", "0", "mu", "transformer", "ln_f", "kernel"),
        np.ones(64, np.float32),
    )
    write_like_lwm(path, unflatten_dict(tree), prefix=("params", "params"), extra=[step, moment])
    flat = read_lwm_params(path)
    assert "transformer/h/1/attention/wq/kernel" in flat and not any("opt_state" in k for k in flat)
    assert_same_tree(load_lwm_params(path, TINY), params)  # stacked into scan_decoder
    unrolled_config = dataclasses.replace(TINY, scan_layers=False)
    assert "0" in load_lwm_params(path, unrolled_config)["transformer"]["h"]


def test_save_then_load_round_trip_keeps_dtype_and_values(tmp_path, params):
    path = tmp_path / "params"
    bf16 = jax.tree.map(lambda x: x.astype("bfloat16"), params)
    save_lwm_params(path, bf16)
    flat = read_lwm_params(path)
    assert flat["lm_head/kernel"].dtype == np.dtype("bfloat16")
    config = dataclasses.replace(TINY, param_dtype="bfloat16")
    assert_same_tree(load_lwm_params(path, config), bf16)


def test_bad_files_name_the_file_and_the_problem(tmp_path, params):
    path = tmp_path / "params"
    save_lwm_params(path, params)
    data = path.read_bytes()
    cut = tmp_path / "truncated"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match=f"{cut}: truncated"):
        read_lwm_params(cut)
    junk = tmp_path / "junk"
    junk.write_bytes(msgpack.packb({"not": "a pair"}))
    with pytest.raises(
        ValueError, match=f"{junk}: record 0: expected a \\(key path, bytes\\) pair"
    ):
        read_lwm_params(junk)
    wrong = dataclasses.replace(TINY, hidden_size=32)
    with pytest.raises(
        ValueError,
        match=f"{path}: wrong shapes: .*wte/embedding \\(256, 64\\) \\(want \\(256, 32\\)\\)",
    ):
        load_lwm_params(path, wrong)
    text_only = tmp_path / "text_only"
    save_lwm_params(text_only, {k: v for k, v in params.items() if k != "vision_head"})
    with pytest.raises(ValueError, match="missing \\['vision_head/kernel'\\]"):
        load_lwm_params(text_only, TINY)


def test_stack_and_unstack_are_inverse(params):
    flat = flatten_dict(params, sep="/")
    unrolled = unstack_layers(flat)
    assert unrolled["transformer/h/1/feed_forward/w2/kernel"].shape == (128, 64)
    restacked = stack_layers(unrolled, TINY.num_layers)
    assert sorted(restacked) == sorted(flat)
    for k in flat:
        np.testing.assert_array_equal(np.asarray(restacked[k]), np.asarray(flat[k]))
    del unrolled["transformer/h/1/ffn_norm/kernel"]
    with pytest.raises(ValueError, match="ffn_norm/kernel: have layers \\[0\\], need 0..1"):
        stack_layers(unrolled, TINY.num_layers)


def test_orbax_round_trip_restores_values_and_shardings(tmp_path, params):
    path = tmp_path / "orbax"
    save_params(path, params)
    assert_same_tree(restore_params(path), params)
    mesh = make_mesh("1,2,1,4")
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        params,
        param_shardings(params, mesh),
    )
    restored = restore_params(path, target)
    assert_same_tree(restored, params)
    wq = restored["transformer"]["h"]["scan_decoder"]["attention"]["wq"]["kernel"]
    assert (
        wq.sharding
        == target["transformer"]["h"]["scan_decoder"]["attention"]["wq"]["kernel"].sharding
    )
    save_params(path, jax.tree.map(lambda x: x + 1, params))  # overwrite in place
    np.testing.assert_array_equal(
        restore_params(path)["lm_head"]["kernel"], np.asarray(params["lm_head"]["kernel"]) + 1
    )
    with pytest.raises(ValueError, match="no Orbax checkpoint"):
        restore_params(tmp_path / "missing")


def _sharded(params, dims: str):
    mesh = make_mesh(dims)
    return jax.tree.map(jax.device_put, params, param_shardings(params, mesh))


# Restores a checkpoint in a process that has ONE CPU device and compares it with the saved values.
_ONE_DEVICE = """
import sys, numpy as np, jax
from flax.traverse_util import flatten_dict
from lwmkit.lwm_model.checkpoint import restore_params
from lwmkit.lwm_model.mesh import make_mesh
assert len(jax.devices()) == 1
want = np.load(sys.argv[2])
for restored in (restore_params(sys.argv[1]), restore_params(sys.argv[1], mesh=make_mesh("1,1,1,1"))):
    flat = flatten_dict(restored, sep="/")
    assert sorted(flat) == sorted(want.files), (sorted(flat), want.files)
    for k in want.files:
        np.testing.assert_array_equal(np.asarray(flat[k]), want[k], err_msg=k)
print("restored", len(want.files), type(flatten_dict(restored, sep="/")["lm_head/kernel"]).__name__)
"""


def test_a_checkpoint_saved_on_eight_devices_restores_on_one(tmp_path, params):
    saved = _sharded(params, "1,2,1,4")
    assert len(saved["lm_head"]["kernel"].sharding.device_set) == 8
    save_params(tmp_path / "orbax", saved)
    np.savez(tmp_path / "want.npz", **flatten_dict(params, sep="/"))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _ONE_DEVICE, str(tmp_path / "orbax"), str(tmp_path / "want.npz")],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["restored", str(len(flatten_dict(params))), "ArrayImpl"]


def test_restore_goes_to_host_arrays_or_onto_the_mesh_given(tmp_path, params):
    save_params(tmp_path / "orbax", _sharded(params, "1,2,1,4"))
    host = restore_params(tmp_path / "orbax")
    assert all(isinstance(v, np.ndarray) for v in jax.tree.leaves(host))
    assert_same_tree(host, params)
    mesh = make_mesh("1,1,1,2", jax.devices()[:2])  # another mesh, fewer devices
    placed = restore_params(tmp_path / "orbax", mesh=mesh)
    assert_same_tree(placed, params)
    want = flatten_dict(param_shardings(params, mesh), sep="/")
    for k, v in flatten_dict(placed, sep="/").items():
        assert v.sharding == want[k], k


def test_a_trainer_step_or_stage_directory_finds_its_newest_params(tmp_path, params):
    stage = tmp_path / "checkpoints" / "tiny-512"
    for step in (10, 20):
        save_params(stage / str(step) / "params", jax.tree.map(lambda x, s=step: x + s, params))
    (stage / "30").mkdir()  # a step still being written: no params/ yet
    assert orbax_params_dir(stage) == stage / "20" / "params"
    assert orbax_params_dir(stage / "10") == stage / "10" / "params"
    np.testing.assert_array_equal(restore_params(stage)["lm_head"]["kernel"], params["lm_head"]["kernel"] + 20)
    with pytest.raises(ValueError, match="not a readable Orbax checkpoint|no Orbax checkpoint"):
        restore_params(tmp_path / "checkpoints")


def _array_ext(payload) -> msgpack.ExtType:
    from flax.serialization import _MsgpackExtType

    return msgpack.ExtType(_MsgpackExtType.ndarray, msgpack.packb(payload))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (msgpack.packb(_array_ext(((2,), 5, b"\0" * 8))), "malformed value: TypeError"),  # dtype 5
        (msgpack.packb(_array_ext(5)), "malformed value: TypeError"),
        (msgpack.packb(_array_ext(((100,), "float32", b"\0" * 8))), "malformed value: ValueError"),
        (b"\x91" * 100_000 + b"\xc0", "its value is msgpack nested too deeply"),
    ],
)
def test_hostile_values_are_value_errors_naming_file_and_record(tmp_path, value, reason):
    path = tmp_path / "params"
    good = msgpack.packb([["params", "a"], msgpack.packb(_array_ext(((1,), "float32", b"\0" * 4)))])
    path.write_bytes(good + msgpack.packb([["params", "b"], value]))
    with pytest.raises(ValueError, match=f"{path}: record 1: {reason}"):
        read_lwm_params(path)
    path.write_bytes(b"\x91" * 100_000 + b"\xc0")
    with pytest.raises(ValueError, match=f"{path}: record 0: msgpack nested too deeply"):
        read_lwm_params(path)
