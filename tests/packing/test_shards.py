"""ArrayRecord shards: round trips, checksums, atomic writes, names, and TFDS read-back."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds
from lwmkit.packing.integrity import file_checksums
from lwmkit.packing.records import (
    DOCUMENT_FORMAT,
    PACKED_FORMAT,
    PACKED_TOKEN_FIELDS,
    SEGMENT_FIELDS,
    TOKEN_FIELDS,
    RecordError,
)
from lwmkit.packing.shards import (
    FILENAME_TEMPLATE,
    ShardInfo,
    count_records,
    dataset_info_json,
    dumps_json,
    parse_shard_name,
    read_shard,
    shard_name,
    write_json_atomic,
    write_shard,
)
from lwmkit.packing.source import ShardDataSource

from .helpers import write_dataset, write_documents_dir, write_packed_dir

LENGTHS = [5, 9, 3, 2, 7, 8, 1, 4, 6, 6, 2, 3, 12]


def _records(n: int) -> list[bytes]:
    return [bytes([i % 251]) * (i % 37) + i.to_bytes(4, "little") for i in range(n)]


def test_write_then_read_round_trip(tmp_path):
    records = [b""] + _records(600)  # more than one read batch of 256
    path = str(tmp_path / "nested" / "dir" / shard_name("packed", 0, 1))
    info = write_shard(path, iter(records))
    assert list(read_shard(path)) == records
    assert count_records(path) == len(records)
    assert info == ShardInfo(
        file=os.path.basename(path),
        records=len(records),
        bytes=os.path.getsize(path),
        sha256=hashlib.sha256(open(path, "rb").read()).hexdigest(),
        checksums=file_checksums(path),
    )
    assert info.to_json() == {
        "file": info.file,
        "records": info.records,
        "bytes": info.bytes,
        "sha256": info.sha256,
        "checksums": info.checksums.to_json(),
    }
    assert info.checksums.algorithm == "xxh3_64"
    assert ShardInfo.from_json({**info.to_json(), "tokens": 5}) == info  # a job's stats ignored
    old = ShardInfo(info.file, info.records, info.bytes, info.sha256)  # a pre-table manifest entry
    assert "checksums" not in old.to_json() and ShardInfo.from_json(old.to_json()) == old


def test_empty_shard(tmp_path):
    path = str(tmp_path / shard_name("packed", 0, 1))
    info = write_shard(path, [])
    assert info.records == 0
    assert list(read_shard(path)) == []


def test_same_records_same_file(tmp_path):
    a = write_shard(str(tmp_path / "a" / "s"), _records(50))
    b = write_shard(str(tmp_path / "b" / "s"), _records(50))
    assert a.sha256 == b.sha256 and a.checksums == b.checksums  # the table is as deterministic
    c = write_shard(str(tmp_path / "c" / "s"), _records(49))
    assert c.sha256 != a.sha256


class _Boom(RuntimeError):
    pass


def _failing(records, after):
    for i, r in enumerate(records):
        if i == after:
            raise _Boom("source failed")
        yield r


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / shard_name("packed", 0, 1)
    with pytest.raises(_Boom):
        write_shard(str(path), _failing(_records(100), after=40))
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file either


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = str(tmp_path / shard_name("packed", 0, 1))
    good = write_shard(path, _records(10))
    with pytest.raises(_Boom):
        write_shard(path, _failing(_records(100), after=5))
    assert os.listdir(tmp_path) == [os.path.basename(path)]
    assert list(read_shard(path)) == _records(10)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == good.sha256


def test_failed_write_of_a_non_bytes_record_leaves_nothing(tmp_path):
    path = tmp_path / "s"
    with pytest.raises(TypeError):
        write_shard(str(path), [b"ok", 12345])
    assert list(tmp_path.iterdir()) == []


def test_shard_name_and_parse():
    name = shard_name("packed", 3, 16)
    assert name == "packed-train.array_record-00003-of-00016"
    assert parse_shard_name(name) == ("packed", "train", 3, 16)
    assert parse_shard_name("/some/dir/" + name) == ("packed", "train", 3, 16)
    assert shard_name("documents", 0, 1, split="validation") == (
        "documents-validation.array_record-00000-of-00001"
    )
    assert parse_shard_name(shard_name("documents", 0, 1, split="validation")) == (
        "documents",
        "validation",
        0,
        1,
    )
    # The TFDS template names the same file.
    assert (
        FILENAME_TEMPLATE.format(
            DATASET="packed",
            SPLIT="train",
            FILEFORMAT="array_record",
            SHARD_X_OF_Y="00003-of-00016",
        )
        == name
    )


@pytest.mark.parametrize(
    "name",
    [
        "manifest.json",
        "packed-train.array_record-3-of-16",
        "packed-train.tfrecord-00003-of-00016",
        "Packed-train.array_record-00003-of-00016",
        "packed-train.array_record-00003-of-00016.tmp",
        ".packed-train.array_record-00003-of-00016.abc.tmp",
    ],
)
def test_parse_shard_name_rejects(name):
    assert parse_shard_name(name) is None


@pytest.mark.parametrize("index, count", [(-1, 4), (4, 4), (0, 0)])
def test_shard_name_rejects_out_of_range(index, count):
    with pytest.raises(ValueError, match="outside"):
        shard_name("packed", index, count)


def test_json_is_canonical_and_written_atomically(tmp_path):
    assert dumps_json({"b": 1, "a": "ü"}) == dumps_json({"a": "ü", "b": 1})
    assert dumps_json({"a": "ü"}).decode("utf-8") == '{\n  "a": "ü"\n}\n'
    path = tmp_path / "x" / "f.json"
    write_json_atomic(str(path), {"k": [1, 2]})
    assert json.loads(path.read_text()) == {"k": [1, 2]}
    assert os.listdir(path.parent) == ["f.json"]


def test_dataset_info_json():
    shards = [ShardInfo("a", 3, 100, "x"), ShardInfo("b", 2, 50, "y")]
    info = dataset_info_json("packed", shards, "desc")
    assert info["name"] == "packed"
    assert info["fileFormat"] == "array_record"
    assert info["splits"] == [
        {
            "name": "train",
            "filepathTemplate": FILENAME_TEMPLATE,
            "shardLengths": ["3", "2"],
            "numBytes": "150",
        }
    ]


# ---------------------------------------------------------------------------------------------
# A whole directory, read by TFDS and by our own data source


def test_tfds_reads_a_packed_directory(tmp_path):
    d = str(tmp_path / "packed-8")
    records = write_packed_dir(d, LENGTHS, seq_len=8, num_shards=3)
    builder = tfds.builder_from_directory(d)
    assert builder.info.splits["train"].num_examples == len(records)
    assert builder.info.splits["train"].num_shards == 3
    tfds_source = builder.as_data_source()["train"]
    ours = ShardDataSource(d)
    assert len(tfds_source) == len(ours) == len(records)
    for i, expected in enumerate(records):
        got_tfds, got_ours = tfds_source[i], ours[i]
        assert got_tfds["format"] == PACKED_FORMAT.encode()
        assert got_ours["format"] == PACKED_FORMAT
        for name in (*PACKED_TOKEN_FIELDS, *SEGMENT_FIELDS):
            assert got_tfds[name].dtype == got_ours[name].dtype, name
            np.testing.assert_array_equal(got_tfds[name], got_ours[name], err_msg=name)
            np.testing.assert_array_equal(got_ours[name], expected[name], err_msg=name)


def test_tfds_reads_a_document_directory(tmp_path):
    d = str(tmp_path / "documents")
    docs = write_documents_dir(d, [3, 0, 17, 1, 5], num_shards=2)
    tfds_source = tfds.builder_from_directory(d).as_data_source()["train"]
    ours = ShardDataSource(d)
    assert ours.kind == "document"
    assert ours.seq_len is None
    assert len(tfds_source) == len(ours) == len(docs)
    for i, doc in enumerate(docs):
        got_tfds, got_ours = tfds_source[i], ours[i]
        assert got_ours["format"] == DOCUMENT_FORMAT
        assert got_tfds["doc_id"] == got_ours["doc_id"] == doc["doc_id"]
        assert got_tfds["source_line"] == got_ours["source_line"] == doc["source_line"]
        assert got_tfds["source_file"].decode() == got_ours["source_file"] == doc["source_file"]
        for name in TOKEN_FIELDS:
            np.testing.assert_array_equal(got_tfds[name], got_ours[name], err_msg=name)
            np.testing.assert_array_equal(got_ours[name], doc[name], err_msg=name)


def test_data_source_indexing_and_pickling(tmp_path):
    d = str(tmp_path / "packed-8")
    records = write_packed_dir(d, LENGTHS, seq_len=8, num_shards=2)
    src = ShardDataSource(d)
    assert src.kind == "packed" and src.seq_len == 8
    n = len(src)
    np.testing.assert_array_equal(src[-1]["tokens"], records[-1]["tokens"])
    np.testing.assert_array_equal(src[np.int64(1)]["tokens"], records[1]["tokens"])
    with pytest.raises(IndexError):
        src[n]
    with pytest.raises(IndexError):
        src[-n - 1]
    batch = src.__getitems__([n - 1, 0, 2])
    for got, i in zip(batch, [n - 1, 0, 2], strict=True):
        np.testing.assert_array_equal(got["tokens"], records[i]["tokens"])
    clone = pickle.loads(pickle.dumps(src))
    assert len(clone) == n
    np.testing.assert_array_equal(clone[3]["segment_doc_ids"], records[3]["segment_doc_ids"])
    assert "records=" in repr(src) and d in repr(src)


def test_data_source_rejects_count_mismatch(tmp_path):
    d = tmp_path / "packed-8"
    write_packed_dir(str(d), LENGTHS, seq_len=8)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["records"] += 1
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecordError, match="manifest says"):
        ShardDataSource(str(d))


def test_data_source_names_the_record_it_cannot_decode(tmp_path):
    d = tmp_path / "bad"
    write_dataset(str(d), [b"\x0a\x05ab"], kind="packed", seq_len=8, num_shards=1)
    with pytest.raises(RecordError, match="record 0"):
        ShardDataSource(str(d))[0]
