"""The mmap shard reader: the same bytes as ArrayRecord, the fallback, damage, pickling, buffers."""

from __future__ import annotations

import concurrent.futures
import mmap
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
from array_record.python.array_record_data_source import ArrayRecordDataSource
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from lwmkit.packing.integrity import file_checksums
from lwmkit.packing.manifest import add_checksums
from lwmkit.packing.records import RecordError
from lwmkit.packing.shard_layout import BLOCK, BLOCK_HEADER, USABLE, index_records
from lwmkit.packing.shard_reader import (
    FALLBACK,
    MMAP,
    RecordBuffers,
    ShardFile,
    ShardFileError,
    ShardReader,
)
from lwmkit.packing.shards import write_shard
from lwmkit.packing.source import ShardDataSource

from .helpers import write_documents_dir, write_packed_dir

# Sizes around the block geometry: empty, tiny, a record that fills the rest of a block exactly,
# one byte more, whole usable blocks, and records that cross several block boundaries.
EDGE_SIZES = [0, 1, 5, 0, USABLE - 200, USABLE, USABLE + 1, BLOCK, 2 * USABLE, 3 * BLOCK + 7, 17]


def _records(sizes, seed=0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]


def _array_record_bytes(path) -> list[bytes]:
    reader = ArrayRecordReader(path)
    try:
        return [reader.read([i])[0] for i in range(reader.num_records())]
    finally:
        reader.close()


def _checked(path, **kwargs) -> ShardFile:
    """The shard opened as `ShardDataSource` opens it: with the table its writer computed."""
    return ShardFile(path, checksums=file_checksums(path), **kwargs)


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """A shard written by lwmkit's writer: edge sizes, then many random ones up to 5 blocks."""
    sizes = EDGE_SIZES + np.random.default_rng(1).integers(0, 5 * BLOCK, 150).tolist()
    records = _records(sizes)
    path = str(tmp_path_factory.mktemp("shard") / "packed-train.array_record-00000-of-00001")
    write_shard(path, records)
    return path, records


def test_every_record_is_the_bytes_array_record_reads(shard):
    path, records = shard
    theirs = _array_record_bytes(path)
    for f in (_checked(path).open(), ShardFile(path, verify=False).open()):
        assert f.mode == MMAP and f.fallback_reason is None
        assert len(f) == len(records)
        for i, expected in enumerate(records):
            got = f[i]
            assert isinstance(got, memoryview) and got.readonly
            assert bytes(got) == theirs[i] == expected, i
        # Random order, as a shuffled loader reads.
        for i in np.random.default_rng(2).permutation(len(records)):
            assert bytes(f[int(i)]) == records[i]


def test_the_index_matches_the_documented_layout(tmp_path):
    path = str(tmp_path / "two")
    write_shard(path, [b"a" * 5, b"b" * 70000])
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        # As in shard_layout.py's docstring: record 1 starts at 157 and meets the header at 64 KiB.
        assert index_records(mm) == ([107, 157], [5, 70000], [64, 112])
    finally:
        mm.close()


@pytest.mark.parametrize(
    "sizes, edge",
    [
        # Record 0's bytes start at 109: signature 64, chunk header 40, compression byte, sizes_size,
        # its size as a 3-byte varint; record 1's chunk header and prefix take 45 bytes.
        ([BLOCK - 109, 10], "record 0 ends exactly at the first block boundary"),
        ([BLOCK - 109 - 45, 70000], "record 1 starts right after the first block header"),
    ],
)
def test_records_that_touch_a_block_boundary(tmp_path, sizes, edge):
    path = str(tmp_path / "edge")
    records = _records(sizes)
    write_shard(path, records)
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        starts, _, _ = index_records(mm)
        mm.close()
    if "ends" in edge:
        assert starts[0] + sizes[0] == BLOCK, edge
    else:
        assert starts[1] == BLOCK + BLOCK_HEADER, edge
    f = _checked(path).open()
    assert [bytes(f[i]) for i in range(len(f))] == _array_record_bytes(path) == records


def test_empty_shard(tmp_path):
    path = str(tmp_path / "empty")
    write_shard(path, [])
    f = _checked(path, expected_records=0).open()
    assert f.mode == MMAP and len(f) == 0
    with pytest.raises(IndexError):
        f[0]


def test_records_inside_a_block_are_views_and_crossing_ones_copies(shard):
    path, records = shard
    f = _checked(path).open()
    small = f[1]  # 1 byte, inside one block
    big = f[EDGE_SIZES.index(3 * BLOCK + 7)]
    assert isinstance(small.obj, mmap.mmap)
    assert isinstance(big.obj, np.ndarray) and not np.shares_memory(
        big.obj, np.frombuffer(small.obj, np.uint8)
    )


