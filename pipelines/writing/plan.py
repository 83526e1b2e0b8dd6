"""The job's global plan: document order, shard assignment and packing, from lengths alone.

Only one small tuple per document (id, source, length, atomic spans) is gathered in one place;
token data stays distributed and is routed to its shard with the plan as a side input. The plan
is deterministic for the same documents, whatever order the runner delivered them in.

Packing runs in one of two forms (`PackOptions.window`):
    window None  one best-fit-decreasing pass over every document (best fill), inside the plan;
    window W     the distributed form: consecutive windows of W documents are packed in parallel
                 Beam workers, then the under-filled records of all windows are packed again in
                 one top-up pass. The result equals `bins.plan_packing(..., window=W,
                 top_up_below=...)` exactly.

Example, documents of 5 and 9 tokens, seq_len 8, one shard each:
    documents: doc a -> (documents shard 0, record 0), doc b -> (shard 0, record 1)
    packed-8:  bins [b[0:8]] [a[0:5], b[8:9]] -> b piece 0 -> (record 0, segment 0), ...
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from lwmkit.packing.assemble import PIECE_POSITIONS
from lwmkit.packing.bins import (
    CutStats,
    ExampleShape,
    LongDocumentPolicy,
    Piece,
    pack_documents,
    top_up,
    window_groups,
)
from lwmkit.packing.loss import LossPolicy

DOCUMENTS = "documents"


@dataclass(frozen=True)
class PackOptions:
    """How documents are cut, packed and weighted; recorded in every packed manifest.

    Attributes:
      policy: long-document policy: by_kind (the default: text split, understanding keep_tail,
        generation repeat_condition, chat drop), by_kind with overrides, or split, truncate, drop
        for every kind (see `lwmkit.packing.cuts`).
      piece_positions: positions of a cut document's later pieces: restart at 0, or continue.
      loss_policy: loss-weight policy name (see `lwmkit.packing.loss`).
      window: documents packed together (None: all at once, in one worker).
      top_up_below: with a window, re-pack records filled below this share in a final pass.
      seed: shuffle the document order before packing (None: source order).
    """

    policy: str = "by_kind"
    piece_positions: str = "restart"
    loss_policy: str = "as_is"
    window: int | None = None
    top_up_below: float | None = 0.99
    seed: int | None = None

    def __post_init__(self):
        try:
            LongDocumentPolicy.parse(self.policy)
        except ValueError as e:
            raise ValueError(f"policy: {e}") from e
        if self.piece_positions not in PIECE_POSITIONS:
            raise ValueError(f"piece_positions: {self.piece_positions!r} is not one of {list(PIECE_POSITIONS)}")
        LossPolicy.parse(self.loss_policy)  # raises ValueError naming the bad part
        if self.window is not None and self.window < 1:
            raise ValueError(f"window: {self.window} must be >= 1 (or None for one global pass)")
        if self.top_up_below is not None and not 0.0 < self.top_up_below <= 1.0:
            raise ValueError(f"top_up_below: {self.top_up_below} must be in (0, 1]")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["loss_policy"] = LossPolicy.parse(self.loss_policy).spec
        d["policy"] = LongDocumentPolicy.parse(self.policy).spec
        d["algorithm"] = "best_fit_decreasing+subset_sum_repair"
        if self.window is None:
            d["top_up_below"] = None  # one global pass has nothing to top up
        return d


def packed_dir(seq_len: int) -> str:
    return f"packed-{seq_len}"


def dataset_dir(seq_len: int | None) -> str:
    """The folder of a dataset: `documents` (seq_len None) or `packed-<seq_len>`; a name, never parsed back."""
    return DOCUMENTS if seq_len is None else packed_dir(seq_len)


def tfds_name(dataset_dir: str) -> str:
    """TFDS dataset name (no '-') of an output directory: 'documents' or 'packed'."""
    return DOCUMENTS if dataset_dir == DOCUMENTS else "packed"


def _shard_starts(num_records: int, num_shards: int) -> list[int]:
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


def _eligible(docs: Sequence[dict], min_tokens: int) -> list[int]:
    return [i for i, d in enumerate(docs) if d["tokens"] >= min_tokens]


def _spans(docs: Sequence[dict]) -> list[list[tuple[int, int]]]:
    return [[tuple(s) for s in d.get("spans") or ()] for d in docs]


def _shapes(docs: Sequence[dict]) -> list[ExampleShape]:
    return [ExampleShape.from_list(d.get("shape")) for d in docs]


def _bins_json(bins: Sequence[Sequence[Piece]]) -> list[list[list[int]]]:
    return [[p.to_list() for p in b] for b in bins]


def packing_windows(plan: dict[str, Any], pack: PackOptions) -> Iterator[tuple[int, tuple[int, list[int]]]]:
    """Yields (seq_len, (window index, document indices)) for the distributed packing form."""
    for seq_len, entry in plan["packed"].items():
        eligible = entry["eligible"]
        for w, group in enumerate(window_groups(len(eligible), pack.window, pack.seed)):
            yield seq_len, (w, [eligible[int(i)] for i in group])


def pack_window_of(item: tuple[int, tuple[int, list[int]]], plan: dict[str, Any], pack: PackOptions):
    """Packs one window (a Beam worker's share); returns (seq_len, (window, bins, cuts))."""
    seq_len, (w, docs) = item
    # Only this window's documents: each worker does O(window) work, not O(corpus).
    lengths = {d: plan["docs"][d]["tokens"] for d in docs}
    spans = {d: [tuple(s) for s in plan["docs"][d].get("spans") or ()] for d in docs}
    shapes = {d: ExampleShape.from_list(plan["docs"][d].get("shape")) for d in docs}
    bins, cuts = pack_documents(docs, lengths, seq_len, pack.policy, spans, shapes)
    return seq_len, (w, _bins_json(bins), cuts)


def _finish_packed(entry: dict[str, Any], bins: list[list[list[int]]], cuts: CutStats, seq_len: int, shard_tokens: int):
    n = len(bins)
    shards = min(n, max(1, math.ceil(n * seq_len / shard_tokens)))  # never an empty shard
    entry.update(
        bins=bins,
        shard_starts=_shard_starts(n, shards) if shards else [0],
        num_shards=shards,
        cuts=cuts.to_json(),
        dropped=cuts.dropped,
    )


def merge_windows(plan: dict[str, Any], packed: dict[int, list], pack: PackOptions, shard_tokens: int) -> dict[str, Any]:
    """Completes the plan from every window's bins: window order, then the top-up pass."""
    out = {**plan, "packed": {k: dict(v) for k, v in plan["packed"].items()}}
    for seq_len, entry in out["packed"].items():
        results = sorted(packed.get(seq_len, []), key=lambda r: r[0])
        bins: list[list[Piece]] = []
        cuts = CutStats()
        for _, window_bins, window_cuts in results:
            bins += [[Piece(*p) for p in b] for b in window_bins]
            cuts.merge(window_cuts)
        if pack.top_up_below is not None:
            bins = top_up(bins, seq_len, pack.top_up_below)
        _finish_packed(entry, _bins_json(bins), cuts, seq_len, shard_tokens)
    return out


def make_plan(
    index: Sequence[dict[str, Any]],
    seq_lens: Sequence[int],
    shard_tokens: int,
    pack: PackOptions,
    *,
    write_documents: bool = True,
    min_doc_tokens: dict[int, int] | None = None,
) -> dict[str, Any]:
    """Builds the plan from one index entry per document.

    Args:
      index: dicts with doc_id, file, line, chars, tokens (count), meta, spans.
      seq_lens: record lengths to pack to.
      shard_tokens: target tokens per shard file.
      pack: packing options; with a window, the bins are left for the distributed form.
      write_documents: also place every document in document shards.
      min_doc_tokens: per seq_len, pack only documents with at least this many tokens.

    Returns:
      A plain-data plan: `docs` (sorted by source), document shard placement, and per seq_len
      the eligible documents and (without a window) the bins and their shard ranges.
    """
    docs = sorted(index, key=lambda e: (e["file"], e["line"], e["doc_id"]))
    lengths = [e["tokens"] for e in docs]
    plan: dict[str, Any] = {"docs": docs, "write_documents": write_documents, "packed": {}}
    if write_documents:
        count, doc_shard = _document_shards(lengths, shard_tokens)
        local, per_shard = [], [0] * count
        for s in doc_shard:
            local.append(per_shard[s])
            per_shard[s] += 1
        plan.update(doc_shard_count=count, doc_shard=doc_shard, doc_local=local, doc_shard_lengths=per_shard)
    for seq_len in seq_lens:
        minimum = (min_doc_tokens or {}).get(seq_len, 0)
        entry = {
            "eligible": _eligible(docs, minimum),
            "min_doc_tokens": minimum,
            "documents_long_enough": sum(1 for n in lengths if n >= seq_len),
        }
        plan["packed"][seq_len] = entry
        if pack.window is None:
            bins, cuts = pack_documents(entry["eligible"], lengths, seq_len, pack.policy, _spans(docs), _shapes(docs))
            _finish_packed(entry, _bins_json(bins), cuts, seq_len, shard_tokens)
    return plan


def record_location(shard_starts: Sequence[int], record: int) -> tuple[int, int]:
    """(shard, index within shard) of global record `record`."""
    shard = bisect.bisect_right(shard_starts, record) - 1
    return shard, record - shard_starts[shard]


def iter_placements(plan: dict[str, Any]) -> Iterator[tuple[int, tuple]]:
    """Yields (doc_id, placement) for every place a document's tokens go.

    Placements: `(seq_len, shard, shard_count, record_in_shard, segment, offset, length, prefix)`,
    seq_len None for the document dataset; a document record has segment 0, offset 0, its full
    length and no prefix.
    """
    docs = plan["docs"]
    if plan["write_documents"]:
        for i, d in enumerate(docs):
            yield d["doc_id"], (None, plan["doc_shard"][i], plan["doc_shard_count"], plan["doc_local"][i], 0, 0, d["tokens"], 0)
    for seq_len, p in plan["packed"].items():
        for r, pieces in enumerate(p["bins"]):
            shard, local = record_location(p["shard_starts"], r)
            for j, (doc, offset, length, prefix) in enumerate(pieces):
                yield docs[doc]["doc_id"], (seq_len, shard, p["num_shards"], local, j, offset, length, prefix)
