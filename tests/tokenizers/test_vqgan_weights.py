"""VQGAN weights: lwmkit safetensors, LWM's pickle (restricted unpickler), diffusers layout, fingerprint.

Everything here runs without torch: diffusers-layout files are written from lwmkit params with the
inverse of the documented conversion (tests/tokenizers/test_vqgan_interop.py checks the layout
against diffusers itself).
"""

from __future__ import annotations

import json
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
from lwmkit.tokenizers import vqgan_weights as vw
from lwmkit.tokenizers.vqgan import VQGAN_PRESETS, ImageTokenizer, WeightsError

TINY = VQGAN_PRESETS["tiny"]


@pytest.fixture(scope="module")
def tok() -> ImageTokenizer:
    return ImageTokenizer.random("tiny", seed=3)


def to_diffusers(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """lwmkit flat params -> diffusers VQModel state dict (numpy), the inverse of load_diffusers."""
    out = {}
    for lwm, hf, kind, _ in vw.layout(TINY):
        if kind == "conv":
            out[f"{hf}.weight"] = np.ascontiguousarray(flat[f"{lwm}/kernel"].transpose(3, 2, 0, 1))  # HWIO -> OIHW
            out[f"{hf}.bias"] = flat[f"{lwm}/bias"]
        elif kind == "norm":
            out[f"{hf}.weight"], out[f"{hf}.bias"] = flat[f"{lwm}/scale"], flat[f"{lwm}/bias"]
        else:
            out[f"{hf}.weight"] = flat[f"{lwm}/embeddings"]
    return out


def assert_same_params(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# -- layout and fingerprint ---------------------------------------------------------------------


def test_random_params_follow_the_layout_and_the_seed(tok):
    flat = vw.random_params(TINY, 3)
    assert {k: v.shape for k, v in flat.items()} == vw.expected_shapes(TINY)
    assert all(v.dtype == np.float32 for v in flat.values())
    assert_same_params(flat, tok.flat_params())
    kernel = flat["decoder/Conv_0/kernel"]  # LeCun normal: std 1/sqrt(fan_in)
    assert abs(kernel.std() * np.sqrt(3 * 3 * TINY.z_channels) - 1) < 0.1
    assert abs(flat["quantize/embeddings"].std() - TINY.codebook_init_std) < 0.01


def test_sha256_is_canonical_and_sees_every_value(tok):
    flat = tok.flat_params()
    sha = vw.params_sha256(flat)
    assert vw.params_sha256(dict(reversed(list(flat.items())))) == sha  # key order does not matter
    changed = dict(flat)
    changed["quant_conv/bias"] = flat["quant_conv/bias"].copy()
    changed["quant_conv/bias"][0] += 1e-7
    assert vw.params_sha256(changed) != sha
    renamed = {("x" + k if k == "quant_conv/bias" else k): v for k, v in flat.items()}
    assert vw.params_sha256(renamed) != sha


def test_check_params_names_the_file_and_the_misfit(tok):
    flat = tok.flat_params()
    with pytest.raises(WeightsError, match=r"w\.bin: .*missing \['quant_conv/bias'\]"):
        vw.check_params({k: v for k, v in flat.items() if k != "quant_conv/bias"}, TINY, "w.bin")
    bad = {**flat, "quant_conv/bias": np.zeros(3, np.float32)}
    with pytest.raises(WeightsError, match=r"wrong shape \['quant_conv/bias \(3,\) != \(8,\)'\]"):
        vw.check_params(bad, TINY, "w.bin")
    with pytest.raises(WeightsError, match="does not fit|do not fit"):
        vw.check_params(flat, VQGAN_PRESETS["lwm"], "w.bin")


# -- lwmkit's format ----------------------------------------------------------------------------


def test_save_and_load_round_trip_keeps_params_and_provenance(tok, tmp_path):
    path = str(tmp_path / "vqgan.safetensors")
    tok.save(path)
    assert vw.detect_format(path) == "lwmkit"
    back = ImageTokenizer.from_weights(path)  # preset "lwm" by default, but the file records "tiny"
    assert back.config == TINY
    assert_same_params(back.flat_params(), tok.flat_params())
    fp, fp0 = back.fingerprint(), tok.fingerprint()
    assert {k: fp[k] for k in ("sha256", "preset", "source", "random_init", "seed")} == {
        k: fp0[k] for k in ("sha256", "preset", "source", "random_init", "seed")
    }
    with open(path, "rb") as f:
        assert b"\x80\x04" not in f.read(64)  # safetensors header, no pickle
    meta = vw._safetensors_header(path)[0]
    assert meta["format"] == "lwmkit-vqgan" and json.loads(meta["config"])["hidden_channels"] == 16


def test_a_corrupted_lwmkit_file_is_refused(tok, tmp_path):
    path = tmp_path / "vqgan.safetensors"
    tok.save(str(path))
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # one bit of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="do not match the sha256 recorded"):
        ImageTokenizer.from_weights(str(path))


def test_unknown_files_are_refused_by_content(tmp_path):
    junk = tmp_path / "weights.bin"
    junk.write_bytes(b"GIF89a not weights at all")
    with pytest.raises(WeightsError, match="weights.bin: not VQGAN weights"):
        ImageTokenizer.from_weights(str(junk))
    with pytest.raises(WeightsError, match="cannot read"):
        ImageTokenizer.from_weights(str(tmp_path / "missing.safetensors"))
    with pytest.raises(WeightsError, match="folder without"):
        ImageTokenizer.from_weights(str(tmp_path))
    from safetensors.numpy import save_file

    other = tmp_path / "other.safetensors"
    save_file({"model.layers.0.weight": np.zeros(2, np.float32)}, str(other))
    with pytest.raises(WeightsError, match="neither lwmkit's VQGAN nor a diffusers VQModel"):
        ImageTokenizer.from_weights(str(other))


def _safetensors(path, header: bytes, tail: bytes = b"") -> str:
    path.write_bytes(len(header).to_bytes(8, "little") + header + tail)
    return str(path)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"__metadata__": {"config": "' + b"[" * 100_000 + b'"}}', "format None version None"),
        (b"[1, 2]", "header is a list, not a JSON object"),
        (b'{"__metadata__": ["format"]}', "__metadata__ must be an object of strings"),
        (b'{"__metadata__": {"format": 1}}', "__metadata__ must be an object of strings"),
        (b'{"w": 5}', "tensor entries that are not objects"),
        (b'{"\xff": \xff}', "not valid JSON"),
        (b'{"a": "\xff\xfe"}', "not valid JSON"),
    ],
)
def test_hostile_safetensors_headers_are_weights_errors(tmp_path, header, reason):
    path = _safetensors(tmp_path / "w.safetensors", header)
    with pytest.raises(WeightsError, match=reason) as caught:
        vw.load_lwmkit(path)
    assert path in str(caught.value)
    with pytest.raises(WeightsError, match="w.safetensors: "):  # found by content, then refused
        ImageTokenizer.from_weights(path)