def test_a_held_record_never_changes_while_others_are_read(shard):
    path, records = shard
    f = _checked(path, buffers=RecordBuffers(max_count=2)).open()
    crossing = [i for i, r in enumerate(records) if len(r) > BLOCK]
    held = {i: f[i] for i in crossing[:5]}
    for i in crossing * 2:
        f[i]
    for i, rec in held.items():
        assert bytes(rec) == records[i]


def test_buffers_are_reused_once_released():
    pool = RecordBuffers(max_count=8)
    a = pool.take(100_000)
    b = pool.take(100_000)
    assert not np.shares_memory(a, b)
    a_base = id(a.base)  # an id: holding the buffer itself would keep it in use
    del a
    c = pool.take(90_000)
    assert id(c.base) == a_base  # the released buffer, not a new one
    assert not np.shares_memory(c, b)
    big = pool.take(10 * BLOCK)  # too big for the buffers in the pool
    assert id(big.base) != a_base and big.shape == (10 * BLOCK,)


def test_buffers_keep_at_most_max_count():
    pool = RecordBuffers(max_count=3)
    held = [pool.take(1000) for _ in range(6)]  # all in use: the pool forgets the oldest
    assert len(pool._buffers) == 3
    assert len({id(h.base) for h in held}) == 6


def test_threads_read_the_same_bytes(shard):
    path, records = shard
    f = _checked(path)  # opened by whichever thread comes first
    order = np.random.default_rng(3).permutation(len(records) * 4) % len(records)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: bytes(f[int(i)]), order))
    assert got == [records[i] for i in order]


@pytest.mark.parametrize(
    "options, reason",
    [
        ("group_size:1", "compressed with zstd"),
        ("group_size:1,brotli", "compressed with brotli"),
        ("group_size:3,uncompressed", "group_size > 1"),
        ("group_size:1,uncompressed,transpose", "transposed"),
    ],
)
def test_other_array_record_files_fall_back_to_array_record(tmp_path, options, reason):
    records = _records([3, 0, 70000, 12, 200000, 1])
    path = str(tmp_path / "other")
    writer = ArrayRecordWriter(path, options)
    for r in records:
        writer.write(r)
    writer.close()
    f = ShardFile(path).open()
    assert f.mode == FALLBACK
    assert reason in f.fallback_reason and reason in repr(f)
    assert [bytes(f[i]) for i in range(len(f))] == records
    reader = ShardReader([path])
    assert reader.modes == {FALLBACK: 1} and "fallback" in repr(reader)
    clone = pickle.loads(pickle.dumps(reader))
    assert bytes(clone[4]) == records[4] and clone.modes == {FALLBACK: 1}


def _damaged_copy(src, dst, edit) -> str:
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as fh:
        edit(fh)
    return str(dst)


