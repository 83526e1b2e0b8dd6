"""A Grain `RandomAccessDataSource` over one lwmkit dataset directory (no JAX, no Grain import).

Records are read with `ShardReader` (`packing/shard_reader.py`): lwmkit's own shards through mmap,
one copy per record (none for records inside one 64 KiB block), and any other ArrayRecord file
through Grain's `ArrayRecordDataSource`.

Example:
    >>> src = ShardDataSource("out/packed-32768")
    >>> len(src), src[0]["tokens"].shape
    (1204, (32768,))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lwmkit.packing.manifest import load_manifest, shard_paths
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

    Args:
      directory: a dataset directory (local, or on object storage).
      cache_dir: where a copy of a directory on object storage goes.

    Raises:
      ManifestError: if the directory has no readable manifest.
      ShardFileError: a shard is missing, damaged, or holds another count than the manifest lists.
      RecordError: the shards together hold another count than the manifest's total.
    """

    def __init__(self, directory: str, cache_dir: str | None = None):
        self.directory = directory
        self.local_directory = local_dataset(directory, cache_dir)
        self.manifest = load_manifest(self.local_directory)
        self._paths = shard_paths(self.local_directory, self.manifest)
        counts = [s.get("records") for s in self.manifest["shards"]]
        self._source = ShardReader(self._paths, None if None in counts else counts)
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
