"""Cutting and best-fit-decreasing packing of documents into seq_len records."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lwmkit.packing.bins import (
    CutStats,
    PackPlan,
    Piece,
    best_fit_decreasing,
    cut_documents,
    plan_packing,
)

LENGTHS = st.lists(st.integers(min_value=0, max_value=60), max_size=40)
SEQ_LEN = st.integers(min_value=1, max_value=24)


def _pieces_by_doc(plan: PackPlan) -> dict[int, list[Piece]]:
    by_doc: dict[int, list[Piece]] = {}
    for bin_ in plan.bins:
        for p in bin_:
            by_doc.setdefault(p.doc, []).append(p)
    return by_doc


@settings(max_examples=200, deadline=None)
@given(LENGTHS, SEQ_LEN)
def test_every_token_lands_exactly_once(lengths, seq_len):
    plan = plan_packing(lengths, seq_len)
    coverage = [[0] * n for n in lengths]
    for bin_ in plan.bins:
        for p in bin_:
            assert 0 <= p.doc < len(lengths)
            for t in range(p.offset, p.offset + p.length):
                coverage[p.doc][t] += 1
    assert all(c == 1 for doc in coverage for c in doc)
    assert plan.tokens == sum(lengths)


@settings(max_examples=200, deadline=None)
@given(LENGTHS, SEQ_LEN)
def test_bins_fit_and_hold_no_empty_pieces(lengths, seq_len):
    plan = plan_packing(lengths, seq_len)
    assert plan.seq_len == seq_len
    for bin_ in plan.bins:
        assert bin_, "no empty bins"
        assert sum(p.length for p in bin_) <= seq_len
        assert all(1 <= p.length <= seq_len for p in bin_)
    if plan.bins:
        assert 0 < plan.fill <= 1
        assert plan.fill == plan.tokens / (len(plan.bins) * seq_len)


@settings(max_examples=200, deadline=None)
@given(LENGTHS, SEQ_LEN)
def test_pieces_of_a_document_are_contiguous_and_cover_it(lengths, seq_len):
    by_doc = _pieces_by_doc(plan_packing(lengths, seq_len))
    for doc, n in enumerate(lengths):
        pieces = sorted(by_doc.get(doc, []), key=lambda p: p.offset)
        expected_start = 0
        for p in pieces:
            assert p.offset == expected_start  # no gap, no overlap
            expected_start = p.offset + p.length
        assert expected_start == n
        # The split policy: full seq_len pieces, the last one keeps the remainder.
        assert all(p.length == seq_len for p in pieces[:-1])
        assert len(pieces) == -(-n // seq_len)


@settings(max_examples=200, deadline=None)
@given(LENGTHS, SEQ_LEN)
def test_documents_cut_counts_long_documents(lengths, seq_len):
    plan = plan_packing(lengths, seq_len)
    assert plan.documents_cut == sum(n > seq_len for n in lengths)
    by_doc = _pieces_by_doc(plan)
    assert plan.documents_cut == sum(len(ps) > 1 for ps in by_doc.values())


@settings(max_examples=100, deadline=None)
@given(LENGTHS, SEQ_LEN)
def test_same_input_same_plan(lengths, seq_len):
    assert plan_packing(lengths, seq_len) == plan_packing(list(lengths), seq_len)


@settings(max_examples=200, deadline=None)
@given(LENGTHS, SEQ_LEN)
def test_no_two_bins_could_be_merged(lengths, seq_len):
    """Best fit only opens a bin when the piece fits nowhere, so any two bins overflow together."""
    fills = [sum(p.length for p in b) for b in plan_packing(lengths, seq_len).bins]
    for a, b in itertools.combinations(fills, 2):
        assert a + b > seq_len
    assert len(fills) >= -(-sum(lengths) // seq_len)


@settings(max_examples=200, deadline=None)
@given(LENGTHS, SEQ_LEN)
def test_pieces_are_placed_largest_first(lengths, seq_len):
    """Within a bin pieces sit in placement order, which is non-increasing length."""
    for bin_ in plan_packing(lengths, seq_len).bins:
        sizes = [p.length for p in bin_]
        assert sizes == sorted(sizes, reverse=True)


def test_docstring_example():
    plan = plan_packing([5, 9, 3, 2], 8)
    assert plan.bins == (
        (Piece(1, 0, 8),),
        (Piece(0, 0, 5), Piece(2, 0, 3)),
        (Piece(3, 0, 2), Piece(1, 8, 1)),
    )
    assert plan.documents_cut == 1
    assert plan.tokens == 19
    assert plan.fill == 19 / 24


def test_cut_documents_docstring_example():
    pieces, cut = cut_documents([5, 9, 3, 2], 8)
    assert pieces == [
        Piece(0, 0, 5),
        Piece(1, 0, 8),
        Piece(1, 8, 1),
        Piece(2, 0, 3),
        Piece(3, 0, 2),
    ]
    assert cut.documents_split == 1


def test_best_fit_not_first_fit():
    # seq_len 10: 7 opens bin 0 (room 3), 4 opens bin 1 (room 6), 4 goes to bin 1 (room 2).
    # The last piece, 2, fits both; best fit picks bin 1 (room 2), first fit would pick bin 0.
    plan = plan_packing([7, 4, 4, 2], 10)
    assert plan.bins == ((Piece(0, 0, 7),), (Piece(1, 0, 4), Piece(2, 0, 4), Piece(3, 0, 2)))


def test_ties_break_on_input_order():
    plan = plan_packing([3, 3, 3, 3], 6)
    assert plan.bins == ((Piece(0, 0, 3), Piece(1, 0, 3)), (Piece(2, 0, 3), Piece(3, 0, 3)))
    # Equal rooms: the lower bin index wins.
    plan = plan_packing([4, 4, 1], 5)
    assert plan.bins == ((Piece(0, 0, 4), Piece(2, 0, 1)), (Piece(1, 0, 4),))


def test_empty_and_zero_length_documents():
    assert plan_packing([], 4) == PackPlan(seq_len=4, bins=(), cuts=CutStats())
    assert plan_packing([], 4).fill == 0.0
    plan = plan_packing([0, 2, 0], 4)
    assert plan.bins == ((Piece(1, 0, 2),),)
    assert best_fit_decreasing([Piece(0, 0, 0)], 4) == []


def test_exact_multiple_is_not_cut_into_an_empty_piece():
    pieces, cut = cut_documents([8, 16], 8)
    assert pieces == [Piece(0, 0, 8), Piece(1, 0, 8), Piece(1, 8, 8)]
    assert cut.documents_split == 1  # only the 16-token document is longer than seq_len


@pytest.mark.parametrize("seq_len", [0, -3])
def test_seq_len_below_one_raises(seq_len):
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        plan_packing([1, 2], seq_len)
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        cut_documents([1, 2], seq_len)


def test_negative_length_raises():
    with pytest.raises(ValueError, match="document 1 has negative length -1"):
        plan_packing([3, -1], 8)


def test_unknown_policy_raises():
    with pytest.raises(ValueError, match="long-document policy .shorten. is not one of"):
        plan_packing([3], 8, policy="shorten")


def test_piece_longer_than_seq_len_raises():
    with pytest.raises(ValueError, match="longer than seq_len"):
        best_fit_decreasing([Piece(0, 0, 9)], 8)
