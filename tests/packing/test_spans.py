"""Cutting with atomic spans and long-document policies, as properties over random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lwmkit.packing.assemble import Segment, assemble_packed
from lwmkit.packing.bins import cut_document, plan_packing
from lwmkit.packing.loss import LossPolicy
from lwmkit.packing.records import check_packed


@st.composite
def documents(draw):
    """Documents made of text runs and atomic spans (frames or whole fields), plus a seq_len."""
    seq_len = draw(st.integers(8, 64))
    docs = []
    for _ in range(draw(st.integers(1, 12))):
        n, spans = 0, []
        for _ in range(draw(st.integers(1, 8))):
            if draw(st.booleans()):
                n += draw(st.integers(0, 10))  # text: cuttable anywhere
            else:
                size = draw(st.integers(1, seq_len + 3))  # may exceed seq_len: unplaceable
                spans.append((n, n + size))
                n += size
        docs.append((n, spans))
    return seq_len, docs


def _inside_span(cut: int, spans) -> bool:
    return any(a < cut < b for a, b in spans)


@settings(max_examples=200, deadline=None)
@given(documents(), st.sampled_from(["split", "truncate", "drop"]), st.sampled_from([None, 1, 3]), st.sampled_from([None, 0, 7]))
def test_cuts_respect_spans_and_every_token_lands_once(case, policy, window, seed):
    seq_len, docs = case
    lengths = [n for n, _ in docs]
    spans = [s for _, s in docs]
    plan = plan_packing(lengths, seq_len, policy, spans=spans, window=window, seed=seed)
    assert plan == plan_packing(lengths, seq_len, policy, spans=spans, window=window, seed=seed)
    covered = {d: [] for d in range(len(docs))}
    for b in plan.bins:
        assert 0 < sum(p.length for p in b) <= seq_len  # no segment crosses a record
        for p in b:
            covered[p.doc].append((p.offset, p.length))
    dropped = {d for d, _, _ in plan.cuts.dropped}
    tokens_dropped = 0
    for d, (n, sp) in enumerate(docs):
        pieces = sorted(covered[d])
        for offset, length in pieces:
            assert not _inside_span(offset, sp) and not _inside_span(offset + length, sp)  # no span cut
        if d in dropped:
            assert pieces == [] and (policy == "drop" and n > seq_len or any(b - a > seq_len for a, b in sp))
            tokens_dropped += n
            continue
        starts = [o for o, _ in pieces]
        ends = [o + ln for o, ln in pieces]
        assert starts[:1] == [0] or n == 0
        assert starts[1:] == ends[:-1]  # contiguous, nothing lands twice
        if policy == "truncate":
            assert len(pieces) <= 1
            tokens_dropped += n - (ends[-1] if ends else 0)
        else:
            assert (ends[-1] if ends else 0) == n  # every token lands
    assert plan.cuts.tokens_dropped == tokens_dropped


def test_split_cuts_before_a_frame_not_inside_it():
    # 3 text tokens then three 4-token frames; seq_len 6 can hold one frame plus the text.
    spans = [(3, 7), (7, 11), (11, 15)]
    pieces, stats = cut_document(0, 15, 6, spans, "split")
    assert [(p.offset, p.length) for p in pieces] == [(0, 3), (3, 4), (7, 4), (11, 4)]
    assert stats.documents_split == 1


def test_a_span_longer_than_seq_len_drops_the_document_under_every_policy():
    for policy in ("split", "truncate", "drop"):
        pieces, stats = cut_document(5, 20, 8, [(2, 12)], policy)
        assert pieces == [] and stats.documents_dropped == 1 and stats.tokens_dropped == 20
        assert stats.dropped[0][:2] == (5, "atomic_span_too_long")


def test_malformed_spans_raise():
    with pytest.raises(ValueError, match="atomic spans"):
        cut_document(0, 10, 4, [(3, 2)])
    with pytest.raises(ValueError, match="atomic spans"):
        cut_document(0, 10, 4, [(0, 3), (2, 5)])


@settings(max_examples=80, deadline=None)
@given(documents(), st.sampled_from(["restart", "continue"]), st.sampled_from(["as_is", "per_document", "lwm_balance"]))
def test_assembled_records_are_consistent(case, piece_positions, loss_spec):
    seq_len, docs = case
    rng = np.random.default_rng(len(docs))
    arrays = []
    for n, spans in docs:
        vision = np.zeros(n, bool)
        for a, b in spans:
            vision[a:b] = True
        arrays.append((rng.integers(3, 100, n).astype(np.int32), vision, rng.uniform(0, 1, n).astype(np.float32)))
    plan = plan_packing([n for n, _ in docs], seq_len, "split", spans=[s for _, s in docs])
    policy = LossPolicy.parse(loss_spec)
    for b in plan.bins:
        segs = [Segment(p.doc, p.offset, *(a[p.offset : p.offset + p.length] for a in arrays[p.doc])) for p in b]
        rec = assemble_packed(segs, seq_len, piece_positions=piece_positions, loss_policy=policy)
        assert check_packed(rec, seq_len, piece_positions) == []
        raw = np.zeros(seq_len, np.float32)
        raw[: sum(p.length for p in b)] = np.concatenate([s.loss_weights for s in segs])
        expected = policy.apply(raw, rec["vision_mask"], rec["tokens_segment_ids"])
        assert np.array_equal(rec["loss_weights"], expected)  # the named policy, nothing else


def test_subset_sum_repair_fills_similar_sized_pieces_better_than_best_fit():
    from lwmkit.packing.bins import Piece, best_fit_decreasing, pack_window, subset_sum_fill

    rng = np.random.default_rng(0)
    pieces = [Piece(i, 0, int(n)) for i, n in enumerate(rng.integers(272, 325, 600))]  # image-text pairs
    bfd = best_fit_decreasing(pieces, 4096)
    ours = pack_window(pieces, 4096)
    assert len(ours) < len(bfd)
    total = sum(p.length for p in pieces)
    assert total / (len(ours) * 4096) > 0.99 > total / (len(bfd) * 4096)
    placed = sorted(p for b in ours for p in b)
    assert placed == sorted(pieces)  # every piece exactly once
    assert all(sum(p.length for p in b) <= 4096 for b in ours)
    assert subset_sum_fill(pieces, 4096) == subset_sum_fill(list(reversed(pieces)), 4096)  # input order does not matter


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=0, max_size=60), st.integers(40, 120))
def test_subset_sum_fill_places_every_piece_once(lengths, seq_len):
    from lwmkit.packing.bins import Piece, subset_sum_fill

    pieces = [Piece(i, 0, n) for i, n in enumerate(lengths)]
    bins = subset_sum_fill(pieces, seq_len)
    assert sorted(p for b in bins for p in b) == sorted(pieces)
    assert all(0 < sum(p.length for p in b) <= seq_len for b in bins)
