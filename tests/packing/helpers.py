"""Writes small lwmkit dataset directories by hand, the way `pipelines/writing/finalize.py` lays them out.

Kept in a module of its own (not in a test file) so Grain worker processes, which unpickle what
the loader sends them, never need to import a test module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from lwmkit.packing.assemble import Segment, assemble_packed
from lwmkit.packing.bins import plan_packing
from lwmkit.packing.records import (
    DOCUMENT_FORMAT,
    FORMAT_VERSION,
    PACKED_FORMAT,
    encode_document,
    encode_packed,
    tfds_features_json,
)
from lwmkit.packing.shards import (
    WRITER_OPTIONS,
    ShardInfo,
    dataset_info_json,
    shard_name,
    write_json_atomic,
    write_shard,
)


def doc_tokens(doc: int, n: int) -> np.ndarray:
    """Tokens of document `doc`: unique across documents, so a token names its doc and position."""
    return (np.arange(n, dtype=np.int32) + 1 + 1000 * (doc + 1)).astype(np.int32)


def doc_loss_weights(n: int) -> np.ndarray:
    weights = np.ones(n, dtype=np.float32)
    weights[:1] = 0.0  # the first token of a document is never a target
    return weights


def packed_records(lengths: Sequence[int], seq_len: int) -> list[dict[str, np.ndarray]]:
    """Plans and assembles packed records (as arrays) for documents of the given lengths."""
    plan = plan_packing(lengths, seq_len)
    records = []
    for bin_ in plan.bins:
        segments = []
        for p in bin_:
            sl = slice(p.offset, p.offset + p.length)
            segments.append(
                Segment(
                    doc_id=p.doc,
                    offset=p.offset,
                    tokens=doc_tokens(p.doc, lengths[p.doc])[sl],
                    vision_mask=(doc_tokens(p.doc, lengths[p.doc]) % 3 == 0)[sl],
                    loss_weights=doc_loss_weights(lengths[p.doc])[sl],
                )
            )
        records.append(assemble_packed(segments, seq_len))
    return records


def _split(items: list, num_shards: int) -> list[list]:
    bounds = [len(items) * i // num_shards for i in range(num_shards + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(num_shards)]


def write_dataset(
    directory: str,
    blobs: Sequence[bytes],
    *,
    kind: str,
    seq_len: int | None,
    num_shards: int = 2,
    documents: int = 0,
) -> dict:
    """Writes shards, features.json, dataset_info.json and (last) manifest.json; returns the manifest."""
    name = "packed" if kind == "packed" else "documents"
    infos: list[ShardInfo] = []
    for i, chunk in enumerate(_split(list(blobs), num_shards)):
        infos.append(write_shard(os.path.join(directory, shard_name(name, i, num_shards)), chunk))
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset_name": name,
        "records": sum(s.records for s in infos),
        "documents": documents,
        "shards": [s.to_json() for s in infos],
        "shard_writer_options": WRITER_OPTIONS,
        "kind": kind,
        "record_format": PACKED_FORMAT if kind == "packed" else DOCUMENT_FORMAT,
        "seq_len": seq_len,
    }
    write_json_atomic(os.path.join(directory, "features.json"), tfds_features_json(kind, seq_len))
    write_json_atomic(
        os.path.join(directory, "dataset_info.json"),
        dataset_info_json(name, infos, f"test {kind} dataset"),
    )
    write_json_atomic(os.path.join(directory, "manifest.json"), manifest)
    return manifest


def write_packed_dir(
    directory: str, lengths: Sequence[int], seq_len: int, num_shards: int = 2
) -> list[dict[str, np.ndarray]]:
    """A packed dataset directory of the given documents; returns the records' arrays in order."""
    records = packed_records(lengths, seq_len)
    blobs = [encode_packed(r, seq_len) for r in records]
    write_dataset(
        directory,
        blobs,
        kind="packed",
        seq_len=seq_len,
        num_shards=num_shards,
        documents=len(lengths),
    )
    return records


def write_documents_dir(directory: str, lengths: Sequence[int], num_shards: int = 2) -> list[dict]:
    """A document dataset directory; returns the documents' fields in order."""
    docs = []
    for doc, n in enumerate(lengths):
        tokens = doc_tokens(doc, n)
        docs.append(
            {
                "doc_id": 10**15 + doc,
                "source_file": f"input-{doc % 2}.jsonl",
                "source_line": doc + 1,
                "tokens": tokens,
                "vision_mask": tokens % 3 == 0,
                "loss_weights": doc_loss_weights(n),
            }
        )
    blobs = [encode_document(**d) for d in docs]
    write_dataset(
        directory, blobs, kind="document", seq_len=None, num_shards=num_shards, documents=len(docs)
    )
    return docs
