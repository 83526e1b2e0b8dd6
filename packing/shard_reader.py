"""Random access to lwmkit's own ArrayRecord shards through mmap: one copy per record, or none.

`ArrayRecordReader` costs about ten memcpys of a record's size per random read (its own buffers,
chunk decoding, the copy into a Python `bytes`). lwmkit's shards hold every record verbatim in the
file, interrupted only by the 24-byte header that starts every 64 KiB block (see
`packing/shard_layout.py`). `ShardFile` maps the file, finds every record once at open, and then
reads a record as a zero-copy view of the map (when it lies inside one block) or as one copy of
its bytes, block headers skipped, into a recycled buffer (`packing/record_buffers.py`, when it
crosses blocks).

Integrity (`verify=True`, the default): given the shard's checksum table from the manifest
(`packing/integrity.py`), the bytes outside the records are checked at open and the range holding
a record on every read, before the record is returned, so a byte flipped anywhere in the file
raises `ShardFileError` naming the file and the record instead of reaching a batch. A shard
without a table (written before lwmkit recorded one) is read through ArrayRecord, which checks
Riegeli's own HighwayHash of every block header, chunk header and chunk data it reads (at
ArrayRecord's speed); `verify=False` reads every shard through mmap unchecked.

Any file that is a valid ArrayRecord file but laid out otherwise (compressed, several records per
chunk, transposed chunks, another footer version) is read through Grain's `ArrayRecordDataSource`
instead, unless the manifest lists a checksum table for it (lwmkit wrote it, so another layout means
damage); the choice is made once per file at open and shown by `mode`, `fallback_reason` and the
repr. A file that is not a readable ArrayRecord file (truncated, damaged headers) raises
`ShardFileError` naming the file, and the record where there is one.

Checked whether or not `verify` is set: the file signature; the postscript's magic; the footer's
record and chunk counts; every data chunk's header (type, record count, data size against the
footer and against the next chunk's offset, compression byte, record size); the record count
against the manifest (given by `ShardReader`'s caller); on every read, the `previous_chunk` field
of each block header the record crosses.

Shards are immutable (written under a temporary name and renamed into place), which is what makes
mapping them safe; truncating a shard in place while a reader has it mapped would crash the reading
process with SIGBUS.

Example:
    >>> f = ShardFile("out/packed-32768/packed-train.array_record-00000-of-00016")
    >>> f.mode, len(f), len(f[0])
    ('mmap', 75, 557400)
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from lwmkit.packing.integrity import RangeChecker, ShardChecksums, close_map
from lwmkit.packing.record_buffers import RecordBuffers
from lwmkit.packing.records import RecordError
from lwmkit.packing.shard_layout import (
    BLOCK,
    BLOCK_HEADER,
    USABLE,
    CorruptShard,
    ShardIndex,
    UnsupportedLayout,
    index_shard,
)

MMAP = "mmap"
FALLBACK = "array_record"
NO_CHECKSUMS = (
    "no checksum table in the manifest (a shard written before lwmkit recorded one): ArrayRecord "
    "checks Riegeli's chunk hashes instead"
)
__all__ = ["FALLBACK", "MMAP", "RecordBuffers", "ShardFile", "ShardFileError", "ShardReader"]


class ShardFileError(RecordError):
    """A shard file is not a readable ArrayRecord file: truncated, damaged, or not the manifest's."""


