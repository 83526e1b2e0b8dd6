"""Shard integrity: one flipped byte anywhere in a shard never reaches a record, a batch or a pack.

Every test damages shards written by lwmkit's own writer (`write_shard`, through the helpers the
other packing tests use), one XOR-ed byte at a time, and reads the whole dataset the way training
does: `ShardDataSource`, `make_loader` with 0 and 2 worker processes, and the online packer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from bisect import bisect_right

import numpy as np
import pytest
from lwmkit.packing import make_loader
from lwmkit.packing.integrity import RANGE_BYTES, ShardChecksums, file_checksums, map_shard
from lwmkit.packing.manifest import (
    ManifestError,
    add_checksums,
    load_manifest,
    shard_checksums,
    verify_directory,
)
from lwmkit.packing.online import online_packed_dataset
from lwmkit.packing.shard_layout import BLOCK, BLOCK_HEADER
from lwmkit.packing.shard_reader import FALLBACK, MMAP, ShardFileError
from lwmkit.packing.source import ShardDataSource

from .helpers import write_documents_dir, write_packed_dir

SEQ_LEN = 4096  # a packed record is ~70 KB: every record crosses a block header
PACKED_LENGTHS = [3000, 1200, 4096, 500, 2500, 2600, 4000, 90, 1800, 3300, 2222, 4096, 700, 1500]
DOC_LENGTHS = [40, 3, 900, 17, 5000, 250, 12, 66, 3100, 1, 480, 75, 20000, 9, 333, 128]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("integrity") / "packed-4096")
    write_packed_dir(d, PACKED_LENGTHS, SEQ_LEN, num_shards=2)
    return d


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("integrity") / "documents")
    write_documents_dir(d, DOC_LENGTHS, num_shards=2)
    return d


def _first_shard(directory: str) -> str:
    return os.path.join(directory, load_manifest(directory)["shards"][0]["file"])


def _flipped_copy(directory: str, dest: str, position: int, mask: int = 0x01) -> str:
    shutil.copytree(directory, dest)
    with open(_first_shard(dest), "r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ mask]))
    return dest


def _positions(path: str) -> dict[int, str]:
    """Byte positions in every part of the shard: position -> what lies there."""
    mm, data, index = map_shard(path)
    try:
        out = {p: "file signature" for p in (0, 8, 31, 63)}
        for r in sorted({0, 1, len(index.chunks) // 2, len(index.chunks) - 1}):
            c, start, size = index.chunks[r], index.starts[r], index.sizes[r]
            for off, what in ((0, "header_hash"), (8, "data_size"), (16, "data_hash"),
                              (24, "chunk_type"), (25, "num_records"), (32, "decoded_size"),
                              (40, "compression"), (41, "sizes_size"), (42, "size varint")):  # fmt: skip
                out[c + off] = f"record {r} chunk {what}"
            for p in (start, start + size // 3, start + size - 1):
                out[p if p % BLOCK >= BLOCK_HEADER else p + BLOCK_HEADER] = f"record {r} value"
        for b in range(1, index.footer // BLOCK + 1):
            for off, what in ((0, "header_hash"), (8, "previous_chunk"), (16, "next_chunk"), (23, "top byte")):
                out[b * BLOCK + off] = f"block header {b} {what}"
        last = index.size - BLOCK
        out.update({index.footer: "footer chunk header", index.footer + 45: "footer data",
                    (index.footer + last) // 2: "padding before the postscript",
                    last + 5: "last block header", last + 24: "postscript chunk header",
                    last + 70: "postscript", index.size - 1: "last byte"})  # fmt: skip
        return out
    finally:
        del data
        mm.close()


def _chunk_record(path: str, position: int) -> int | None:
    """The record whose chunk (header, value, block headers, padding) holds `position`."""
    mm, data, index = map_shard(path)
    del data
    mm.close()
    if not index.chunks or not index.chunks[0] <= position < index.footer:
        return None
    return bisect_right(index.chunks, position) - 1


def _read_all(source: ShardDataSource, originals: list[dict]) -> None:
    """Reads every record; each one that comes back must be the undamaged record."""
    for i in range(len(source)):
        got = source[i]
        for name, value in originals[i].items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(got[name], value, err_msg=f"record {i} {name}")


def _names_record(message: str, record: int) -> bool:
    single = re.search(rf"record {record}\b", message)
    spans = [(int(a), int(b)) for a, b in re.findall(r"records (\d+)-(\d+)", message)]
    return bool(single) or any(a <= record <= b for a, b in spans)


def test_every_flipped_byte_of_a_packed_shard_is_caught(packed, tmp_path):
    originals = [ShardDataSource(packed)[i] for i in range(len(ShardDataSource(packed)))]
    originals = [{k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in r.items()} for r in originals]
    _read_all(ShardDataSource(packed), originals)  # the clean dataset reads in full
    shard = _first_shard(packed)
    positions = _positions(shard)
    assert len(positions) > 60
    for n, (position, what) in enumerate(sorted(positions.items())):
        bad = _flipped_copy(packed, str(tmp_path / f"flip-{n}"), position)
        bad_shard = _first_shard(bad)
        with pytest.raises(ShardFileError) as caught:
            _read_all(ShardDataSource(bad), originals)
        message = str(caught.value)
        assert bad_shard in message, (what, message)
        record = _chunk_record(shard, position)
        if record is not None:
            assert _names_record(message, record), (what, message)
        shutil.rmtree(bad)


def test_every_flipped_byte_of_a_document_shard_is_caught(documents, tmp_path):
    clean = ShardDataSource(documents)
    originals = [{k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in clean[i].items()}
                 for i in range(len(clean))]  # fmt: skip
    shard = _first_shard(documents)
    table = ShardChecksums.from_json(load_manifest(documents)["shards"][0]["checksums"])
    assert table.algorithm == "xxh3_64" and table.range_bytes == RANGE_BYTES
    assert len(table.values()) < len(originals) // 2
    for n, (position, what) in enumerate(sorted(_positions(shard).items())):
        bad = _flipped_copy(documents, str(tmp_path / f"flip-{n}"), position, mask=0x80)
        with pytest.raises(ShardFileError) as caught:
            _read_all(ShardDataSource(bad), originals)
        message = str(caught.value)
        assert _first_shard(bad) in message, (what, message)
        record = _chunk_record(shard, position)
        if record is not None:  # small documents share a range: it names the range's records
            assert _names_record(message, record), (what, message)
        shutil.rmtree(bad)


def _payload_position(directory: str, record: int, fraction: float = 0.0) -> int:
    """A byte of the record's value: 100 bytes in (a packed record's loss weights), or a fraction."""
    mm, data, index = map_shard(_first_shard(directory))
    del data
    mm.close()
    offset = int(index.sizes[record] * fraction) if fraction else 100
    position = index.starts[record] + offset
    return position if position % BLOCK >= BLOCK_HEADER else position + BLOCK_HEADER


def test_the_loader_raises_with_0_and_2_workers_and_reads_unchecked_when_told(packed, tmp_path):
    # A byte of one of record 2's float32 loss weights.
    bad = _flipped_copy(packed, str(tmp_path / "bad"), _payload_position(packed, 2), mask=0x80)
    shard = _first_shard(bad)
    for workers in (0, 2):
        it = make_loader(bad, 2, shuffle=False, num_epochs=1, worker_count=workers, shard_index=0, shard_count=1)
        with pytest.raises(ShardFileError, match=rf"{re.escape(shard)}: record 2\b.*XXH3-64 mismatch"):
            for _ in it:
                pass
    clean = list(make_loader(packed, 2, shuffle=False, num_epochs=1, shard_index=0, shard_count=1))
    unchecked = list(
        make_loader(bad, 2, shuffle=False, num_epochs=1, shard_index=0, shard_count=1, verify_checksums=False)
    )
    differs = [
        (b, name) for b, (x, y) in enumerate(zip(clean, unchecked, strict=True))
        for name in x if not np.array_equal(x[name], y[name])
    ]  # fmt: skip
    assert differs and {b for b, _ in differs} == {1}  # record 2 is in batch 1; only it changed


def test_the_online_packer_never_packs_a_damaged_document(documents, tmp_path):
    # A byte in the middle of document 4's tokens: unchecked, it still decodes and packs.
    bad = _flipped_copy(documents, str(tmp_path / "bad"), _payload_position(documents, 4, 0.5), mask=0x40)
    with pytest.raises(ShardFileError, match=re.escape(_first_shard(bad))):
        list(online_packed_dataset(bad, 2048, window=4))
    it = make_loader(bad, 2, online_seq_len=2048, online_window=4, num_epochs=1, shard_index=0, shard_count=1)
    with pytest.raises(ShardFileError, match=r"record 4\b|records \d+-\d+"):
        list(it)
    assert len(list(online_packed_dataset(bad, 2048, window=4, verify_checksums=False))) > 0
    assert len(list(online_packed_dataset(documents, 2048, window=4))) > 0


def _strip_tables(directory: str) -> None:
    path = os.path.join(directory, "manifest.json")
    manifest = json.loads(open(path).read())
    for shard in manifest["shards"]:
        del shard["checksums"]
    with open(path, "w") as f:
        json.dump(manifest, f)


def test_old_shards_are_checked_by_array_record_until_add_checksums(packed, tmp_path):
    old = str(tmp_path / "old")
    shutil.copytree(packed, old)
    _strip_tables(old)
    with pytest.warns(UserWarning, match="no checksum table.*add_checksums"):
        src = ShardDataSource(old)
    assert src.reader_modes == {FALLBACK: 2}
    assert ShardDataSource(old, verify_checksums=False).reader_modes == {MMAP: 2}
    damaged = _flipped_copy(old, str(tmp_path / "old-bad"), _payload_position(old, 3))
    with pytest.warns(UserWarning):
        src = ShardDataSource(damaged)
    with pytest.raises(ShardFileError, match=rf"{re.escape(_first_shard(damaged))}: record 3\b.*hash mismatch"):
        src[3]
    with pytest.raises(ManifestError, match="differs from the manifest"):
        add_checksums(damaged)  # never a table for damaged bytes
    assert add_checksums(old) == 2 and add_checksums(old) == 0
    assert load_manifest(old) == load_manifest(packed)  # the same tables the writer recorded
    assert ShardDataSource(old).reader_modes == {MMAP: 2}


def test_a_table_that_does_not_fit_the_shard_is_refused(packed, tmp_path):
    d = str(tmp_path / "misfit")
    shutil.copytree(packed, d)
    path = os.path.join(d, "manifest.json")
    manifest = json.loads(open(path).read())
    table = ShardChecksums.from_json(manifest["shards"][0]["checksums"])
    manifest["shards"][0]["checksums"] = ShardChecksums(table.range_bytes, table.outside, table.ranges[:-8]).to_json()
    other = ShardChecksums.from_json(manifest["shards"][1]["checksums"])
    manifest["shards"][1]["checksums"] = ShardChecksums(other.range_bytes, other.outside ^ 1, other.ranges).to_json()
    open(path, "w").write(json.dumps(manifest))
    n = len(table.values())  # a packed record of 4K tokens has a range of its own
    with pytest.raises(ShardFileError, match=rf"lists {n - 1} ranges, but the file's {n} records make {n}\b"):
        ShardDataSource(d)
    problems = verify_directory(d)
    assert len(problems) == 2 and all("XXH3-64 table differs" in p for p in problems)
    manifest["shards"][0]["checksums"] = file_checksums(_first_shard(d)).to_json()
    open(path, "w").write(json.dumps(manifest))
    with pytest.raises(ShardFileError, match="XXH3-64 mismatch outside the records"):
        ShardDataSource(d)


def test_a_damaged_compression_byte_is_not_read_as_another_layout(packed, tmp_path):
    # 0x00 -> 0x7a ('z'): the chunk now claims zstd; without a table this would go to ArrayRecord.
    mm, data, index = map_shard(_first_shard(packed))
    del data
    mm.close()
    bad = _flipped_copy(packed, str(tmp_path / "z"), index.chunks[1] + 40, mask=0x7A)
    with pytest.raises(ShardFileError, match=r"record 1: its chunk is compressed with zstd\).*damaged"):
        ShardDataSource(bad)


def _tables_from_the_spec(directory: str, value, width: int) -> list[tuple[dict, int]]:
    """docs/format.md section 4.1 computed from its text alone: ranges over chunk extents, then
    `outside`, with the hash `value` (bytes -> int) of `width` bytes; (table, records) per shard."""
    import base64
    import mmap

    from lwmkit.packing.shard_layout import index_shard

    out = []
    for entry in load_manifest(directory)["shards"]:
        path = os.path.join(directory, entry["file"])
        data = open(path, "rb").read()
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            index = index_shard(mm)
            mm.close()
        ends = [*index.chunks, index.footer]
        n, a, hashes = len(index.chunks), 0, []
        while a < n:
            b = next((j for j in range(a + 1, n) if ends[j] >= ends[a] + 65536), n)
            hashes.append(value(data[ends[a] : ends[b]]).to_bytes(width, "little"))
            a = b
        outside = value(data[: ends[0]] + data[index.footer :])
        table = {"version": 1, "range_bytes": 65536, "outside": outside,
                 "ranges": base64.b64encode(b"".join(hashes)).decode()}  # fmt: skip
        out.append((table, n))
    return out


def test_the_table_is_what_docs_format_md_describes(documents):
    import xxhash

    shapes = []
    tables = _tables_from_the_spec(documents, xxhash.xxh3_64_intdigest, 8)
    for entry, (table, n) in zip(load_manifest(documents)["shards"], tables, strict=True):
        expected = {"algorithm": "xxh3_64", **table, "outside": f"{table['outside']:016x}"}
        assert entry["checksums"] == expected and "crc32c" not in entry
        shapes.append((len(ShardChecksums.from_json(expected).values()), n))
    assert all(r < n for r, n in shapes) and max(r for r, _ in shapes) > 1  # shared, and several


def test_tables_written_before_with_crc32c_are_still_checked(documents, tmp_path):
    """A manifest listing section 4.1's older CRC32C tables (key `crc32c`) reads through mmap,
    checked with CRC32C: a flipped byte is caught, and inspect finds the tables right."""
    import google_crc32c

    old = str(tmp_path / "crc32c")
    shutil.copytree(documents, old)
    path = os.path.join(old, "manifest.json")
    manifest = json.loads(open(path).read())
    tables = _tables_from_the_spec(old, google_crc32c.value, 4)
    for shard, (table, _) in zip(manifest["shards"], tables, strict=True):
        del shard["checksums"]
        shard["crc32c"] = table
    open(path, "w").write(json.dumps(manifest))
    src = ShardDataSource(old)
    assert src.reader_modes == {MMAP: 2} and verify_directory(old) == []
    assert [t.algorithm for t in shard_checksums(load_manifest(old))] == ["crc32c", "crc32c"]
    assert add_checksums(old) == 0 and load_manifest(old) == manifest  # nothing to add
    bad = _flipped_copy(old, str(tmp_path / "crc32c-bad"), _payload_position(old, 4, 0.5), mask=0x40)
    with pytest.raises(ShardFileError, match=r"CRC32C mismatch"):
        _read_all(ShardDataSource(bad), [{} for _ in range(len(src))])


def test_an_error_while_a_shard_is_mapped_is_not_hidden_by_closing_the_map(packed, monkeypatch):
    # While an exception leaves describe_shard, its traceback still holds views of the map, and
    # mmap.close() raises BufferError: that must never replace the error that happened.
    import lwmkit.packing.shards as shards

    def fail(data, index, *args):
        view = data[:8]  # a view of the map, alive in this frame's traceback
        raise RuntimeError(f"checksum failed at {view[:1]}")

    monkeypatch.setattr(shards, "compute_checksums", fail)
    path = next(p for p in sorted(os.listdir(packed)) if ".array_record-" in p)
    with pytest.raises(RuntimeError, match="checksum failed"):
        shards.describe_shard(os.path.join(packed, path))
