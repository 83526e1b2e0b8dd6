"""The Grain training loader: packed shards -> shuffled, sharded, mixed, checkpointable numpy batches.

A few lines in a training loop:

    it = make_loader(["out/books/packed-32768", "out/images/packed-32768"], batch_size=8,
                     weights=[0.6, 0.4], num_epochs=None, worker_count=2)
    for step, batch in zip(range(steps), it):
        batch["tokens"], batch["targets"], batch["target_loss_weights"]   # [8, 32768] each
        if step % 1000 == 0:
            save(it.get_state())        # a JSON-able dict; it.set_state(state) resumes exactly

Each batch holds the packed fields (`tokens`, `vision_mask`, `loss_weights`, `tokens_segment_ids`,
`tokens_positions`), the next-token `targets`, `target_loss_weights` and `target_vision_mask`
shifted by one *within each segment* (the last token of a document predicts nothing, so a
document never learns to predict its neighbour's first token), and `dataset_index` (which
mixture component each row came from).

Example of the targets (`packing/batches.py` builds them), two segments [5, 6, 7 | 8, 9] and one
padding token:
    tokens             [5, 6, 7, 8, 9, 0]
    tokens_segment_ids [1, 1, 1, 2, 2, 0]
    targets            [6, 7, 0, 9, 0, 0]
    target_loss_weights = loss_weights of the target token, 0 where targets is 0 above

Batch arrays are recycled once nothing references them (see `packing/batches.py`): keep a batch
(or a view of it) as long as you like; it never changes under you.

Sharding: every host reads `records[shard_index::shard_count]` of each dataset (defaults:
`jax.process_index()` / `jax.process_count()` when JAX is present, else 0 / 1). The global
shuffle is by `seed`, with a new permutation every epoch. Mixtures use Grain's `MapDataset.mix`:
the proportions are exact over every run of `len(weights)`-scaled steps, not just in expectation.
Iterator state restores to the exact next batch; Grain's state for `worker_count > 0` records
each worker's position, so a state can be restored only with the same worker count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grain
import numpy as np
from lwmkit.packing.batches import TrainingBatch
from lwmkit.packing.records import PACKED_TOKEN_FIELDS
from lwmkit.packing.shared_batches import OpenSharedBatch
from lwmkit.packing.source import ShardDataSource


def _ensure_absl_flags_parsed() -> None:
    # Grain worker processes read absl flags and fail if they were never parsed.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class TokenFields(grain.transforms.Map):
    """Grain map: a packed record -> its per-token fields (views, no copy), tagged with its dataset."""

    def __init__(self, dataset_index: int = 0):
        self.dataset_index = dataset_index

    def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        out = {k: element[k] for k in PACKED_TOKEN_FIELDS}
        out["dataset_index"] = np.int32(self.dataset_index)
        return out


@dataclass(frozen=True)
class LoaderConfig:
    """Everything `make_loader` needs; see the module docstring.

    Attributes:
      directories: packed dataset directories (or one document directory with `online_seq_len`).
      batch_size: records per batch (per host).
      weights: mixture weights, one per directory (default equal); normalised.
      shuffle, seed: global shuffle, a new permutation per epoch.
      num_epochs: passes over each dataset; None repeats forever (mixtures always repeat).
      shard_index, shard_count: this host's share; None takes JAX's process index and count.
      worker_count: Grain worker processes (0 reads in this process).
      worker_buffer_size: batches each worker prepares ahead.
      read_threads: threads reading records in each process; None picks 0 below 64K-token records
        (a thread hand-off costs more than the read) and 4 from 64K up (read-ahead keeps the
        latency of 1M-token records flat).
      drop_remainder: drop the last partial batch.
      vision_offset: emit a single id space, vision ids + this offset (e.g. the text vocab size).
      online_seq_len, online_window: pack a document directory on the fly to this seq_len.
      cache_dir: where directories on object storage (`s3://`, `gs://`) are copied to be read
        (default `$LWMKIT_CACHE/datasets` or `~/.cache/lwmkit/datasets`).
      verify_checksums: check every record read against its shard's checksum table, so a damaged
        byte raises `ShardFileError` (naming the file and record) instead of reaching a batch;
        False skips the check (see docs/benchmarks.md, loader section, for its cost).
    """

    directories: tuple[str, ...]
    batch_size: int
    weights: tuple[float, ...] | None = None
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = 1
    shard_index: int | None = None
    shard_count: int | None = None
    worker_count: int = 0
    worker_buffer_size: int = 2
    read_threads: int | None = None
    drop_remainder: bool = True
    vision_offset: int | None = None
    online_seq_len: int | None = None
    online_window: int = 1024
    cache_dir: str | None = None
    verify_checksums: bool = True

    def __post_init__(self):
        if not self.directories:
            raise ValueError("directories: give at least one dataset directory")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.weights is not None:
            if len(self.weights) != len(self.directories):
                raise ValueError(
                    f"weights: {len(self.weights)} weights for {len(self.directories)} directories"
                )
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError(f"weights: {self.weights} must be >= 0 and not all 0")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs: {self.num_epochs} must be >= 1 or None (forever)")
        if (self.shard_index is None) != (self.shard_count is None):
            raise ValueError("shard_index and shard_count go together")
        if self.shard_count is not None and not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard_index {self.shard_index} is outside 0..{self.shard_count - 1}")
        if self.worker_count < 0:
            raise ValueError(f"worker_count: {self.worker_count} must be >= 0")
        if self.online_seq_len is not None and len(self.directories) != 1:
            raise ValueError("online packing reads one document directory")


def _host_shard(config: LoaderConfig) -> tuple[int, int]:
    if config.shard_count is not None:
        return config.shard_index, config.shard_count
    try:
        import jax
    except ImportError:
        return 0, 1
    return jax.process_index(), jax.process_count()


def _source(config: LoaderConfig, directory: str) -> ShardDataSource:
    return ShardDataSource(directory, config.cache_dir, config.verify_checksums)


def _packed_dataset(config: LoaderConfig, index: int, shard: tuple[int, int], repeat: int | None):
    source = _source(config, config.directories[index])
    if source.kind != "packed":
        raise ValueError(
            f"{config.directories[index]}: holds {source.kind} records; make_loader reads packed records "
            "(or set online_seq_len to pack a document directory on the fly)"
        )
    ds = grain.MapDataset.source(source)[shard[0] :: shard[1]]
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed + index)
    ds = ds.repeat(repeat)
    return ds.map(TokenFields(index))


def build_dataset(config: LoaderConfig) -> grain.IterDataset:
    """The Grain `IterDataset` behind `make_loader`, for users who compose further transforms."""
    shard = _host_shard(config)
    threads = config.read_threads
    if threads is None:
        longest = max(
            _source(config, d).manifest.get("seq_len") or 0
            for d in config.directories
        )
        threads = 0 if config.online_seq_len is None and longest < 65536 else 4
    read = grain.ReadOptions(
        num_threads=threads, prefetch_buffer_size=max(2 * config.batch_size, 8)
    )
    if config.online_seq_len is not None:
        from lwmkit.packing.bins import document_order
        from lwmkit.packing.online import OnlinePackIterDataset, OrderedSource

        source = _source(config, config.directories[0])
        order = document_order(len(source), config.seed if config.shuffle else None)[
            shard[0] :: shard[1]
        ]
        docs = (
            grain.MapDataset.source(OrderedSource(source, order))
            .repeat(config.num_epochs)
            .to_iter_dataset(read)
        )
        ds = OnlinePackIterDataset(docs, config.online_seq_len, window=config.online_window).map(
            TokenFields(0)
        )
    else:
        mixing = len(config.directories) > 1
        parts = [
            _packed_dataset(config, i, shard, None if mixing else config.num_epochs)
            for i in range(len(config.directories))
        ]
        mixed = (
            grain.MapDataset.mix(parts, list(config.weights or [1.0] * len(parts)))
            if mixing
            else parts[0]
        )
        ds = mixed.to_iter_dataset(read)
    ds = ds.batch(
        config.batch_size,
        drop_remainder=config.drop_remainder,
        batch_fn=TrainingBatch(config.vision_offset),
    )
    if config.worker_count:
        _ensure_absl_flags_parsed()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size
            )
        ).map(OpenSharedBatch())
    return ds


def make_loader(
    directories: str | Sequence[str],
    batch_size: int,
    **options: Any,
) -> grain.DatasetIterator:
    """Streams numpy batches of packed records with Grain; see the module docstring.

    Args:
      directories: one or more packed dataset directories.
      batch_size: records per batch.
      **options: any other `LoaderConfig` field (weights, shuffle, seed, num_epochs, shard_index,
        shard_count, worker_count, vision_offset, online_seq_len, ...).

    Returns:
      A Grain iterator of dicts `field -> [batch, seq_len]` arrays (plus `dataset_index` [batch]),
      with `get_state()` / `set_state()` for checkpoints.

    Raises:
      ValueError: for bad options or a directory that does not hold packed records.
    """
    dirs = (directories,) if isinstance(directories, str) else tuple(directories)
    if "weights" in options and options["weights"] is not None:
        options["weights"] = tuple(options["weights"])
    return iter(build_dataset(LoaderConfig(directories=dirs, batch_size=batch_size, **options)))
