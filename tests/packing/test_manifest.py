"""manifest.json loading and the directory check behind `lwm-pack inspect`."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from lwmkit.packing.manifest import (
    ManifestError,
    load_manifest,
    parse_manifest,
    shard_paths,
    verify_directory,
)
from lwmkit.packing.shards import shard_name, write_shard

from .helpers import write_packed_dir

LENGTHS = [5, 9, 3, 2, 7, 8, 1, 4, 6, 6, 2, 3, 12]


@pytest.fixture
def dataset(tmp_path):
    d = tmp_path / "packed-8"
    write_packed_dir(str(d), LENGTHS, seq_len=8, num_shards=3)
    return d


def _edit_manifest(d, edit):
    path = d / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return manifest


def test_clean_directory_has_no_problems(dataset):
    assert verify_directory(str(dataset)) == []
    assert verify_directory(str(dataset), checksums=False) == []


def test_shard_paths_in_manifest_order(dataset):
    manifest = load_manifest(str(dataset))
    assert shard_paths(str(dataset)) == [
        os.path.join(str(dataset), shard_name("packed", i, 3)) for i in range(3)
    ]
    assert shard_paths(str(dataset), manifest) == shard_paths(str(dataset))


def test_missing_shard(dataset):
    gone = dataset / shard_name("packed", 1, 3)
    gone.unlink()
    problems = verify_directory(str(dataset))
    assert problems == [f"{gone}: listed in the manifest but missing"]


def test_wrong_record_count(dataset):
    shard = dataset / shard_name("packed", 0, 3)

    def edit(m):
        m["shards"][0]["records"] += 1
        m["records"] += 1

    _edit_manifest(dataset, edit)
    problems = verify_directory(str(dataset))
    assert any(p.startswith(f"{shard}: ") and "manifest says" in p for p in problems), problems
    assert any(p.startswith("shards hold") for p in problems), problems


def test_wrong_total_only(dataset):
    manifest = _edit_manifest(dataset, lambda m: m.update(records=m["records"] + 5))
    actual = manifest["records"] - 5
    assert verify_directory(str(dataset)) == [
        f"shards hold {actual} records, manifest says {manifest['records']}"
    ]


def test_wrong_sha256(dataset):
    shard = dataset / shard_name("packed", 2, 3)
    _edit_manifest(dataset, lambda m: m["shards"][2].update(sha256="0" * 64))
    assert verify_directory(str(dataset)) == [f"{shard}: SHA-256 differs from the manifest"]
    assert verify_directory(str(dataset), checksums=False) == []


def test_changed_shard_content(dataset):
    shard = dataset / shard_name("packed", 0, 3)
    records = [b"other"] * json.loads((dataset / "manifest.json").read_text())["shards"][0][
        "records"
    ]
    write_shard(str(shard), records)  # same count, different bytes
    assert verify_directory(str(dataset)) == [f"{shard}: SHA-256 differs from the manifest"]


def test_unlisted_extra_shard(dataset):
    extra = dataset / "packed-train.array_record-00003-of-00004"
    shutil.copy(dataset / shard_name("packed", 0, 3), extra)
    assert verify_directory(str(dataset)) == [f"{extra}: shard not listed in the manifest"]


def test_other_files_are_not_extra_shards(dataset):
    (dataset / "documents.parquet").write_bytes(b"x")
    (dataset / "documents-train.array_record-00000-of-00001").write_bytes(b"x")  # other dataset
    assert verify_directory(str(dataset)) == []


def test_no_manifest_names_the_path(tmp_path):
    path = os.path.join(str(tmp_path), "manifest.json")
    with pytest.raises(ManifestError, match="no manifest") as e:
        load_manifest(str(tmp_path))
    assert path in str(e.value)
    with pytest.raises(ManifestError) as e:
        verify_directory(str(tmp_path))
    assert path in str(e.value)


def test_unreadable_manifest_names_the_path(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON") as e:
        load_manifest(str(tmp_path))
    assert str(tmp_path / "manifest.json") in str(e.value)


@pytest.mark.parametrize("content", [{"format_version": 3}, {"kind": "packed"}])
def test_wrong_version_names_the_path(tmp_path, content):
    (tmp_path / "manifest.json").write_text(json.dumps(content))
    with pytest.raises(ManifestError, match="format_version") as e:
        load_manifest(str(tmp_path))
    assert str(tmp_path / "manifest.json") in str(e.value)


def test_manifest_error_is_a_value_error():
    assert issubclass(ManifestError, ValueError)


def test_total_mismatch_reported_whatever_the_directory_name(tmp_path):
    d = tmp_path / "missing-pieces"
    write_packed_dir(str(d), LENGTHS, seq_len=8, num_shards=3)

    def edit(m):
        m["shards"][0]["sha256"] = "0" * 64
        m["records"] += 5

    _edit_manifest(d, edit)
    problems = verify_directory(str(d))
    assert any(p.startswith("shards hold") for p in problems), problems


def test_a_deeply_nested_manifest_is_a_manifest_error(tmp_path):
    (tmp_path / "manifest.json").write_text('{"shards": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(ManifestError, match="nested too deeply") as caught:
        load_manifest(str(tmp_path))
    assert str(tmp_path / "manifest.json") in str(caught.value)


@pytest.mark.parametrize(
    ("shards", "reason"),
    [
        ({}, "shards must be a list"),
        (["x"], r"shards\[0\] must be an object"),
        ([{"file": "../escape", "records": 1, "bytes": 1, "sha256": "0" * 64}], "not a plain file name"),
        ([{"file": "/abs", "records": 1, "bytes": 1, "sha256": "0" * 64}], "not a plain file name"),
        ([{"file": "s", "records": -1, "bytes": 1, "sha256": "0" * 64}], "records -1 is not a count"),
        ([{"file": "s", "records": True, "bytes": 1, "sha256": "0" * 64}], "records True is not a count"),
        ([{"file": "s", "records": 1, "bytes": 1, "sha256": "zz"}], "sha256 'zz' is not 64 hex digits"),
        (
            [{"file": "s", "records": 1, "bytes": 1, "sha256": "0" * 64, "crc32c": {"version": 1}}],
            "crc32c.range_bytes must be an int",
        ),
        (
            [{"file": "s", "records": 1, "bytes": 1, "sha256": "0" * 64,
              "crc32c": {"version": 1, "range_bytes": 65536, "outside": 0, "ranges": "AAA"}}],  # fmt: skip
            "crc32c.ranges is not base64",
        ),
        (
            [{"file": "s", "records": 1, "bytes": 1, "sha256": "0" * 64,
              "checksums": {"algorithm": "md5", "version": 1}}],  # fmt: skip
            "checksums.algorithm 'md5'",
        ),
        (
            [{"file": "s", "records": 1, "bytes": 1, "sha256": "0" * 64,
              "checksums": {"algorithm": ["xxh3_64"], "version": 1}}],  # fmt: skip
            r"checksums.algorithm \['xxh3_64'\]",
        ),
        (
            [{"file": "s", "records": 1, "bytes": 1, "sha256": "0" * 64, "checksums": {
              "algorithm": "xxh3_64", "version": 1, "range_bytes": 65536, "outside": 5, "ranges": ""}}],  # fmt: skip
            "checksums.outside must be 16 lower-case hex digits",
        ),
        (
            [{"file": "s", "records": 1, "bytes": 1, "sha256": "0" * 64, "checksums": {
              "algorithm": "xxh3_64", "version": 1, "range_bytes": 65536, "outside": "0" * 16, "ranges": "AAAAAA=="}}],  # fmt: skip
            "checksums.ranges holds 4 bytes, not whole uint64s",
        ),
    ],
)
def test_malformed_shard_entries_name_the_field(shards, reason):
    data = json.dumps({"format_version": 1, "shards": shards}).encode()
    with pytest.raises(ManifestError, match=reason) as caught:
        parse_manifest(data, "s3://b/d/manifest.json")
    assert str(caught.value).startswith("s3://b/d/manifest.json: ")
