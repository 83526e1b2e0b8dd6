"""A Grain `RandomAccessDataSource` over one lwmkit dataset directory (no JAX, no Grain import).

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


class ShardDataSource:
    """Random access to the decoded records of a dataset directory, in manifest order.

    Implements Grain's `RandomAccessDataSource` protocol (`__len__`, `__getitem__`,
    `__getitems__`) and pickles cheaply (paths only), so Grain worker processes can use it.
    A directory on object storage (`s3://...`, `gs://...`) is read from a verified local copy
    (see `packing/remote.py`; `cache_dir` overrides where it goes).

    Raises:
      ManifestError: if the directory has no readable manifest.
    """

    def __init__(self, directory: str, cache_dir: str | None = None):
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        self.directory = directory
        self.local_directory = local_dataset(directory, cache_dir)
        self.manifest = load_manifest(self.local_directory)
        self._paths = shard_paths(self.local_directory, self.manifest)
        self._source = ArrayRecordDataSource(self._paths)
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

    def _decode(self, index: int, data: bytes) -> dict[str, Any]:
        try:
            return decode_record(data)
        except RecordError as e:
            raise RecordError(f"{self.directory}: record {index}: {e}") from e

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records in {self.directory}")
        index %= len(self)
        return self._decode(index, self._source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        raw = self._source.__getitems__([int(i) for i in indices])
        return [self._decode(int(i), d) for i, d in zip(indices, raw, strict=True)]

    def __repr__(self) -> str:
        return f"ShardDataSource({self.directory!r}, kind={self.kind}, records={len(self)})"
