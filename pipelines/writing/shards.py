"""Routing document tokens to their shards and writing each shard as one unit of work.

With the plan as a side input, every piece of every document becomes
`((seq_len, shard, shard_count), (record, segment, reference))` (seq_len None for the document
dataset), a reference into the work
store (`engine/work_store.py`), never the tokens themselves. Grouping by shard brings one
shard's pieces to one worker, which orders them, reads their tokens from the work store, builds
the records and writes the file atomically, then a receipt that lets a rerun skip it. Order inside a shard comes from the plan, never from arrival order, so shards are
byte-identical across runs and runners.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from lwmkit.packing.assemble import Segment, assemble_packed
from lwmkit.packing.cuts import ExampleShape
from lwmkit.packing.loss import LossPolicy
from lwmkit.packing.records import FORMAT_VERSION, encode_document, encode_packed, spans_array, zero_loss_segments
from lwmkit.packing.shards import dumps_json, shard_name
from lwmkit.pipelines.engine.outputs import (
    is_local,
    join,
    read_output_bytes,
    write_output_bytes,
    write_output_shard,
)
from lwmkit.pipelines.engine.stages import RuntimeState
from lwmkit.pipelines.engine.work_store import UnitReader, work_dir
from lwmkit.pipelines.writing.payload import doc_arrays, piece
from lwmkit.pipelines.writing.plan import (
    DOCUMENTS,
    PackOptions,
    dataset_dir,
    iter_placements,
    tfds_name,
)


class RouteDoFn(RuntimeState, beam.DoFn):
    """Sends each document's pieces, as references into the work store, to the shards the plan names.

    The plan's placements are indexed by document id once per worker and reused. A document the
    plan knows may have no placement: without a documents dataset, one that every packed dataset
    dropped (a long-document policy) or left out (`min_doc_tokens`) goes nowhere.

    Raises:
      RuntimeError: if a document is not in the plan at all (the plan and the data disagree).
    """

    RUNTIME_ATTRS = ("_plan_id", "_index")

    def setup(self):
        self._plan_id = None
        self._index: dict[int, list[tuple]] = {}

    def process(self, element: tuple[int, dict[str, Any]], plan: dict[str, Any]) -> Iterator[tuple[tuple, tuple]]:
        if self._plan_id != id(plan):
            self._index = {d["doc_id"]: [] for d in plan["docs"]}
            for doc_id, place in iter_placements(plan):
                self._index[doc_id].append(place)
            self._plan_id = id(plan)
        doc_id, ref = element
        places = self._index.get(doc_id)
        if places is None:
            raise RuntimeError(f"document {doc_id} ({ref['file']}:{ref['line']}) has no place in the plan")
        where = {"at": ref["at"], "sha": ref["sha"]}
        for seq_len, shard, count, record, segment, offset, length, prefix in places:
            key = (seq_len, shard, count)
            if seq_len is None:
                yield key, (record, 0, (doc_id, ref))
            else:
                yield key, (record, segment, (doc_id, offset, length, where, prefix))


def _packed_records(
    pieces: list[tuple], seq_len: int, where: str, pack: PackOptions, units: UnitReader
) -> Iterator[tuple[bytes, dict]]:
    loss_policy = LossPolicy.parse(pack.loss_policy)
    record = 0
    i = 0
    while i < len(pieces):
        if pieces[i][0] != record:
            raise RuntimeError(f"{where}: record {record} has no pieces")
        segs: list[Segment] = []
        while i < len(pieces) and pieces[i][0] == record:
            doc_id, offset, length, ref, prefix = pieces[i][2]
            part = piece(units.load(doc_id, ref), offset, length, prefix)
            segs.append(Segment(doc_id, offset, *doc_arrays(part, offset), prefix=prefix))
            i += 1
        fields = assemble_packed(segs, seq_len, piece_positions=pack.piece_positions, loss_policy=loss_policy)
        yield encode_packed(fields, seq_len), fields
        record += 1


def shard_key(dataset: str, shard: int, count: int, pieces: list[tuple], pack: PackOptions) -> str:
    """What decides a shard's bytes: its pieces (by record content hash) and the layout options."""
    if dataset == DOCUMENTS:
        parts = [(r, s, d, ref["sha"], ref["file"], ref["line"], ref.get("atomic_spans"), ref.get("shape"))
                 for r, s, (d, ref) in pieces]
    else:
        parts = [(r, s, d, off, n, ref["sha"], pre) for r, s, (d, off, n, ref, pre) in pieces]
    blob = json.dumps([FORMAT_VERSION, dataset, shard, count, pack.to_json(), parts], sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()


class WriteShardDoFn(RuntimeState, beam.DoFn):
    """Writes one shard from its grouped pieces and yields a summary of what it wrote.

    A shard whose receipt in the work store names the same pieces, and whose file on disk still
    has the receipt's size and SHA-256, is not written again (the resume of a killed job).

    Args:
      output: the job's output directory (local or any Beam filesystem).
      pack: how packed records are laid out and weighted.
    """

    def __init__(self, output: str, pack: PackOptions):
        self.output = output
        self.pack = pack

    RUNTIME_ATTRS = ("_units",)  # open work units

    def setup(self):
        self._units = UnitReader(self.output)
        self._reused = beam.metrics.Metrics.counter("lwmkit", "shards.reused")
        self._written = beam.metrics.Metrics.counter("lwmkit", "shards.written")

    def teardown(self):
        self._units.close()

    def process(self, element: tuple[tuple, Iterable[tuple]]) -> Iterator[dict[str, Any]]:
        (seq_len, shard, count), values = element
        dataset = dataset_dir(seq_len)
        pieces = sorted(values, key=lambda v: (v[0], v[1]))
        name = shard_name(tfds_name(dataset), shard, count)
        path = join(self.output, dataset, name)
        key = shard_key(dataset, shard, count, pieces, self.pack)
        receipt_path = join(work_dir(self.output), "shards", dataset, f"{name}.json")
        done = _finished_shard(path, receipt_path, key)
        if done is not None:
            self._reused.inc()
            yield done
            return
        stats: dict[str, Any] = {
            "tokens": 0, "vision_tokens": 0, "loss_weight_text": 0.0, "loss_weight_vision": 0.0,
            "segments": 0, "padding": 0, "segments_per_record": {}, "segments_zero_loss": 0, "records_zero_loss": 0,
        }

        if seq_len is None:
            if [p[0] for p in pieces] != list(range(len(pieces))):
                raise RuntimeError(f"{path}: document records are not numbered 0..{len(pieces) - 1}")

            def records() -> Iterator[bytes]:
                for _, _, (doc_id, ref) in pieces:
                    tokens, vision, weights = doc_arrays(self._units.load(doc_id, ref))
                    shape = ExampleShape.from_list(ref.get("shape"))
                    stats["tokens"] += int(tokens.shape[0])
                    stats["vision_tokens"] += int(np.count_nonzero(vision))
                    stats["loss_weight_text"] += float(weights[~vision].sum(dtype=np.float64))
                    stats["loss_weight_vision"] += float(weights[vision].sum(dtype=np.float64))
                    yield encode_document(
                        doc_id=doc_id,
                        source_file=ref["file"],
                        source_line=ref["line"],
                        tokens=tokens,
                        vision_mask=vision,
                        loss_weights=weights,
                        atomic_spans=spans_array(ref.get("atomic_spans")),
                        example_kind=shape.kind,
                        prefix_length=shape.prefix,
                    )

        else:

            def records() -> Iterator[bytes]:
                for data, fields in _packed_records(pieces, seq_len, path, self.pack, self._units):
                    seg = fields["tokens_segment_ids"]
                    used = int(np.count_nonzero(seg))
                    vision = fields["vision_mask"]
                    weights = fields["loss_weights"]
                    k = int(fields["segment_lengths"].shape[0])
                    stats["tokens"] += used
                    stats["padding"] += seq_len - used
                    stats["vision_tokens"] += int(np.count_nonzero(vision))
                    stats["loss_weight_text"] += float(weights[~vision].sum(dtype=np.float64))
                    stats["loss_weight_vision"] += float(weights[vision].sum(dtype=np.float64))
                    stats["segments"] += k
                    zero = zero_loss_segments(fields)
                    stats["segments_zero_loss"] += zero
                    stats["records_zero_loss"] += int(zero == k)
                    hist = stats["segments_per_record"]
                    hist[str(k)] = hist.get(str(k), 0) + 1
                    yield data

        info = write_output_shard(path, records())
        summary = {"dataset": dataset, "shard": shard, **info.to_json(), **stats}
        write_output_bytes(receipt_path, dumps_json({"key": key, "summary": summary}))
        self._written.inc()
        yield summary


def _finished_shard(path: str, receipt_path: str, key: str) -> dict[str, Any] | None:
    """The stored summary if the shard at `path` is complete for `key` (size and SHA-256 checked)."""
    raw = read_output_bytes(receipt_path)
    if raw is None:
        return None
    try:
        receipt = json.loads(raw)
    except json.JSONDecodeError:
        return None
    summary = receipt.get("summary") or {}
    if receipt.get("key") != key or _size_and_sha256(path) != (summary.get("bytes"), summary.get("sha256")):
        return None
    return summary


def _size_and_sha256(path: str) -> tuple[int, str] | None:
    """(size, SHA-256) of a local or remote file, streamed; None if it does not exist."""
    try:
        if is_local(path):
            f = open(path, "rb")  # noqa: SIM115 - closed below
        else:
            from apache_beam.io.filesystem import CompressionTypes
            from apache_beam.io.filesystems import FileSystems

            if not FileSystems.exists(path):
                return None
            f = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except FileNotFoundError:
        return None
    h = hashlib.sha256()
    size = 0
    with f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()