def test_a_deeply_nested_config_in_lwmkit_metadata_is_a_weights_error(tmp_path):
    deep = json.dumps({"format": "lwmkit-vqgan", "format_version": "1", "config": "[" * 100_000})
    path = _safetensors(tmp_path / "w.safetensors", json.dumps({"__metadata__": json.loads(deep)}).encode())
    with pytest.raises(WeightsError, match=r"w\.safetensors: bad or missing config.*nested too deeply"):
        ImageTokenizer.from_weights(path)


@pytest.mark.parametrize("length", [b"", b"\x05\x00", (1 << 40).to_bytes(8, "little")])
def test_short_files_and_lying_header_lengths_are_weights_errors(tmp_path, length):
    path = tmp_path / "w.safetensors"
    path.write_bytes(length + b"{}")
    with pytest.raises(WeightsError, match=r"w\.safetensors: "):
        vw.load_lwmkit(str(path))


def test_a_deeply_nested_diffusers_config_is_a_weights_error(tok, tmp_path):
    from safetensors.numpy import save_file

    folder = tmp_path / "vqmodel"
    folder.mkdir()
    save_file(to_diffusers(tok.flat_params()), str(folder / vw.DIFFUSERS_WEIGHTS))
    (folder / "config.json").write_text("[" * 100_000)
    with pytest.raises(WeightsError, match=r"config\.json.*nested too deeply"):
        vw.load_diffusers(str(folder), TINY)
    (folder / "config.json").write_text("[1]")
    with pytest.raises(WeightsError, match=r"config\.json: a diffusers config is a JSON object"):
        vw.load_diffusers(str(folder), TINY)


# -- diffusers' layout, without torch -----------------------------------------------------------


