"""Packing: the record format, bin packing, ArrayRecord shards, manifests and read-back.

Everything here imports without JAX. The Grain loader (`make_loader`) imports Grain, which pulls in
JAX, so it is loaded only when first used.
"""

from lwmkit.packing.assemble import Segment, assemble_packed
from lwmkit.packing.batches import TrainingBatch, shift_targets
from lwmkit.packing.bins import PackPlan, Piece, best_fit_decreasing, cut_documents, plan_packing
from lwmkit.packing.cuts import ExampleShape, LongDocumentPolicy
from lwmkit.packing.integrity import ShardChecksums
from lwmkit.packing.loss import LossPolicy
from lwmkit.packing.manifest import ManifestError, add_checksums, load_manifest, verify_directory
from lwmkit.packing.records import (
    DOCUMENT_FORMAT,
    FORMAT_VERSION,
    PACKED_FORMAT,
    RecordError,
    check_packed,
    decode_record,
    document_id,
    encode_document,
    encode_packed,
    tfds_features_json,
    zero_loss_segments,
)
from lwmkit.packing.shard_reader import ShardFile, ShardFileError, ShardReader
from lwmkit.packing.shards import ShardInfo, read_shard, shard_name, write_shard
from lwmkit.packing.source import ShardDataSource

__all__ = [
    "DOCUMENT_FORMAT",
    "ExampleShape",
    "FORMAT_VERSION",
    "LongDocumentPolicy",
    "LossPolicy",
    "PACKED_FORMAT",
    "ManifestError",
    "PackPlan",
    "Piece",
    "RecordError",
    "Segment",
    "ShardDataSource",
    "ShardFile",
    "ShardFileError",
    "ShardInfo",
    "ShardChecksums",
    "ShardReader",
    "TrainingBatch",
    "add_checksums",
    "assemble_packed",
    "best_fit_decreasing",
    "check_packed",
    "cut_documents",
    "decode_record",
    "document_id",
    "encode_document",
    "encode_packed",
    "load_manifest",
    "make_loader",
    "plan_packing",
    "read_shard",
    "shard_name",
    "shift_targets",
    "tfds_features_json",
    "verify_directory",
    "write_shard",
    "zero_loss_segments",
]


def __getattr__(name: str):
    # Grain imports JAX; keep `import lwmkit.packing` light for Beam workers.
    if name == "make_loader":
        from lwmkit.packing.loader import make_loader

        return make_loader
    raise AttributeError(f"module 'lwmkit.packing' has no attribute {name!r}")
