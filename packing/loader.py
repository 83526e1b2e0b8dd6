"""A minimal Grain loader over packed shards: numpy batches for read-back and simple training.

The full training loader (mixtures, per-host sharding, resumable state) is built on the same
`ShardDataSource`. Batches hold the per-token fields stacked to [batch, seq_len].

Example:
    >>> for batch in make_loader("out/packed-32768", batch_size=4, seed=0):
    ...     batch["tokens"].shape, batch["tokens_segment_ids"].shape
    ((4, 32768), (4, 32768))
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grain
import numpy as np
from lwmkit.packing.records import PACKED_TOKEN_FIELDS
from lwmkit.packing.source import ShardDataSource


def _ensure_absl_flags_parsed() -> None:
    # Grain worker processes read absl flags and fail if they were never parsed.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class TokenFields(grain.transforms.Map):
    """Keeps the per-token fields of a packed record (the ones that stack into a batch)."""

    def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: np.asarray(element[k]) for k in PACKED_TOKEN_FIELDS}


def make_loader(
    directory: str,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    num_epochs: int | None = 1,
    worker_count: int = 0,
    drop_remainder: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Streams numpy batches of packed records from one dataset directory with Grain.

    Args:
      directory: a packed dataset directory (has `manifest.json` of kind "packed").
      batch_size: records per batch.
      shuffle: global shuffle of record order, by `seed`.
      num_epochs: passes over the data; None repeats forever.
      worker_count: Grain worker processes (0 reads in this process).
      drop_remainder: drop the last partial batch.

    Returns:
      An iterator of dicts `field -> [batch, seq_len]` arrays.

    Raises:
      ValueError: if the directory does not hold packed records or batch_size < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    source = ShardDataSource(directory)
    if source.kind != "packed":
        raise ValueError(f"{directory}: holds {source.kind} records; make_loader reads packed records")
    if worker_count:
        _ensure_absl_flags_parsed()
    sampler = grain.samplers.IndexSampler(
        num_records=len(source),
        shuffle=shuffle,
        seed=seed,
        num_epochs=num_epochs,
        shard_options=grain.sharding.NoSharding(),
    )
    loader = grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[TokenFields(), grain.transforms.Batch(batch_size, drop_remainder=drop_remainder)],
        worker_count=worker_count,
    )
    return iter(loader)