class _Mapped:
    """An open, indexed shard: the map and each record's place in it."""

    def __init__(self, mm: mmap.mmap, index: ShardIndex, checker: RangeChecker | None):
        self.mm = mm
        self.view = memoryview(mm)  # read-only: the map is ACCESS_READ
        self.bytes = np.frombuffer(mm, dtype=np.uint8)
        self.words = np.frombuffer(mm, dtype="<u8", count=len(mm) // 8)  # for block headers
        self.starts, self.sizes, self.chunks = index.starts, index.sizes, index.chunks
        self.checker = checker

    def close(self) -> None:
        # Records handed out as views keep the map alive; it is unmapped when the last one goes.
        self.view.release()
        self.view = self.bytes = self.words = None
        close_map(self.mm)

    def read(self, i: int, buffers: RecordBuffers) -> memoryview:
        if self.checker is not None:  # before any byte of the record leaves
            self.checker.check_record(self.bytes, i)
        start, size = self.starts[i], self.sizes[i]
        offset = start % BLOCK
        if offset + size <= BLOCK:
            return self.view[start : start + size]  # inside one block: a view, no copy
        out = buffers.take(size)
        first = BLOCK - offset
        out[:first] = self.bytes[start : start + first]
        block = start + first  # the first block boundary inside the record
        full, last = divmod(size - first, USABLE)
        if full:  # the whole blocks in one strided copy: [full, 64 KiB] rows minus their headers
            rows = self.bytes[block : block + full * BLOCK].reshape(full, BLOCK)
            out[first : first + full * USABLE].reshape(full, USABLE)[...] = rows[:, BLOCK_HEADER:]
        if last:
            tail = block + full * BLOCK + BLOCK_HEADER
            out[size - last :] = self.bytes[tail : tail + last]
        # Each crossed block header's previous_chunk is its distance back to the record's chunk.
        crossed = full + (1 if last else 0)
        first_word, step = block // 8 + 1, BLOCK // 8
        previous = self.words[first_word : first_word + crossed * step : step]
        distance = block - self.chunks[i]
        expected = np.arange(distance, distance + crossed * BLOCK, BLOCK, dtype=np.uint64)
        if previous.shape[0] != crossed or np.any(previous != expected):
            raise CorruptShard(
                f"record {i}: a block header inside it does not point back to its chunk"
            )
        out.flags.writeable = False
        return memoryview(out)


class ShardFile:
    """Random access to the records of one ArrayRecord file; see the module docstring.

    Opens lazily (on first use, or `open()`), once per process: pickling keeps only the path, the
    expected count and the checksum table, so Grain worker processes map the file themselves.

    Args:
      path: the shard file.
      expected_records: if given, the count the file must hold (e.g. the manifest's).
      buffers: where records that cross blocks are copied to (default: a pool of its own).
      checksums: the shard's checksum table from the manifest, if it has one.
      verify: check every read (see the module docstring); False reads through mmap unchecked.

    Raises:
      ShardFileError: (when opened) the file is missing, truncated or damaged, or holds another
        number of records than `expected_records`.
    """

    def __init__(
        self,
        path: str,
        expected_records: int | None = None,
        buffers: RecordBuffers | None = None,
        checksums: ShardChecksums | None = None,
        verify: bool = True,
    ):
        self.path = path
        self.expected_records = expected_records
        self.checksums = checksums
        self.verify = verify
        self.buffers = buffers if buffers is not None else RecordBuffers()
        self._lock = threading.Lock()
        self._mapped: _Mapped | None = None
        self._fallback: Any = None
        self._length = 0
        self.fallback_reason: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        keep = ("path", "expected_records", "checksums", "verify")
        return {k: getattr(self, k) for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    @property
    def is_open(self) -> bool:
        return self._mapped is not None or self._fallback is not None

    @property
    def mode(self) -> str | None:
        """`"mmap"` (this reader), `"array_record"` (the fallback), or None before opening."""
        if not self.is_open:
            return None
        return MMAP if self._mapped is not None else FALLBACK

    def open(self) -> ShardFile:
        """Maps and indexes the file (or opens the fallback); a no-op once open.

        Returns:
          self.

        Raises:
          ShardFileError: see the class docstring.
        """
        if not self.is_open:
            with self._lock:
                if not self.is_open:
                    self._open()
        return self

    def _open(self) -> None:
        try:
            with open(self.path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
            raise ShardFileError(f"{self.path}: cannot map the shard: {e}") from e
        try:
            index = index_shard(mm)
        except UnsupportedLayout as e:
            mm.close()
            if self.checksums is not None:  # lwmkit wrote it: another layout means damage
                raise ShardFileError(
                    f"{self.path}: the manifest lists lwmkit's checksums for it, but it is not "
                    f"laid out as lwmkit writes shards ({e}): damaged"
                ) from None
            self._open_fallback(str(e))
            return
        except CorruptShard as e:
            mm.close()
            raise ShardFileError(f"{self.path}: {e}") from None
        if self.verify and self.checksums is None:
            mm.close()
            self._open_fallback(NO_CHECKSUMS)
            return
        mapped = None
        try:
            checker = RangeChecker(self.checksums, index) if self.verify else None
            mapped = _Mapped(mm, index, checker)
            if checker is not None:
                checker.check_outside(mapped.bytes)
            self._length = self._checked(len(mapped.starts))
        except CorruptShard as e:
            self._close_mapped(mapped, mm)
            raise ShardFileError(f"{self.path}: {e}") from None
        except ShardFileError:
            self._close_mapped(mapped, mm)
            raise
        self._mapped = mapped

    @staticmethod
    def _close_mapped(mapped: _Mapped | None, mm: mmap.mmap) -> None:
        if mapped is not None:
            mapped.close()
        else:
            mm.close()

    def _open_fallback(self, reason: str) -> None:
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        try:
            source = ArrayRecordDataSource([self.path])
        except Exception as e:  # ArrayRecord raises RuntimeError or ValueError, by the damage
            raise ShardFileError(f"{self.path}: ArrayRecord cannot read it ({reason}): {e}") from e
        self._length = self._checked(len(source))
        self.fallback_reason = reason
        self._fallback = source

    def _checked(self, count: int) -> int:
        if self.expected_records is not None and count != self.expected_records:
            raise ShardFileError(
                f"{self.path}: {count} records, the manifest says {self.expected_records}"
            )
        return count

    def close(self) -> None:
        """Unmaps the file (records still referenced keep their pages until they are freed)."""
        with self._lock:
            if self._mapped is not None:
                self._mapped.close()
            self._mapped = self._fallback = None

    def __len__(self) -> int:
        return self.open()._length

    def __getitem__(self, index: int) -> memoryview | bytes:
        """Record `index` (0 <= index < len) as read-only bytes: a view of the map, or a copy.

        Raises:
          IndexError: out of range.
          ShardFileError: the record's bytes are damaged (they differ from their checksum, or a
            block header inside the record is wrong).
        """
        self.open()
        if not 0 <= index < self._length:
            raise IndexError(
                f"record {index} out of range for {self._length} records in {self.path}"
            )
        if self._fallback is not None:
            try:
                return self._fallback[index]
            except RuntimeError as e:  # Riegeli: "Corrupted Riegeli/records file: ... hash mismatch"
                raise ShardFileError(f"{self.path}: record {index}: {e}") from None
        try:
            return self._mapped.read(index, self.buffers)
        except CorruptShard as e:
            raise ShardFileError(f"{self.path}: {e}") from None

    def __repr__(self) -> str:
        if not self.is_open:
            return f"ShardFile({self.path!r}, not open)"
        why = f", fallback because: {self.fallback_reason}" if self.fallback_reason else ""
        return f"ShardFile({self.path!r}, mode={self.mode}, records={self._length}{why})"


class ShardReader:
    """Random access across several shard files, numbered in order (what `ShardDataSource` reads).

    Every file is opened (mapped and indexed, or handed to the fallback) and its count checked in
    the constructing process; a pickled copy holds the paths and counts and reopens each file on
    first use, so Grain worker processes map the files themselves.

    Args:
      paths: the shard files, in order.
      records: if given, the record count each file must hold (e.g. from the manifest).
      checksums: if given, each file's checksum table from the manifest (None for a file without).
      verify: check every read (see the module docstring).

    Raises:
      ShardFileError: a file is missing, truncated, damaged, or holds another count than `records`.
      ValueError: `records` and `paths` differ in length.
    """

    def __init__(
        self,
        paths: Sequence[str],
        records: Sequence[int] | None = None,
        checksums: Sequence[ShardChecksums | None] | None = None,
        verify: bool = True,
    ):
        for name, given in (("records", records), ("checksums", checksums)):
            if given is not None and len(given) != len(paths):
                raise ValueError(f"{name}: {len(given)} entries for {len(paths)} files")
        counts = [None] * len(paths) if records is None else [int(n) for n in records]
        tables = [None] * len(paths) if checksums is None else list(checksums)
        buffers = RecordBuffers()
        self.files = [
            ShardFile(p, n, buffers, table, verify)
            for p, n, table in zip(paths, counts, tables, strict=True)
        ]
        for f in self.files:
            f.open()
            f.expected_records = len(f)  # a worker's reopened copy must find the same count
        self._ends = np.cumsum([len(f) for f in self.files], dtype=np.int64).tolist()

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files, "ends": self._ends}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.files, self._ends = state["files"], state["ends"]
        buffers = RecordBuffers()  # one pool per process, shared by its files
        for f in self.files:
            f.buffers = buffers

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _locate(self, index: int) -> tuple[ShardFile, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        f = int(np.searchsorted(self._ends, index, side="right"))
        return self.files[f], index - (self._ends[f - 1] if f else 0)

    def __getitem__(self, index: int) -> memoryview | bytes:
        """Record `index` across all files; see `ShardFile.__getitem__`."""
        f, i = self._locate(int(index))
        return f[i]

    def __getitems__(self, indices: Sequence[int]) -> list[memoryview | bytes]:
        return [self[i] for i in indices]

    @property
    def modes(self) -> dict[str, int]:
        """How many files each reader serves, e.g. `{"mmap": 16}`."""
        out: dict[str, int] = {}
        for f in self.files:
            out[f.open().mode] = out.get(f.mode, 0) + 1
        return out

    def close(self) -> None:
        """Unmaps every file (a later read reopens it)."""
        for f in self.files:
            f.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        fallbacks = [
            f"{os.path.basename(f.path)}: {f.fallback_reason}"
            for f in self.files
            if f.fallback_reason
        ]
        why = f", fallback for {fallbacks}" if fallbacks else ""
        return f"ShardReader({len(self.files)} files, {len(self)} records, modes={self.modes}{why})"
