"""Bin packing of documents into fixed-length records: cutting at allowed points, then best fit.

Cutting (`cuts.py`). A document may declare *atomic spans*, `[start, end)` token ranges that must
never be cut (a `<vision>...</vision>` field, a frame, a QA turn). A document longer than `seq_len`
is handled by its long-document policy, per example kind: text is split, an understanding example
keeps its tail, a generation example repeats its condition, a chat example is dropped (`by_kind`,
the default), or one of split, truncate, drop for every kind. A document with an atomic span longer
than seq_len cannot be placed and is dropped under every policy. Every cut, truncation, repeat and
drop is counted in the plan.

Packing. Pieces are placed largest first, each into the open record with the least room that still
fits it (best-fit decreasing), with ties broken by input order. Best fit leaves up to one piece's
length empty when pieces have similar lengths (image-text pairs), so the under-filled records are
then re-packed by a subset-sum fill and the result kept if it needs fewer records (`pack_window`). `window=None` packs all pieces at
once (the best fill); `window=W` packs consecutive groups of W documents independently, which is
what the online (Grain) packer does, so offline and online give identical records for the same
window and seed. A top-up pass then dissolves every window's under-filled records and packs their
pieces again together (the distributed form: windows in parallel, leftovers at the end). Windows
are consecutive runs of the (seeded) document order rather than length buckets: each window holds
the corpus's mix of long and short documents, which is what lets best fit close the gaps.

Example, seq_len 8, documents of lengths [5, 9, 3, 2], no spans, policy split:
    cut:   doc 1 -> pieces (offset 0, 8) and (offset 8, 1)
    bins:  [doc1[0:8]] [doc0[0:5], doc2[0:3]] [doc3[0:2], doc1[8:9]]
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from lwmkit.packing.cuts import (  # noqa: F401 - re-exported: bins is where packing's names were
    LONG_DOCUMENT_POLICIES,
    TEXT,
    CutStats,
    ExampleShape,
    LongDocumentPolicy,
    Piece,
    Span,
    cut_document,
)

@dataclass(frozen=True)
class PackPlan:
    """The result of packing: `bins[r]` lists the pieces of record r in their order in the record."""

    seq_len: int
    bins: tuple[tuple[Piece, ...], ...]
    cuts: CutStats

    @property
    def documents_cut(self) -> int:
        return self.cuts.documents_split

    @property
    def tokens(self) -> int:
        return sum(p.length for b in self.bins for p in b)

    @property
    def fill(self) -> float:
        """Share of record tokens that are not padding."""
        return self.tokens / (len(self.bins) * self.seq_len) if self.bins else 0.0


def cut_documents(
    lengths: Sequence[int],
    seq_len: int,
    spans: Sequence[Sequence[Span]] | None = None,
    policy: str | LongDocumentPolicy = "by_kind",
    shapes: Sequence[ExampleShape] | None = None,
) -> tuple[list[Piece], CutStats]:
    """Cuts every document (see `cut_document`); returns pieces in document order and the totals.

    Raises:
      ValueError: if seq_len < 1, a length is negative, spans are malformed or the policy unknown.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    pieces: list[Piece] = []
    total = CutStats()
    for doc, n in enumerate(lengths):
        p, s = cut_document(doc, int(n), seq_len, spans[doc] if spans is not None else (), policy,
                            shapes[doc] if shapes is not None else TEXT)
        pieces += p
        total.merge(s)
    return pieces, total


def best_fit_decreasing(pieces: Sequence[Piece], seq_len: int) -> list[list[Piece]]:
    """Packs pieces (each at most seq_len long) into as few bins as best-fit decreasing finds.

    Raises:
      ValueError: if a piece is longer than seq_len.
    """
    order = sorted(range(len(pieces)), key=lambda i: (-pieces[i].length, i))
    bins: list[list[Piece]] = []
    # Open bins as (room left, bin index), kept sorted: the first entry with room >= length is
    # the best fit, and the bin index breaks ties deterministically.
    open_bins: list[tuple[int, int]] = []
    for i in order:
        piece = pieces[i]
        if piece.length > seq_len:
            raise ValueError(f"piece {piece} is longer than seq_len {seq_len}")
        if piece.length == 0:
            continue
        j = bisect.bisect_left(open_bins, (piece.length, -1))
        if j < len(open_bins):
            room, b = open_bins.pop(j)
        else:
            room, b = seq_len, len(bins)
            bins.append([])
        bins[b].append(piece)
        room -= piece.length
        if room > 0:
            bisect.insort(open_bins, (room, b))
    return bins


def document_order(n: int, seed: int | None) -> np.ndarray:
    """The order documents are packed in: as given (seed None) or a seeded permutation."""
    if seed is None:
        return np.arange(n)
    return np.random.default_rng(seed).permutation(n)


