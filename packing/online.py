"""The online packer: a Grain transform from document records to packed records.

For users who change `seq_len` without rebuilding shards. It reads `window` documents, cuts and
packs them with exactly the offline packer's code (`bins.pack_documents`,
`assemble.assemble_packed`, through `pack_records`) and yields the window's records in bin order. The offline packer
given the same window, seed, policies and document order gives the same records, field for field.

Its iterator state is (the parent's state at the start of the current window, records of the
window already returned), so a restored iterator re-packs that window and continues exactly.

Example:
    >>> ds = online_packed_dataset("out/documents", seq_len=4096, window=1024, seed=0)
    >>> next(iter(ds))["tokens"].shape
    (4096,)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from lwmkit.packing.assemble import Segment, assemble_packed
from lwmkit.packing.bins import document_order, pack_documents
from lwmkit.packing.cuts import infer_shape
from lwmkit.packing.loss import LossPolicy
from lwmkit.packing.records import spans_array
from lwmkit.packing.source import ShardDataSource


def pack_records(
    docs: Sequence[dict[str, Any]],
    seq_len: int,
    *,
    policy: str = "by_kind",
    piece_positions: str = "restart",
    loss_policy: LossPolicy | None = None,
) -> list[dict[str, np.ndarray]]:
    """Packs one window of decoded document records into packed records (in bin order)."""
    lengths = [int(d["tokens"].shape[0]) for d in docs]
    spans = [[tuple(map(int, s)) for s in spans_array(d.get("atomic_spans"))] for d in docs]
    shapes = [
        infer_shape(d["vision_mask"], d["loss_weights"], s, d.get("example_kind"), d.get("prefix_length"))
        for d, s in zip(docs, spans, strict=True)
    ]
    bins, _ = pack_documents(range(len(docs)), lengths, seq_len, policy, spans, shapes)
    out = []
    for bin_ in bins:
        segments = []
        for p in bin_:
            d = docs[p.doc]
            segments.append(
                Segment(int(d["doc_id"]), p.offset, p.take(d["tokens"]), p.take(d["vision_mask"]),
                        p.take(d["loss_weights"]), prefix=p.prefix)
            )
        out.append(assemble_packed(segments, seq_len, piece_positions=piece_positions, loss_policy=loss_policy))
    return out


class _OnlinePackIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, config: dict[str, Any]):
        super().__init__(parent)
        self._config = config
        self._pending: list[dict[str, np.ndarray]] = []
        self._window_state = parent.get_state()
        self._emitted = 0

    def _fill(self) -> None:
        self._window_state = self._parent.get_state()
        self._emitted = 0
        docs = []
        for _ in range(self._config["window"]):
            try:
                docs.append(next(self._parent))
            except StopIteration:
                break
        self._pending = pack_records(
            docs,
            self._config["seq_len"],
            policy=self._config["policy"],
            piece_positions=self._config["piece_positions"],
            loss_policy=self._config["loss_policy"],
        )

    def __next__(self) -> dict[str, np.ndarray]:
        if self._emitted >= len(self._pending):
            self._fill()
            if not self._pending:
                raise StopIteration
        record = self._pending[self._emitted]
        self._emitted += 1
        return record

    def get_state(self) -> dict[str, Any]:
        return {"window_start": self._window_state, "emitted": self._emitted}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["window_start"])
        self._fill()
        self._emitted = state["emitted"]


class OnlinePackIterDataset(grain.IterDataset):
    """Packs a Grain `IterDataset` of decoded document records into packed records.

    Args:
      parent: yields document records as `decode_record` returns them.
      seq_len: tokens per packed record.
      window: documents packed together.
      policy, piece_positions, loss_policy: as for the offline packer.
    """

    def __init__(
        self,
        parent: grain.IterDataset,
        seq_len: int,
        *,
        window: int,
        policy: str = "by_kind",
        piece_positions: str = "restart",
        loss_policy: str = "as_is",
    ):
        super().__init__(parent)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._config = {
            "seq_len": seq_len,
            "window": window,
            "policy": policy,
            "piece_positions": piece_positions,
            "loss_policy": LossPolicy.parse(loss_policy),
        }

    def __iter__(self) -> _OnlinePackIterator:
        return _OnlinePackIterator(self._parent.__iter__(), self._config)

    def __str__(self) -> str:
        return f"OnlinePackIterDataset(seq_len={self._config['seq_len']}, window={self._config['window']})"


class OrderedSource:
    """A data source read in a fixed order (a seeded permutation of another source)."""

    def __init__(self, source: ShardDataSource, order: np.ndarray):
        self._source = source
        self._order = order

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._source[int(self._order[index])]


def online_packed_dataset(
    directory: str,
    seq_len: int,
    *,
    window: int = 1024,
    seed: int | None = None,
    policy: str = "by_kind",
    piece_positions: str = "restart",
    loss_policy: str = "as_is",
    verify_checksums: bool = True,
) -> OnlinePackIterDataset:
    """Packed records made on the fly from a document directory (one pass, in packing order).

    The document order is the offline packer's: manifest order, or its seeded permutation. Every
    document read is checked against its shard's checksum table unless `verify_checksums=False`
    (see `ShardDataSource`).

    Raises:
      ValueError: if the directory does not hold document records.
    """
    source = ShardDataSource(directory, verify_checksums=verify_checksums)
    if source.kind != "document":
        raise ValueError(f"{directory}: holds {source.kind} records; online packing reads document records")
    ordered = OrderedSource(source, document_order(len(source), seed))
    parent = grain.MapDataset.source(ordered).to_iter_dataset()
    return OnlinePackIterDataset(
        parent, seq_len, window=window, policy=policy, piece_positions=piece_positions, loss_policy=loss_policy
    )