def test_truncated_files_name_the_file(shard, tmp_path):
    path, _ = shard
    size = os.path.getsize(path)
    for cut in (size - 1, size - BLOCK, size - BLOCK - 100, size // 2, 100, 10):
        bad = _damaged_copy(path, tmp_path / f"cut-{cut}", lambda fh, cut=cut: fh.truncate(cut))
        with pytest.raises(ShardFileError, match=bad):
            ShardFile(bad).open()
    empty = _damaged_copy(path, tmp_path / "empty", lambda fh: fh.truncate(0))
    with pytest.raises(ShardFileError, match="cannot map"):
        ShardFile(empty).open()
    with pytest.raises(ShardFileError, match="cannot map"):
        ShardFile(str(tmp_path / "missing")).open()


def test_a_damaged_chunk_header_names_the_file_and_record(shard, tmp_path):
    path, records = shard
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        _, _, chunks = index_records(mm)
        mm.close()
    target = 7
    assert chunks[target] % BLOCK + 40 <= BLOCK  # the header lies inside one block

    def bump_data_size(fh):
        fh.seek(chunks[target] + 8)
        (n,) = struct.unpack("<Q", fh.read(8))
        fh.seek(chunks[target] + 8)
        fh.write(struct.pack("<Q", n + (1 << 20)))

    bad = _damaged_copy(path, tmp_path / "header", bump_data_size)
    with pytest.raises(ShardFileError, match=rf"{bad}: record {target}\b"):
        ShardFile(bad).open()


def test_a_damaged_block_header_inside_a_record_names_the_file_and_record(shard, tmp_path):
    path, records = shard
    target = EDGE_SIZES.index(3 * BLOCK + 7)
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        starts, _, _ = index_records(mm)
        mm.close()
    boundary = (starts[target] // BLOCK + 2) * BLOCK  # the second block header inside the record

    def overwrite_previous_chunk(fh):
        fh.seek(boundary + 8)
        fh.write(struct.pack("<Q", 12345))

    bad = _damaged_copy(path, tmp_path / "block", overwrite_previous_chunk)
    f = ShardFile(bad).open()  # opening reads no block header inside records
    assert bytes(f[target - 1]) == records[target - 1]
    with pytest.raises(ShardFileError, match=rf"{bad}: record {target}\b"):
        f[target]


def test_not_an_array_record_file(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"\x00" * (2 * BLOCK))
    with pytest.raises(ShardFileError, match="signature"):
        ShardFile(str(path)).open()


def test_count_against_the_manifest(shard):
    path, records = shard
    with pytest.raises(ShardFileError, match=rf"{path}: {len(records)} records, the manifest says"):
        ShardReader([path], records=[len(records) + 1])
    with pytest.raises(ValueError, match="records"):
        ShardReader([path], records=[1, 2])
    assert issubclass(ShardFileError, RecordError)


def test_reader_spans_files_and_pickles_paths_only(tmp_path):
    parts = [_records([10, BLOCK * 2, 0], seed=s) for s in range(3)]
    paths = []
    for i, part in enumerate(parts):
        paths.append(str(tmp_path / f"s{i}"))
        write_shard(paths[-1], part)
    flat = [r for part in parts for r in part]
    reader = ShardReader(paths, records=[3, 3, 3], checksums=[file_checksums(p) for p in paths])
    assert len(reader) == 9 and reader.modes == {MMAP: 3}
    assert [bytes(r) for r in reader.__getitems__(range(9))] == flat
    with pytest.raises(IndexError):
        reader[9]
    blob = pickle.dumps(reader)
    assert len(blob) < 3000  # paths, counts and tables, no mapped bytes
    clone = pickle.loads(blob)
    assert not any(f.is_open for f in clone.files)  # reopened on first use
    assert bytes(clone[4]) == flat[4] and clone.files[1].is_open and not clone.files[0].is_open
    held = reader[4]
    reader.close()
    assert bytes(held) == flat[4]  # a record outlives the reader's close
    assert bytes(reader[7]) == flat[7]  # a read after close reopens the file


def test_a_reopened_copy_checks_its_count(tmp_path):
    path = str(tmp_path / "s")
    write_shard(path, _records([5, 6]))
    clone = pickle.loads(pickle.dumps(ShardReader([path])))
    write_shard(path, _records([5, 6, 7]))  # the file changed after the reader was made
    with pytest.raises(ShardFileError, match="3 records, the manifest says 2"):
        clone[0]


def test_data_source_reads_packed_and_document_shards_through_mmap(tmp_path):
    packed = str(tmp_path / "packed")
    records = write_packed_dir(
        packed, [5000, 900, 20000, 7, 64000, 30000], seq_len=32768, num_shards=2
    )
    src = ShardDataSource(packed)
    assert src.reader_modes == {MMAP: 2} and "mmap" in repr(src)
    theirs = ArrayRecordDataSource(src._paths)
    for i, expected in enumerate(records):
        assert bytes(src._source[i]) == theirs[i]
        for name, value in expected.items():
            np.testing.assert_array_equal(src[i][name], value, err_msg=name)
    docs = str(tmp_path / "docs")
    write_documents_dir(docs, [3, 40000, 0, 5])
    assert ShardDataSource(docs).reader_modes == {MMAP: 2}


def test_shards_of_a_books_job_read_the_same_as_array_record(tmp_path, bpe_model):
    import json
    import random

    from lwmkit.pipelines import BooksOptions, run_books
    from lwmkit.pipelines.tools.sample_corpus import sample_book

    books = tmp_path / "books.jsonl"
    books.write_text(
        "".join(json.dumps({"text": sample_book(random.Random(s), 8)}) + "\n" for s in range(12))
    )
    out = tmp_path / "out"
    run_books(
        BooksOptions(
            inputs=(str(books),),
            output=str(out),
            tokenizer=bpe_model,
            seq_lens=(256, 4096),
            direct_running_mode="in_memory",
        )
    )
    read = 0
    for name in ("documents", "packed-256", "packed-4096"):
        unchecked = ShardDataSource(str(out / name), verify_checksums=False)
        assert unchecked.reader_modes == {MMAP: len(unchecked.manifest["shards"])}, name
        theirs = [r for p in unchecked._paths for r in _array_record_bytes(p)]
        assert [bytes(unchecked._source[i]) for i in range(len(unchecked))] == theirs, name
        # Verified reads: through mmap once the manifest lists tables (the job's own manifest
        # lists them once pipelines/finalize.py passes write_shard's table on), else ArrayRecord.
        add_checksums(str(out / name))
        src = ShardDataSource(str(out / name))
        assert src.reader_modes == {MMAP: len(src.manifest["shards"])}, name
        assert [bytes(src._source[i]) for i in range(len(src))] == theirs, name
        read += len(theirs)
    assert read > 12
    assert max(len(r) for r in theirs) > BLOCK  # packed-4096 records cross block boundaries