def _fill_room(pool: dict[int, list[Piece]], room: int) -> list[Piece]:
    """The pieces from `pool` (length -> pieces) whose lengths sum closest to `room` without passing it.

    Bounded subset sum over the distinct lengths with Python integers as bitsets (bit t set: a sum
    of t is reachable). Lengths are tried most plentiful first and the search stops at an exact fit.
    Taken pieces are removed from the pool, lowest input order first.
    """
    mask = (1 << (room + 1)) - 1
    reach = 1
    steps: list[tuple[int, int, int]] = []  # (length, copies available, reach before)
    for length in sorted((n for n in pool if n <= room and pool[n]), key=lambda n: (-len(pool[n]), -n)):
        count = min(len(pool[length]), room // length)
        before = reach
        k = 1
        while count > 0:  # binary splitting: copies 1, 2, 4, ... cover every count
            take = min(k, count)
            reach |= (reach << (take * length)) & mask
            count -= take
            k <<= 1
        steps.append((length, min(len(pool[length]), room // length), before))
        if reach >> room & 1:
            break
    best = reach.bit_length() - 1
    chosen: list[Piece] = []
    target = best
    for length, available, before in reversed(steps):
        # Fewest copies of this length that leave a sum reachable without it.
        for copies in range(available + 1):
            if target - copies * length >= 0 and before >> (target - copies * length) & 1:
                break
        target -= copies * length
        chosen += pool[length][:copies]
        del pool[length][:copies]
    return chosen


def subset_sum_fill(pieces: Sequence[Piece], seq_len: int) -> list[list[Piece]]:
    """Packs pieces record by record: the largest piece left, then the subset that best fills the rest.

    Near-optimal when many pieces have similar lengths (image-text pairs, video clips), where best
    fit leaves up to one piece's length empty in most records.
    """
    pool: dict[int, list[Piece]] = {}
    for p in sorted(pieces, key=lambda p: (p.doc, p.offset)):
        pool.setdefault(p.length, []).append(p)
    lengths = sorted(pool, reverse=True)
    bins: list[list[Piece]] = []
    while lengths:
        while lengths and not pool[lengths[0]]:
            lengths.pop(0)
        if not lengths:
            break
        anchor = pool[lengths[0]].pop(0)
        # Largest first inside a record, as best fit places them.
        bins.append(sorted([anchor] + _fill_room(pool, seq_len - anchor.length), key=lambda p: -p.length))
    return bins


def pack_window(pieces: Sequence[Piece], seq_len: int, repair_below: float = 0.995) -> list[list[Piece]]:
    """Packs one window's pieces; the online and offline packers both call exactly this.

    Best-fit decreasing first; then the records filled below `repair_below` are dissolved and their
    pieces packed again with `subset_sum_fill`, which is kept only if it needs fewer records.
    """
    bins = best_fit_decreasing(pieces, seq_len)
    under = [b for b in bins if sum(p.length for p in b) < repair_below * seq_len]
    if len(under) < 2:
        return bins
    full = [b for b in bins if sum(p.length for p in b) >= repair_below * seq_len]
    repaired = subset_sum_fill([p for b in under for p in b], seq_len)
    return full + repaired if len(repaired) < len(under) else bins


def window_groups(n: int, window: int | None, seed: int | None) -> list[np.ndarray]:
    """The documents of each window, in packing order (all documents in one window if None)."""
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    order = document_order(n, seed)
    if window is None:
        return [order]
    return [order[start : start + window] for start in range(0, n, window)]


def pack_documents(
    docs: Sequence[int],
    lengths: Sequence[int] | Mapping[int, int],
    seq_len: int,
    policy: str | LongDocumentPolicy = "by_kind",
    spans: Sequence[Sequence[Span]] | Mapping[int, Sequence[Span]] | None = None,
    shapes: Sequence[ExampleShape] | Mapping[int, ExampleShape] | None = None,
) -> tuple[list[list[Piece]], CutStats]:
    """Cuts the given documents (keys into lengths/spans/shapes) and packs them as one window."""
    policy = LongDocumentPolicy.parse(policy)
    total = CutStats()
    pieces: list[Piece] = []
    for d in docs:
        d = int(d)
        p, s = cut_document(d, int(lengths[d]), seq_len, spans[d] if spans is not None else (), policy,
                            shapes[d] if shapes is not None else TEXT)
        pieces += p
        total.merge(s)
    return pack_window(pieces, seq_len), total


def top_up(bins: Sequence[Sequence[Piece]], seq_len: int, below: float = 0.99) -> list[list[Piece]]:
    """Keeps records filled to at least `below`, and packs the pieces of the others again together."""
    full = [list(b) for b in bins if sum(p.length for p in b) >= below * seq_len]
    rest = [p for b in bins if sum(p.length for p in b) < below * seq_len for p in b]
    return full + best_fit_decreasing(rest, seq_len)


def plan_packing(
    lengths: Sequence[int],
    seq_len: int,
    policy: str | LongDocumentPolicy = "by_kind",
    *,
    spans: Sequence[Sequence[Span]] | None = None,
    shapes: Sequence[ExampleShape] | None = None,
    window: int | None = None,
    top_up_below: float | None = None,
    seed: int | None = None,
) -> PackPlan:
    """Cuts and packs documents of the given token lengths into records of seq_len tokens.

    Args:
      lengths: token count of each document (its index is its id in the plan).
      seq_len: tokens per record.
      policy: long-document policy, one of LONG_DOCUMENT_POLICIES.
      spans: per document, sorted disjoint atomic spans `(start, end)` that must not be cut.
      shapes: per document, its kind, prefix and frames (None: every document is text).
      window: documents packed together (None: all at once).
      top_up_below: after packing the windows, re-pack together the pieces of every record filled
        below this share (None: no top-up pass).
      seed: shuffle the document order first (None keeps the given order).

    Returns:
      The plan; every token of every placed document appears in exactly one piece of one bin.
    """
    total = CutStats()
    bins: list[list[Piece]] = []
    for docs in window_groups(len(lengths), window, seed):
        b, cuts = pack_documents(docs, lengths, seq_len, policy, spans, shapes)
        bins += b
        total.merge(cuts)
    if top_up_below is not None:
        bins = top_up(bins, seq_len, top_up_below)
    return PackPlan(seq_len=seq_len, bins=tuple(tuple(b) for b in bins), cuts=total)
