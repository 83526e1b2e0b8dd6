"""Cutting an example by its kind: keep_tail, repeat_condition, drop, and the policy names."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lwmkit.packing.bins import plan_packing
from lwmkit.packing.cuts import (
    BY_KIND,
    ExampleShape,
    LongDocumentPolicy,
    Piece,
    cut_document,
    infer_shape,
)


def _video(prefix: int, frame_lengths: list[int], tail: int) -> tuple[int, list[tuple[int, int]]]:
    """(n, spans) of an example: `prefix` tokens, frames back to back (the first span reaching back
    over the last 2 prefix tokens, like "<vision>"), then `tail` tokens."""
    spans, at = [], prefix
    for n in frame_lengths:
        spans.append((at, at + n))
        at += n
    spans[0] = (max(0, prefix - 2), spans[0][1])
    return at + tail, spans


def _tokens(p: Piece) -> list[int]:
    body = p.length - p.prefix
    return list(range(p.prefix)) + list(range(p.offset, p.offset + body))


def test_docstring_examples():
    spans = [(1, 7), (7, 11), (11, 15)]
    pieces, stats = cut_document(0, 16, 10, spans, "by_kind", ExampleShape("generation", 3, 3))
    assert pieces == [Piece(0, 0, 7), Piece(0, 7, 7, 3), Piece(0, 11, 8, 3)]
    assert stats.condition_tokens_repeated == 6 and stats.documents_condition_repeated == 1
    pieces, stats = cut_document(0, 16, 10, spans, "by_kind", ExampleShape("understanding", 3, 3))
    assert pieces == [Piece(0, 11, 8, 3)]
    assert (stats.frames_dropped, stats.documents_tail_kept, stats.tokens_dropped) == (2, 1, 8)


FRAMES = st.lists(st.integers(min_value=2, max_value=12), min_size=1, max_size=12)
VIDEOS = given(prefix=st.integers(min_value=3, max_value=10), frames=FRAMES, tail=st.integers(min_value=1, max_value=8),
               seq_len=st.integers(min_value=8, max_value=60))


@settings(max_examples=300, deadline=None)
@VIDEOS
def test_repeat_condition_keeps_the_condition_before_every_frame(prefix, frames, tail, seq_len):
    n, spans = _video(prefix, frames, tail)
    pieces, stats = cut_document(0, n, seq_len, spans, "by_kind", ExampleShape("generation", prefix, len(frames)))
    if not pieces:
        assert stats.documents_dropped == 1 and stats.dropped[0][1] in ("frame_too_long", "atomic_span_too_long")
        bounds = [a for a, _ in spans[1:]] + [n]
        assert (max(b - a for a, b in spans) > seq_len or bounds[0] > seq_len
                or max(prefix + e - a for a, e in zip(bounds, bounds[1:])) > seq_len)
        return
    starts = {a for a, _ in spans[1:]}
    covered = []
    for i, p in enumerate(pieces):
        assert p.length <= seq_len
        if i == 0:
            assert (p.offset, p.prefix) == (0, 0)
        else:
            assert p.prefix == prefix and p.offset in starts  # cut between frames, condition first
        covered += _tokens(p)[p.prefix :] if i else _tokens(p)
    assert covered == list(range(n))  # every token once, besides the repeats
    assert stats.condition_tokens_repeated == prefix * (len(pieces) - 1)


@settings(max_examples=300, deadline=None)
@VIDEOS
def test_keep_tail_keeps_the_prefix_a_frame_and_the_whole_tail(prefix, frames, tail, seq_len):
    n, spans = _video(prefix, frames, tail)
    pieces, stats = cut_document(0, n, seq_len, spans, "by_kind", ExampleShape("understanding", prefix, len(frames)))
    if n <= seq_len:
        assert pieces == [Piece(0, 0, n)]
        return
    if not pieces:
        assert stats.dropped[0][1] in ("tail_too_long", "atomic_span_too_long")
        last = spans[-1]
        assert prefix + (n - last[0]) > seq_len or max(b - a for a, b in spans) > seq_len
        return
    (p,) = pieces
    assert p.prefix == prefix and p.length <= seq_len and p.offset + p.length - p.prefix == n
    assert p.offset in {a for a, _ in spans[1:]}  # whole frames dropped, at least one kept
    assert stats.frames_dropped == sum(1 for _, e in spans if e <= p.offset)
    # the tail is the shortest that fits: one more frame would not
    earlier = [a for a, _ in spans if a < p.offset and a >= prefix]
    if earlier:
        assert prefix + n - max(earlier) > seq_len


def test_chat_is_dropped_by_default_and_kept_by_tail_when_asked():
    n, spans = _video(5, [10, 10, 10], 8)
    shape = ExampleShape("chat", 5, 3)
    pieces, stats = cut_document(7, n, 30, spans, "by_kind", shape)
    assert pieces == [] and stats.dropped[0][:2] == (7, "too_long") and "chat" in stats.dropped[0][2]
    pieces, _ = cut_document(7, n, 30, spans, "by_kind:chat=keep_tail", shape)
    assert pieces == [Piece(7, 25, 5 + n - 25, 5)]


def test_text_is_split_under_by_kind_exactly_as_before():
    lengths = [5, 9, 3, 2, 40]
    assert plan_packing(lengths, 8, "by_kind") == plan_packing(lengths, 8, "split")


def test_split_truncate_drop_apply_to_every_kind():
    n, spans = _video(4, [6, 6, 6], 3)
    for kind in ("understanding", "generation", "chat"):
        shape = ExampleShape(kind, 4, 3)
        split, _ = cut_document(0, n, 12, spans, "split", shape)
        assert all(p.prefix == 0 for p in split) and sum(p.length for p in split) == n
        (first,), s = cut_document(0, n, 12, spans, "truncate", shape)
        assert first.offset == 0 and s.documents_truncated == 1
        assert cut_document(0, n, 12, spans, "drop", shape)[0] == []


@pytest.mark.parametrize("spec, canonical", [
    ("by_kind", "by_kind"), ("split", "split"), ("drop", "drop"),
    ("by_kind:chat=keep_tail", "by_kind:chat=keep_tail"),
    ("by_kind:chat=drop,understanding=drop", "by_kind:understanding=drop"),
    ("by_kind:text=split,understanding=split,generation=split,chat=split", "split"),
])
def test_policy_names_are_canonical(spec, canonical):
    assert LongDocumentPolicy.parse(spec).spec == canonical
    assert LongDocumentPolicy.parse(canonical) == LongDocumentPolicy.parse(spec)


@pytest.mark.parametrize("spec, match", [
    ("shorten", "not one of"), ("by_kind:generation=keep_tail", "generation examples take one of"),
    ("by_kind:text=repeat_condition", "text examples take one of"), ("by_kind:audio=drop", "kinds"),
    ("by_kind:chat", "not kind=action"), ("split:chat=drop", "not one of"),
])
def test_bad_policies_name_the_problem(spec, match):
    with pytest.raises(ValueError, match=match):
        LongDocumentPolicy.parse(spec)


def test_by_kind_defaults_are_the_documented_ones():
    assert BY_KIND == {"text": "split", "understanding": "keep_tail", "generation": "repeat_condition", "chat": "drop"}


def test_infer_shape_reads_a_v1_record():
    vision = np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 0], bool)
    spans = [(1, 5), (5, 8)]
    understanding = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1], np.float32)
    assert infer_shape(vision, understanding, spans) == ExampleShape("understanding", 3, 2)
    generation = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1], np.float32)
    assert infer_shape(vision, generation, spans) == ExampleShape("generation", 3, 2)
    assert infer_shape(np.zeros(4, bool), np.ones(4, np.float32), []) == ExampleShape("text", 0, 0)
    assert infer_shape(vision, understanding, spans, "chat", 2) == ExampleShape("chat", 2, 2)


def test_a_shape_that_does_not_fit_is_an_error():
    with pytest.raises(ValueError, match="does not fit"):
        cut_document(0, 10, 4, [(0, 2)], "by_kind", ExampleShape("generation", 3, 2))
    with pytest.raises(ValueError, match="example kind"):
        ExampleShape("audio")
