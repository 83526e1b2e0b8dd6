"""Shard checksums: a hash per byte range, the ranges together covering a whole shard file.

The writer (`shards.write_shard`) computes a table per shard and the manifest records it
(`shards[i].checksums`, docs/format.md section 4.1). `ShardFile` checks the bytes outside every
record chunk once when it opens a shard, and on every read the range that holds the record, before
any byte of the record is handed out. So a byte flipped anywhere in the file is caught: inside a
record's chunk (its header, its value, a block header or padding in it) when that record is read,
anywhere else (signature, footer, postscript, padding) when the file is opened.

Ranges follow the chunks. Record i's chunk runs from its chunk offset to the next record's chunk
(the last one to the footer), block headers and padding included. Consecutive records share one
range until it spans at least `range_bytes` (64 KiB), so a shard of small documents costs 8 bytes
of table per ~64 KiB of file, and a record of 64 KiB or more (every packed record of 4K tokens or
more) has a range of its own. Reading a small record checks its whole range (at most ~64 KiB plus
one record).

Why XXH3-64 (`xxhash`, seed 0): measured here on 557 KB and 17 MB records, 20-27 GB/s from page
cache and 42-46 GB/s in cache, against 10-12 and 12-23 GB/s for CRC32C (`google-crc32c`, SSE4.2),
the hash lwmkit wrote before; a memcpy of the same bytes runs at 14-37 GB/s. The check is the
loader's one pass over bytes it would otherwise only copy, so its speed is the check's cost
(`bench/loader.py`). A damaged range goes unnoticed with probability 2^-64. Tables written with
CRC32C (the manifest key `crc32c`) are still read and checked with it.

Example (a shard of seven 17,732-byte records, chunks every 17,777 bytes from 64):
    >>> index = index_shard(mm)  # chunks [64, 17841, 35618, 53395, 71196, 88973, 106750], footer 124527
    >>> range_starts(index.chunks, index.footer, 65536)
    [0, 4]          # range 0: bytes 64..71196 (records 0-3), range 1: 71196..124527 (records 4-6)
"""

from __future__ import annotations

import base64
import binascii
import mmap
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

import google_crc32c
import numpy as np
import xxhash
from lwmkit.packing.shard_layout import CorruptShard, ShardIndex, index_shard

FIELD = "checksums"  # the key of a shard entry in manifest.json
LEGACY_FIELD = "crc32c"  # the key of tables written before XXH3 (CRC32C), still read
VERSION = 1
RANGE_BYTES = 1 << 16

if google_crc32c.implementation != "c":  # pragma: no cover - every wheel we pin has the extension
    import warnings

    warnings.warn(
        "google-crc32c runs without its C extension here: checking shard checksums will be slow "
        "(about 1000x); install a google-crc32c wheel built for this platform",
        RuntimeWarning,
        stacklevel=2,
    )


@dataclass(frozen=True)
class Hash:
    """A checksum algorithm: its name in manifests and messages, the manifest key its tables are
    listed under, its value width in bytes, and the hash of one buffer and of buffers one after
    another (contiguous read-only uint8 arrays, e.g. slices of a mapped file, or bytes)."""

    name: str
    label: str
    key: str
    width: int
    of: Callable[[Any], int]
    of_parts: Callable[[Sequence[Any]], int]


def _xxh3_parts(parts: Sequence[Any]) -> int:
    h = xxhash.xxh3_64()
    for part in parts:
        h.update(part)
    return h.intdigest()


XXH3_64 = Hash("xxh3_64", "XXH3-64", FIELD, 8, xxhash.xxh3_64_intdigest, _xxh3_parts)
CRC32C = Hash("crc32c", "CRC32C", LEGACY_FIELD, 4, google_crc32c.value,
              lambda parts: reduce(google_crc32c.extend, parts[1:], google_crc32c.value(parts[0])))
HASHES = {h.name: h for h in (XXH3_64, CRC32C)}  # the manifest is read in this order: XXH3 first


