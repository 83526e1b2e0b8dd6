"""Bin packing of document pieces into fixed-length records (best-fit decreasing).

A document longer than `seq_len` is first cut into `seq_len`-token pieces (the `split` policy; the
last piece keeps the remainder). Pieces are then placed largest first, each into the open record
with the least room that still fits it, opening a new record when none does. Ties break on the
input order, so the same lengths always give the same plan.

Example, seq_len 8, documents of lengths [5, 9, 3, 2]:
    cut:   doc 1 -> pieces (offset 0, 8) and (offset 8, 1)
    bins:  [doc1[0:8]] [doc0[0:5], doc2[0:3]] [doc3[0:2], doc1[8:9]]
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

LONG_DOCUMENT_POLICIES = ("split",)


@dataclass(frozen=True, order=True)
class Piece:
    """A contiguous run of one document's tokens: `tokens[offset:offset + length]` of doc `doc`."""

    doc: int
    offset: int
    length: int


@dataclass(frozen=True)
class PackPlan:
    """The result of packing: `bins[r]` lists the pieces of record r in their order in the record."""

    seq_len: int
    bins: tuple[tuple[Piece, ...], ...]
    documents_cut: int

    @property
    def tokens(self) -> int:
        return sum(p.length for b in self.bins for p in b)

    @property
    def fill(self) -> float:
        """Share of record tokens that are not padding."""
        return self.tokens / (len(self.bins) * self.seq_len) if self.bins else 0.0


def cut_documents(lengths: Sequence[int], seq_len: int) -> tuple[list[Piece], int]:
    """Cuts each document into pieces of at most `seq_len` tokens.

    Returns:
      (pieces in document order, number of documents that were cut).

    Raises:
      ValueError: if seq_len < 1 or a length is negative.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    pieces: list[Piece] = []
    cut = 0
    for doc, n in enumerate(lengths):
        if n < 0:
            raise ValueError(f"document {doc} has negative length {n}")
        if n > seq_len:
            cut += 1
        for offset in range(0, n, seq_len):
            pieces.append(Piece(doc, offset, min(seq_len, n - offset)))
    return pieces, cut


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


def plan_packing(lengths: Sequence[int], seq_len: int, policy: str = "split") -> PackPlan:
    """Cuts and packs documents of the given token lengths into records of seq_len tokens.

    Args:
      lengths: token count of each document, in a fixed (deterministic) order.
      seq_len: tokens per record.
      policy: what to do with documents longer than seq_len; only "split" in this version.

    Returns:
      The plan; every token of every document appears in exactly one piece of one bin.
    """
    if policy not in LONG_DOCUMENT_POLICIES:
        raise ValueError(f"policy must be one of {list(LONG_DOCUMENT_POLICIES)}, got {policy!r}")
    pieces, cut = cut_documents(lengths, seq_len)
    bins = best_fit_decreasing(pieces, seq_len)
    return PackPlan(seq_len=seq_len, bins=tuple(tuple(b) for b in bins), documents_cut=cut)
