"""Training batches: packed records -> one dict of [batch, seq] arrays with next-token targets.

`shift_targets` is the definition (one record or a stacked batch); `TrainingBatch` is what the
loader runs: it builds a batch and its targets in one pass per row, into recycled buffers.

Targets are shifted by one *within each segment*: the last token of a document predicts nothing,
so a document never learns to predict its neighbour's first token. Two segments [5, 6, 7 | 8, 9]
and one padding token:
    tokens             [5, 6, 7, 8, 9, 0]
    tokens_segment_ids [1, 1, 1, 2, 2, 0]
    targets            [6, 7, 0, 9, 0, 0]
    target_loss_weights = loss_weights of the target token, 0 where targets is 0 above

Why recycle buffers: a batch of eight 32K-token records is ~7 MB of fresh arrays. Fresh pages
cost a page fault each (glibc serves large blocks with mmap and returns freed heap tops to the
OS), and faulting in the pages cost more than the copies themselves (measured: stacking and
targets 2.6 ms per batch with fresh arrays, 0.8 ms with warm ones). `TrainingBatch` therefore
keeps a few batches' arrays and reuses a set only when nothing outside the pool references any of
them (checked by reference count: a batch the caller still holds, a view of it, or a jax.Array
aliasing it keeps its buffers out of reuse). A caller never sees its batch change under it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

TARGET_FIELDS = ("targets", "target_loss_weights", "target_vision_mask")

# field -> dtype of a training batch, inputs first then targets.
BATCH_FIELDS: dict[str, Any] = {
    "tokens": np.int32,
    "vision_mask": np.bool_,
    "loss_weights": np.float32,
    "tokens_segment_ids": np.int32,
    "tokens_positions": np.int32,
    "targets": np.int32,
    "target_loss_weights": np.float32,
    "target_vision_mask": np.bool_,
}


def shift_targets(
    record: dict[str, Any], vision_offset: int | None = None
) -> dict[str, np.ndarray]:
    """The training fields of packed records: inputs plus targets shifted within segments.

    Works on one record ([seq] arrays) or a batch ([batch, seq]); the shift is along the last axis.

    Args:
      record: a decoded packed record or a batch of them (the online packer's output too).
      vision_offset: if set, emit one id space: vision ids (and vision targets) + vision_offset.

    Returns:
      The per-token fields plus `targets`, `target_loss_weights`, `target_vision_mask`.
    """
    tokens = np.asarray(record["tokens"], dtype=np.int32)  # [..., seq]
    vision = np.asarray(record["vision_mask"], dtype=bool)  # [..., seq]
    weights = np.asarray(record["loss_weights"], dtype=np.float32)  # [..., seq]
    seg = np.asarray(record["tokens_segment_ids"], dtype=np.int32)  # [..., seq]
    same = (seg[..., 1:] == seg[..., :-1]) & (seg[..., :-1] != 0)  # [..., seq-1]: i+1 continues i
    targets = np.zeros_like(tokens)
    np.multiply(tokens[..., 1:], same, out=targets[..., :-1])
    target_weights = np.zeros_like(weights)
    np.multiply(weights[..., 1:], same, out=target_weights[..., :-1])
    target_vision = np.zeros_like(vision)
    np.logical_and(vision[..., 1:], same, out=target_vision[..., :-1])
    if vision_offset is not None:
        tokens = tokens + vision * np.int32(vision_offset)
        targets = targets + target_vision * np.int32(vision_offset)
    return {
        "tokens": tokens,
        "vision_mask": vision,
        "loss_weights": weights,
        "tokens_segment_ids": seg,
        "tokens_positions": np.asarray(record["tokens_positions"], dtype=np.int32),
        "targets": targets,
        "target_loss_weights": target_weights,
        "target_vision_mask": target_vision,
    }


def _fill_row(
    out: dict[str, np.ndarray], i: int, rec: dict[str, Any], scratch: np.ndarray, offset: int | None
) -> None:
    """Row i of a batch from one record; `scratch` is [2, seq-1] bools of working space.

    The targets are the next token's fields copied whole, then zeroed where the next token starts
    another segment or the token is padding: those few positions are found with one scan of the
    segment ids instead of masking every token (a multiply by a bool mask costs a cast per token).
    """
    seg = out["tokens_segment_ids"][i]
    seg[...] = rec["tokens_segment_ids"]
    out["tokens_positions"][i] = rec["tokens_positions"]
    tokens, vision, weights = out["tokens"][i], out["vision_mask"][i], out["loss_weights"][i]
    tokens[...] = rec["tokens"]
    vision[...] = rec["vision_mask"]
    weights[...] = rec["loss_weights"]
    targets = out["targets"][i]
    target_weights = out["target_loss_weights"][i]
    target_vision = out["target_vision_mask"][i]
    targets[:-1] = tokens[1:]
    target_weights[:-1] = weights[1:]
    target_vision[:-1] = vision[1:]
    targets[-1] = 0
    target_weights[-1] = 0
    target_vision[-1] = False
    stop, padding = scratch[0], scratch[1]
    np.not_equal(seg[1:], seg[:-1], out=stop)  # token i+1 starts another segment
    np.equal(seg[:-1], 0, out=padding)
    stop |= padding
    ends = np.flatnonzero(stop)  # [k]: the positions that predict nothing
    targets[ends] = 0
    target_weights[ends] = 0
    target_vision[ends] = False
    if offset is not None:
        tokens += vision * np.int32(offset)
        targets += target_vision * np.int32(offset)


def _refcounts(bufs: dict[str, np.ndarray]) -> list[int]:
    return [sys.getrefcount(a) for a in bufs.values()]


# The count an array has when only a pool's dict holds it, measured through `_refcounts` itself
# so the loop variable and getrefcount's own argument are counted the same way.
_UNREFERENCED = _refcounts({"probe": np.empty(1)})[0]


class TrainingBatch:
    """A Grain `batch_fn`: records -> a training batch (see the module docstring), into recycled buffers.

    Args:
      vision_offset: if set, emit one id space: vision ids (and vision targets) + vision_offset.
      pool_size: how many batches' buffers to keep for reuse.

    Example:
        ds.batch(8, batch_fn=TrainingBatch())  # records from the loader's TokenFields map
    """

    def __init__(self, vision_offset: int | None = None, pool_size: int = 4):
        self.vision_offset = vision_offset
        self.pool_size = pool_size
        self._pool: list[dict[str, np.ndarray]] = []
        self._shared = False  # Grain asked for shared-memory output
        self._segments = None  # the SegmentPool, made where batches are built

    def __getstate__(self) -> dict[str, Any]:
        # Grain enables shared-memory output before it sends this object to its workers.
        return {
            "vision_offset": self.vision_offset,
            "pool_size": self.pool_size,
            "shared": self._shared,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["vision_offset"], state["pool_size"])
        self._shared = state["shared"]

    def enable_shared_memory_output(self) -> None:
        """Called by Grain in a worker process: build batches in recycled shared memory.

        Batches then leave as `SharedBatch` references that `OpenSharedBatch` (which the loader
        maps over the worker output in the main process) turns back into arrays without a copy;
        see `packing/shared_batches.py`.
        """
        self._shared = True

    def _buffers(self, rows: int, seq: int) -> dict[str, np.ndarray]:
        for bufs in self._pool:
            if bufs["tokens"].shape == (rows, seq) and max(_refcounts(bufs)) <= _UNREFERENCED:
                return bufs
        bufs = {k: np.empty((rows, seq), dtype=t) for k, t in BATCH_FIELDS.items()}
        self._pool.append(bufs)
        if len(self._pool) > self.pool_size:
            self._pool.pop(0)
        return bufs

    def __call__(self, records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        seq = int(records[0]["tokens"].shape[0])
        for r in records:
            if r["tokens"].shape != (seq,):
                raise ValueError(f"a batch mixes sequence lengths {seq} and {r['tokens'].shape[0]}")
        index = np.array([r["dataset_index"] for r in records], dtype=np.int32)
        scratch = np.empty((2, seq - 1), dtype=bool)
        if self._shared:
            from lwmkit.packing.shared_batches import SegmentPool, SharedBatch, layout, views

            if self._segments is None:
                self._segments = SegmentPool()

            fields, size = layout({k: (t, (len(records), seq)) for k, t in BATCH_FIELDS.items()})
            shm = self._segments.take(size)
            bufs = views(shm.buf, fields)
            for i, rec in enumerate(records):
                _fill_row(bufs, i, rec, scratch, self.vision_offset)
            del bufs  # no view of the segment may outlive the hand-over
            return SharedBatch(shm.name, size, fields, {"dataset_index": index})
        bufs = self._buffers(len(records), seq)
        for i, rec in enumerate(records):
            _fill_row(bufs, i, rec, scratch, self.vision_offset)
        return {**bufs, "dataset_index": index}
