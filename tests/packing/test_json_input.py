"""JSON from untrusted files: deep nesting, wrong types, oversized files and bad bytes are clear errors."""

from __future__ import annotations

import json

import pytest
from lwmkit.packing.json_input import parse_json, read_json


class _Bad(ValueError):
    pass


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deep_nesting_is_the_callers_error_not_a_recursion_error(opener):
    data = (opener * 100_000).encode()
    with pytest.raises(_Bad, match=r"^x\.json: JSON nested too deeply to parse"):
        parse_json(data, "x.json", _Bad, object)


def test_wrong_top_level_type_bad_utf8_and_bad_json_name_the_file():
    with pytest.raises(_Bad, match=r"^f: the JSON holds a list where a JSON object belongs"):
        parse_json(b"[1, 2]", "f", _Bad)
    with pytest.raises(_Bad, match=r"^f: not UTF-8 text"):
        parse_json(b'{"a": "\xff"}', "f", _Bad)
    with pytest.raises(_Bad, match=r"^f: not valid JSON"):
        parse_json(b'{"a": ', "f", _Bad)
    assert parse_json(b'{"a": [1, {"b": null}]}', "f", _Bad) == {"a": [1, {"b": None}]}


def test_read_json_refuses_a_file_over_its_limit_without_reading_it_whole(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"pad": "x" * 5000}))
    assert read_json(path, _Bad, max_bytes=6000)["pad"] == "x" * 5000
    with pytest.raises(_Bad, match=rf"^{path}: larger than 4,000 bytes"):
        read_json(path, _Bad, max_bytes=4000)
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json", _Bad)
    with pytest.raises(_Bad, match="cannot read it"):
        read_json(tmp_path, _Bad)  # a directory
