"""ArrayRecord shard files: TFDS naming, atomic writes, checksums and TFDS metadata.

A dataset directory holds `<name>-<split>.array_record-00000-of-00016` shards (group size 1, so
every record is randomly accessible), TFDS's `dataset_info.json` and `features.json`, and
lwmkit's `manifest.json` (see `manifest.py`). Every file is written under a temporary name and
renamed into place, so a crash never leaves a file that looks complete. `write_shard` returns what
the manifest lists for the shard: its record count, size, SHA-256 and checksum table
(`integrity.py`), all computed in one pass over the written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lwmkit.packing.integrity import (
    ShardChecksums,
    close_map,
    compute_checksums,
    map_shard,
    table_of,
)

SPLIT = "train"
# Uncompressed, one record per chunk: random access to any record, and reading a record costs a
# read of its bytes and nothing else.
WRITER_OPTIONS = "group_size:1,uncompressed"
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
_SHARD_RE = re.compile(r"^(?P<name>[a-z0-9_]+)-(?P<split>\w+)\.array_record-(?P<i>\d{5})-of-(?P<n>\d{5})$")


@dataclass(frozen=True)
class ShardInfo:
    """What was written to one shard file: its entry in the manifest's `shards`.

    `checksums` is the checksum table (`integrity.ShardChecksums`), listed under its manifest key
    (`checksums`, or `crc32c` for a CRC32C table written before); None for shards written before
    lwmkit recorded one, and then left out of the JSON.
    """

    file: str  # base name inside the dataset directory
    records: int
    bytes: int
    sha256: str
    checksums: ShardChecksums | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"file": self.file, "records": self.records, "bytes": self.bytes, "sha256": self.sha256}
        if self.checksums is not None:
            out[self.checksums.key] = self.checksums.to_json()
        return out

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> ShardInfo:
        """The inverse of `to_json`; other keys of `entry` (a job's per-shard stats) are ignored.

        Raises:
          ValueError: the entry's checksum table is malformed.
        """
        return cls(entry["file"], entry["records"], entry["bytes"], entry["sha256"], table_of(entry))


def shard_name(name: str, index: int, count: int, split: str = SPLIT) -> str:
    """The TFDS file name of shard `index` of `count`, e.g. `packed-train.array_record-00003-of-00016`."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is outside 0..{count - 1}")
    return f"{name}-{split}.array_record-{index:05d}-of-{count:05d}"


def parse_shard_name(filename: str) -> tuple[str, str, int, int] | None:
    """(dataset name, split, index, count) of a shard file name, or None if it is not one."""
    m = _SHARD_RE.match(os.path.basename(filename))
    if not m:
        return None
    return m["name"], m["split"], int(m["i"]), int(m["n"])


def describe_shard(path: str, name: str | None = None) -> ShardInfo:
    """The manifest entry of an lwmkit shard file: count, size, SHA-256 and checksum table.

    Raises:
      OSError, UnsupportedLayout, CorruptShard: the file cannot be read or is not laid out as
        lwmkit writes shards (see `shard_layout.index_shard`).
    """
    mm, data, index = map_shard(path)
    try:
        return ShardInfo(
            name or os.path.basename(path),
            len(index.starts),
            index.size,
            hashlib.sha256(data).hexdigest(),
            compute_checksums(data, index),
        )
    finally:
        del data
        close_map(mm)


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _temp_path(final_path: str) -> str:
    directory, base = os.path.split(final_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory or ".")
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; outputs get the usual permissions
    return tmp


def write_shard(path: str, records: Iterable[bytes]) -> ShardInfo:
    """Writes records to an ArrayRecord file at `path` atomically.

    The records go to a temporary file in the same directory that is renamed to `path` only after
    the writer closed cleanly; on any error the temporary file is removed.

    Returns:
      The shard's manifest entry: record count, size, SHA-256 and checksum table (`describe_shard`).
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _temp_path(path)
    try:
        writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
        n = 0
        try:
            for rec in records:
                writer.write(rec)
                n += 1
        finally:
            writer.close()
        info = describe_shard(tmp, os.path.basename(path))
        if info.records != n:
            raise RuntimeError(f"{path}: wrote {n} records, the file holds {info.records}")
        os.replace(tmp, path)
        return info
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_shard(path: str) -> Iterable[bytes]:
    """Yields the records of one shard in order."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path)
    try:
        n = reader.num_records()
        step = 256
        for start in range(0, n, step):
            yield from reader.read(start, min(n, start + step))
    finally:
        reader.close()


def count_records(path: str) -> int:
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path)
    try:
        return reader.num_records()
    finally:
        reader.close()


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes a small file atomically (temporary name in the same directory, then rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def dumps_json(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, fixed indent) so equal content gives equal files."""
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_json_atomic(path: str, obj: Any) -> None:
    write_bytes_atomic(path, dumps_json(obj))


def dataset_info_json(name: str, shards: list[ShardInfo], description: str, split: str = SPLIT) -> dict:
    """TFDS `dataset_info.json` for one split stored as lwmkit shards."""
    return {
        "name": name,
        "version": "1.0.0",
        "description": description,
        "fileFormat": "array_record",
        "moduleName": "lwmkit",
        "splits": [
            {
                "name": split,
                "filepathTemplate": FILENAME_TEMPLATE,
                "shardLengths": [str(s.records) for s in shards],
                "numBytes": str(sum(s.bytes for s in shards)),
            }
        ],
    }