def test_diffusers_file_and_folder_convert_to_the_same_params(tok, tmp_path):
    from safetensors.numpy import save_file

    state = to_diffusers(tok.flat_params())
    assert state["encoder.conv_in.weight"].shape == (16, 3, 3, 3)  # OIHW
    single = str(tmp_path / "vq.safetensors")
    save_file(state, single)
    folder = tmp_path / "vqvae"
    folder.mkdir()
    save_file(state, str(folder / vw.DIFFUSERS_WEIGHTS))
    (folder / "config.json").write_text(json.dumps({"_class_name": "VQModel", **vw.diffusers_config(TINY)}))
    for path in (single, str(folder), str(tmp_path)):  # a file, the model folder, a pipeline folder with vqvae/
        got = ImageTokenizer.from_weights(path, preset="tiny")
        assert_same_params(got.flat_params(), tok.flat_params())
        assert got.fingerprint()["sha256"] == tok.fingerprint()["sha256"]
        assert not got.fingerprint()["random_init"] and got.fingerprint()["source"].startswith("diffusers:")


def test_diffusers_config_that_differs_from_the_preset_is_refused(tok, tmp_path):
    from safetensors.numpy import save_file

    save_file(to_diffusers(tok.flat_params()), str(tmp_path / vw.DIFFUSERS_WEIGHTS))
    config = {**vw.diffusers_config(TINY), "mid_block_add_attention": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="config.json: mid_block_add_attention is True"):
        ImageTokenizer.from_weights(str(tmp_path), preset="tiny")
    with pytest.raises(WeightsError, match="block_out_channels"):
        ImageTokenizer.from_weights(str(tmp_path), preset="lwm")


def test_diffusers_tensors_with_attention_or_missing_are_refused(tok, tmp_path):
    from safetensors.numpy import save_file

    state = to_diffusers(tok.flat_params())
    extra = tmp_path / "extra.safetensors"
    save_file({**state, "encoder.mid_block.attentions.0.to_q.weight": np.zeros((32, 32), np.float32)}, str(extra))
    with pytest.raises(WeightsError, match="no place for .*attentions"):
        ImageTokenizer.from_weights(str(extra), preset="tiny")
    missing = tmp_path / "missing.safetensors"
    save_file({k: v for k, v in state.items() if k != "post_quant_conv.bias"}, str(missing))
    with pytest.raises(WeightsError, match="missing tensor 'post_quant_conv.bias'"):
        ImageTokenizer.from_weights(str(missing), preset="tiny")


# -- LWM's pickle -------------------------------------------------------------------------------


def test_lwm_pickled_flax_tree_of_jax_arrays_loads(tok, tmp_path):
    # LWM pickles its params as a (Frozen)dict tree; this one holds jax arrays in a FrozenDict.
    import jax.numpy as jnp
    from flax.core import FrozenDict

    tree = FrozenDict(vw.unflatten({k: jnp.asarray(v) for k, v in tok.flat_params().items()}))
    path = tmp_path / "vqgan"
    path.write_bytes(pickle.dumps(tree))
    assert vw.detect_format(str(path)) == "lwm_pickle"
    got = ImageTokenizer.from_weights(str(path), preset="tiny")
    assert_same_params(got.flat_params(), tok.flat_params())
    assert got.fingerprint()["source"] == "lwm_pickle:vqgan"


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_lwm_pickle_of_numpy_variables_loads(tok, tmp_path, protocol):
    # {'params': OrderedDict tree of numpy arrays}, at the protocols Python has written by default.
    tree = {"params": OrderedDict(vw.unflatten(tok.flat_params()))}
    path = tmp_path / "vqgan.pkl"
    path.write_bytes(pickle.dumps(tree, protocol=protocol))
    got = ImageTokenizer.from_weights(str(path), preset="tiny")
    assert got.fingerprint()["sha256"] == tok.fingerprint()["sha256"]


class _RunsCode:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Evals:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


@pytest.mark.parametrize("payload", ["os.system", "eval", "nested"])
def test_a_pickle_that_would_run_code_is_refused_without_running_it(tok, tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = _RunsCode(f"touch {marker}")
    if payload == "eval":
        evil = _Evals()
    tree = vw.unflatten(tok.flat_params()) if payload == "nested" else {}
    tree["quant_conv"] = {"kernel": evil, "bias": np.zeros(8, np.float32)}
    path = tmp_path / "vqgan.pkl"
    path.write_bytes(pickle.dumps(tree))
    refused = "builtins.eval" if payload == "eval" else f"{os.system.__module__}.system"
    with pytest.raises(WeightsError, match=rf"vqgan\.pkl: refused pickle global {refused}"):
        ImageTokenizer.from_weights(str(path), preset="tiny")
    assert not marker.exists()


def test_a_truncated_pickle_names_the_file(tok, tmp_path):
    path = tmp_path / "vqgan.pkl"
    path.write_bytes(pickle.dumps(vw.unflatten(tok.flat_params()))[:1000])
    with pytest.raises(WeightsError, match=r"vqgan\.pkl: cannot unpickle"):
        ImageTokenizer.from_weights(str(path), preset="tiny")
