"""A Hugging Face checkpoint folder from elsewhere: hostile config.json, index and headers are clear errors."""

from __future__ import annotations

import json

import pytest
from lwmkit.lwm_model.config import preset
from lwmkit.lwm_model.hf_llama import load_hf_llama


def test_a_deeply_nested_or_wrong_config_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match=r"config\.json.*nested too deeply"):
        load_hf_llama(tmp_path)  # not a RecursionError
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(ValueError, match=r"config\.json.*a list where a JSON object belongs"):
        load_hf_llama(tmp_path)


@pytest.mark.parametrize(
    ("weight_map", "reason"),
    [
        ({"a": "../outside.safetensors"}, "weight_map names files outside the folder"),
        ({"a": "/etc/passwd"}, "weight_map names files outside the folder"),
        (["model.safetensors"], "weight_map must be an object of file names"),
        ({"a": 5}, "weight_map must be an object of file names"),
    ],
)
def test_a_shard_index_may_not_lead_out_of_the_folder(tmp_path, weight_map, reason):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match=rf"model\.safetensors\.index\.json: {reason}"):
        load_hf_llama(tmp_path, preset("tiny"))


@pytest.mark.parametrize("header", [b"[" * 100_000, b"{\xff}", b"[1]"])
def test_a_hostile_safetensors_header_names_the_file(tmp_path, header):
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        load_hf_llama(tmp_path, preset("tiny"))