@dataclass(frozen=True)
class ShardChecksums:
    """A shard's checksum table.

    Attributes:
      range_bytes: a range grows by whole record chunks until it spans at least this many bytes.
      outside: the hash of the bytes outside every record chunk: [0, first chunk) then [footer, end).
      ranges: the hash of each range, little-endian unsigned ints of `hash.width` bytes, in file order.
      algorithm: "xxh3_64" (what lwmkit writes) or "crc32c" (tables written before).
    """

    range_bytes: int
    outside: int
    ranges: bytes
    algorithm: str = XXH3_64.name

    @property
    def hash(self) -> Hash:
        return HASHES[self.algorithm]

    @property
    def key(self) -> str:
        """The manifest key this table is listed under (`checksums`, or `crc32c` for CRC32C tables)."""
        return self.hash.key

    def values(self) -> list[int]:
        return np.frombuffer(self.ranges, dtype=f"<u{self.hash.width}").tolist()

    def to_json(self) -> dict[str, Any]:
        if self.algorithm == CRC32C.name:  # as written before: `outside` a JSON integer
            return {"version": VERSION, "range_bytes": self.range_bytes, "outside": self.outside,
                    "ranges": base64.b64encode(self.ranges).decode("ascii")}
        return {"algorithm": self.algorithm, "version": VERSION, "range_bytes": self.range_bytes,
                "outside": f"{self.outside:016x}", "ranges": base64.b64encode(self.ranges).decode("ascii")}

    @classmethod
    def from_json(cls, entry: Any, key: str = FIELD) -> ShardChecksums:
        """Parses a manifest's table listed under `key` (`checksums` or the older `crc32c`).

        Raises:
          ValueError: naming the key that is missing, of the wrong type or out of range.
        """
        if not isinstance(entry, Mapping):
            raise ValueError(f"{key} must be an object, got {type(entry).__name__}")
        algorithm = CRC32C.name if key == LEGACY_FIELD else entry.get("algorithm")
        known = HASHES.get(algorithm) if isinstance(algorithm, str) else None  # JSON may give a list
        if known is None or known.key != key:
            raise ValueError(f"{key}.algorithm {algorithm!r}: this lwmkit reads {XXH3_64.name!r}")
        if entry.get("version") != VERSION:
            raise ValueError(f"{key} version {entry.get('version')!r}, this lwmkit reads {VERSION}")
        width = known.width
        range_bytes, outside, ranges = (entry.get(k) for k in ("range_bytes", "outside", "ranges"))
        if not _is_int(range_bytes) or range_bytes < 1:
            raise ValueError(f"{key}.range_bytes must be an int >= 1, got {range_bytes!r}")
        outside = _parse_outside(key, outside, width)
        if not isinstance(ranges, str):
            raise ValueError(f"{key}.ranges must be a base64 string, got {type(ranges).__name__}")
        try:
            raw = base64.b64decode(ranges, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"{key}.ranges is not base64: {e}") from e
        if len(raw) % width:
            raise ValueError(f"{key}.ranges holds {len(raw)} bytes, not whole uint{8 * width}s")
        return cls(range_bytes, outside, raw, algorithm)


def _parse_outside(key: str, outside: Any, width: int) -> int:
    """`outside`: a JSON integer in a CRC32C table, 16 hex digits in an XXH3 table (a uint64 is
    past what a JSON number carries exactly in many readers)."""
    if width == 4:
        if not _is_int(outside) or not 0 <= outside < 1 << 32:
            raise ValueError(f"{key}.outside must be a uint32, got {outside!r}")
        return outside
    if not isinstance(outside, str) or len(outside) != 16 or outside.strip("0123456789abcdef"):
        raise ValueError(f"{key}.outside must be 16 lower-case hex digits, got {outside!r}")
    return int(outside, 16)


def table_of(shard: Mapping[str, Any]) -> ShardChecksums | None:
    """The checksum table a manifest's shard entry lists (under `checksums`, or the older `crc32c`),
    or None if it lists none.

    Raises:
      ValueError: the table is malformed (see `ShardChecksums.from_json`).
    """
    for h in HASHES.values():
        if h.key in shard:
            return ShardChecksums.from_json(shard[h.key], h.key)
    return None


def has_table(shard: Mapping[str, Any]) -> bool:
    return any(h.key in shard for h in HASHES.values())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def range_starts(chunks: Sequence[int], footer: int, range_bytes: int) -> list[int]:
    """The first record of each range: a range closes at the first chunk that begins at least
    `range_bytes` after the range's own first chunk (or at the footer)."""
    ends = np.asarray([*chunks, footer], dtype=np.int64)
    firsts: list[int] = []
    i, n = 0, len(chunks)
    while i < n:
        firsts.append(i)
        j = int(np.searchsorted(ends, ends[i] + range_bytes, side="left"))
        i = max(min(j, n), i + 1)
    return firsts


