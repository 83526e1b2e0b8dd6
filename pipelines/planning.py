"""The job's global plan: document order, shard assignment and packing, from lengths alone.

Only one small tuple per document (id, source, length) is gathered in one place; token data stays
distributed and is routed to its shard by a join on the document id. The plan is deterministic for
the same documents, whatever order the runner delivered them in.

Example, documents of 5 and 9 tokens, seq_len 8, one shard each:
    documents: doc a -> (documents shard 0, record 0), doc b -> (shard 0, record 1)
    packed-8:  bins [b[0:8]] [a[0:5], b[8:9]] -> b piece 0 -> (record 0, segment 0), ...
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from lwmkit.packing.bins import plan_packing

DOCUMENTS = "documents"


def packed_dir(seq_len: int) -> str:
    return f"packed-{seq_len}"


def tfds_name(dataset_dir: str) -> str:
    """TFDS dataset name (no '-') of an output directory: 'documents' or 'packed'."""
    return DOCUMENTS if dataset_dir == DOCUMENTS else "packed"


def _shard_of_records(num_records: int, num_shards: int) -> list[int]:
    """First record index of each shard, plus the end: records split into near-equal ranges."""
    return [math.ceil(s * num_records / num_shards) for s in range(num_shards + 1)]


def _document_shards(lengths: Sequence[int], shard_tokens: int) -> tuple[int, list[int]]:
    """Contiguous shards of about shard_tokens tokens each; returns (count, shard of each doc).

    A document larger than a shard gets a shard of its own; no shard is ever empty.
    """
    total = sum(lengths)
    target = max(1, math.ceil(total / shard_tokens))
    raw: list[int] = []
    before = 0
    for n in lengths:
        raw.append(min(target - 1, before * target // max(total, 1)))
        before += n
    renumber = {s: i for i, s in enumerate(sorted(set(raw)))}
    return max(1, len(renumber)), [renumber[s] for s in raw]


def make_plan(
    index: Sequence[dict[str, Any]], seq_lens: Sequence[int], shard_tokens: int, policy: str
) -> dict[str, Any]:
    """Builds the plan from one index entry per document.

    Args:
      index: dicts with doc_id, file, line, chars, tokens (count), meta.
      seq_lens: record lengths to pack to.
      shard_tokens: target tokens per shard file.
      policy: long-document policy for packing.

    Returns:
      A plain-data plan: `docs` (sorted by source), document shard placement, and per seq_len the
      packing bins and their shard ranges.
    """
    docs = sorted(index, key=lambda e: (e["file"], e["line"], e["doc_id"]))
    lengths = [e["tokens"] for e in docs]
    doc_shard_count, doc_shard = _document_shards(lengths, shard_tokens)
    doc_local: list[int] = []
    counts = [0] * doc_shard_count
    for s in doc_shard:
        doc_local.append(counts[s])
        counts[s] += 1
    packed: dict[int, dict[str, Any]] = {}
    for seq_len in seq_lens:
        pack = plan_packing(lengths, seq_len, policy)
        n = len(pack.bins)
        shards = min(n, max(1, math.ceil(n * seq_len / shard_tokens)))  # never an empty shard
        packed[seq_len] = {
            "bins": [[(p.doc, p.offset, p.length) for p in b] for b in pack.bins],
            "shard_starts": _shard_of_records(n, shards) if shards else [0],
            "num_shards": shards,
            "documents_cut": pack.documents_cut,
        }
    return {
        "docs": docs,
        "doc_shard_count": doc_shard_count,
        "doc_shard": doc_shard,
        "doc_local": doc_local,
        "doc_shard_lengths": counts,
        "packed": packed,
    }


def record_location(shard_starts: Sequence[int], record: int) -> tuple[int, int]:
    """(shard, index within shard) of global record `record`."""
    import bisect

    shard = bisect.bisect_right(shard_starts, record) - 1
    return shard, record - shard_starts[shard]


def iter_placements(plan: dict[str, Any]) -> Iterator[tuple[int, tuple]]:
    """Yields (doc_id, placement) for every place a document's tokens go.

    Placements: `(dataset_dir, shard, shard_count, record_in_shard, segment, offset, length)`;
    a document record has segment 0, offset 0 and its full length.
    """
    docs = plan["docs"]
    for i, d in enumerate(docs):
        yield d["doc_id"], (DOCUMENTS, plan["doc_shard"][i], plan["doc_shard_count"], plan["doc_local"][i], 0, 0, d["tokens"])
    for seq_len, p in plan["packed"].items():
        name = packed_dir(seq_len)
        for r, pieces in enumerate(p["bins"]):
            shard, local = record_location(p["shard_starts"], r)
            for j, (doc, offset, length) in enumerate(pieces):
                yield docs[doc]["doc_id"], (name, shard, p["num_shards"], local, j, offset, length)
