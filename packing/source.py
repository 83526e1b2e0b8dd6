"""A Grain `RandomAccessDataSource` over one lwmkit dataset directory (no JAX, no Grain import).

Records are read with `ShardReader` (`packing/shard_reader.py`): lwmkit's own shards through mmap,
one copy per record (none for records inside one 64 KiB block), and any other ArrayRecord file
through Grain's `ArrayRecordDataSource`. Every read is checked against the shard's checksum table
from the manifest (`packing/integrity.py`) unless `verify_checksums=False`.

Example:
    >>> src = ShardDataSource("out/packed-32768")
    >>> len(src), src[0]["tokens"].shape
    (1204, (32768,))
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from lwmkit.packing.manifest import ManifestError, load_manifest, shard_checksums, shard_paths
from lwmkit.packing.records import RecordError, decode_record
from lwmkit.packing.remote import local_dataset
from lwmkit.packing.shard_reader import ShardReader


class ShardDataSource:
    """Random access to the decoded records of a dataset directory, in manifest order.

    Implements Grain's `RandomAccessDataSource` protocol (`__len__`, `__getitem__`,
    `__getitems__`) and pickles cheaply (paths and counts only): Grain worker processes map the
    shards again on first use. A directory on object storage (`s3://...`, `gs://...`) is read
    from a verified local copy (see `packing/remote.py`; `cache_dir` overrides where it goes).

    Arrays of a decoded record are read-only views of the record's bytes, which may be the
    shard's mapped pages; they stay valid as long as they are referenced, even after `close()`.

    Integrity: with `verify_checksums` (the default) a byte flipped anywhere in a shard raises
    `ShardFileError` naming the shard file and the record, at open or at the read of that record,
    before it reaches a batch. Shards listed without a checksum table (written before lwmkit
    recorded one) are read through ArrayRecord, which checks Riegeli's chunk hashes, at
    ArrayRecord's speed; a warning says so once, and `packing.add_checksums(directory)` adds the
    tables. `verify_checksums=False` reads every shard through mmap unchecked (see
    docs/benchmarks.md for what the check costs).

    Args:
      directory: a dataset directory (local, or on object storage).
      cache_dir: where a copy of a directory on object storage goes.
      verify_checksums: check every read against the manifest's checksum tables.

    Raises:
      ManifestError: if the directory has no readable manifest.
      ShardFileError: a shard is missing, damaged, or holds another count than the manifest lists
        (also from reads: a damaged record).
      RecordError: the shards together hold another count than the manifest's total.
    """

    def __init__(self, directory: str, cache_dir: str | None = None, verify_checksums: bool = True):
        self.directory = directory
        self.verify_checksums = verify_checksums
        self.local_directory = local_dataset(directory, cache_dir)
        self.manifest = load_manifest(self.local_directory)
        if "shards" not in self.manifest or "records" not in self.manifest:
            raise ManifestError(f"{directory}: the manifest lists no shards; not a dataset directory")
        self._paths = shard_paths(self.local_directory, self.manifest)
        counts = [s["records"] for s in self.manifest["shards"]]
        tables = shard_checksums(self.manifest)
        if verify_checksums and None in tables:
            warnings.warn(
                f"{directory}: {tables.count(None)} of {len(tables)} shards have no checksum table in "
                "the manifest (written before lwmkit recorded them); they are read through "
                "ArrayRecord, which checks Riegeli's chunk hashes, at its lower speed. "
                f"lwmkit.packing.add_checksums({self.local_directory!r}) adds the tables.",
                stacklevel=2,
            )
        self._source = ShardReader(self._paths, counts, tables, verify_checksums)
        if len(self._source) != self.manifest["records"]:
            raise RecordError(
                f"{directory}: shards hold {len(self._source)} records, "
                f"manifest says {self.manifest['records']}"
            )

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def seq_len(self) -> int | None:
        return self.manifest.get("seq_len")

    def __len__(self) -> int:
        return len(self._source)

    def _decode(self, index: int, data: bytes | memoryview) -> dict[str, Any]:
        try:
            return decode_record(data)
        except RecordError as e:
            raise RecordError(f"{self.directory}: record {index}: {e}") from e

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(
                f"record {index} out of range for {len(self)} records in {self.directory}"
            )
        index %= len(self)
        return self._decode(index, self._source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    @property
    def reader_modes(self) -> dict[str, int]:
        """How many shards are read through mmap (`"mmap"`) and through ArrayRecord (`"array_record"`)."""
        return self._source.modes

    def close(self) -> None:
        """Unmaps the shards; a later read maps them again."""
        self._source.close()

    def __repr__(self) -> str:
        return (
            f"ShardDataSource({self.directory!r}, kind={self.kind}, records={len(self)}, "
            f"readers={self.reader_modes})"
        )