def _outside(data: np.ndarray, index: ShardIndex, hash: Hash) -> int:
    first = index.chunks[0] if index.chunks else index.footer
    return hash.of_parts([data[:first], data[index.footer : index.size]])


def compute_checksums(
    data: np.ndarray, index: ShardIndex, range_bytes: int = RANGE_BYTES, hash: Hash = XXH3_64
) -> ShardChecksums:
    """The checksum table of a shard (`data`: its bytes as a read-only uint8 array)."""
    firsts = range_starts(index.chunks, index.footer, range_bytes)
    bounds = [index.chunks[f] for f in firsts] + [index.footer]
    pairs = zip(bounds[:-1], bounds[1:], strict=True)
    values = np.array([hash.of(data[a:b]) for a, b in pairs], dtype=f"<u{hash.width}")
    return ShardChecksums(range_bytes, _outside(data, index, hash), values.tobytes(), hash.name)


def map_shard(path: str) -> tuple[mmap.mmap, np.ndarray, ShardIndex]:
    """Maps and indexes a shard: (the map, its bytes as a read-only uint8 array, its index).

    Raises:
      OSError: the file cannot be opened or mapped (ValueError when it is empty).
      UnsupportedLayout, CorruptShard: as `shard_layout.index_shard`.
    """
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return mm, np.frombuffer(mm, dtype=np.uint8), index_shard(mm)
    except BaseException:
        close_map(mm)
        raise


def close_map(mm: mmap.mmap) -> None:
    """Closes a shard's map unless views of it are still alive (a record handed out as a view, or a
    traceback on its way out holding one): closing would raise BufferError then, hiding any error in
    flight, so the map is left to the garbage collector, which unmaps it with the last view."""
    try:
        mm.close()
    except BufferError:
        pass


def file_checksums(path: str, range_bytes: int = RANGE_BYTES, hash: Hash = XXH3_64) -> ShardChecksums:
    """The checksum table of the shard file at `path` (see `map_shard` for what it raises)."""
    mm, data, index = map_shard(path)
    try:
        return compute_checksums(data, index, range_bytes, hash)
    finally:
        del data
        close_map(mm)


class RangeChecker:
    """Checks one open shard's bytes against its table (see the module docstring).

    Raises (from the constructor, `check_outside` and `check_record`):
      CorruptShard: the table does not fit the file, or a range's bytes differ from its checksum;
        the message names the record and the bytes.
    """

    def __init__(self, checksums: ShardChecksums, index: ShardIndex):
        self.firsts = range_starts(index.chunks, index.footer, checksums.range_bytes)
        self.bounds = [index.chunks[f] for f in self.firsts] + [index.footer]
        self.values, self.hash = checksums.values(), checksums.hash
        self.index, self.outside, self.count = index, checksums.outside, len(index.chunks)
        if len(self.values) != len(self.firsts):
            raise CorruptShard(
                f"the manifest's {self.hash.label} table lists {len(self.values)} ranges, but the file's "
                f"{self.count} records make {len(self.firsts)}"
            )

    def _hex(self, value: int) -> str:
        return f"{value:0{2 * self.hash.width}x}"

    def check_outside(self, data: np.ndarray) -> None:
        found = _outside(data, self.index, self.hash)
        if found != self.outside:
            first = self.index.chunks[0] if self.index.chunks else self.index.footer
            raise CorruptShard(
                f"{self.hash.label} mismatch outside the records (signature: bytes 0..{first}; footer and "
                f"postscript: bytes {self.index.footer}..{self.index.size}): stored "
                f"{self._hex(self.outside)}, computed {self._hex(found)}"
            )

    def check_record(self, data: np.ndarray, i: int) -> None:
        k = bisect_right(self.firsts, i) - 1
        a, b = self.bounds[k], self.bounds[k + 1]
        found = self.hash.of(data[a:b])
        if found != self.values[k]:
            last = (self.firsts[k + 1] if k + 1 < len(self.firsts) else self.count) - 1
            span = f"record {i}" if last == self.firsts[k] else f"records {self.firsts[k]}-{last}"
            raise CorruptShard(
                f"record {i}: {self.hash.label} mismatch in bytes {a}..{b} (the chunks of {span}): stored "
                f"{self._hex(self.values[k])}, computed {self._hex(found)}"
            )
