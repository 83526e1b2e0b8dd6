"""Laying out a bin's segments as one packed record."""

from __future__ import annotations

import numpy as np
import pytest
from lwmkit.packing.assemble import PAD_ID, Segment, assemble_packed
from lwmkit.packing.records import check_packed, decode_record, encode_packed


def _seg(doc_id, tokens, weights=None, vision=None, offset=0) -> Segment:
    tokens = np.asarray(tokens, np.int32)
    n = tokens.shape[0]
    return Segment(
        doc_id=doc_id,
        offset=offset,
        tokens=tokens,
        vision_mask=np.zeros(n, bool) if vision is None else np.asarray(vision, bool),
        loss_weights=np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32),
    )


def test_docstring_example():
    out = assemble_packed(
        [_seg(11, [1, 5, 2], weights=[0, 1, 1]), _seg(22, [1, 9], weights=[0, 1], offset=7)], 6
    )
    np.testing.assert_array_equal(out["tokens"], [1, 5, 2, 1, 9, 0])
    np.testing.assert_array_equal(out["tokens_segment_ids"], [1, 1, 1, 2, 2, 0])
    np.testing.assert_array_equal(out["tokens_positions"], [0, 1, 2, 0, 1, 0])
    np.testing.assert_array_equal(out["loss_weights"], [0, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(out["vision_mask"], [False] * 6)
    np.testing.assert_array_equal(out["segment_doc_ids"], [11, 22])
    np.testing.assert_array_equal(out["segment_offsets"], [0, 7])
    np.testing.assert_array_equal(out["segment_lengths"], [3, 2])


def test_dtypes_and_shapes():
    out = assemble_packed([_seg(1, [4, 5])], 5)
    expected = {
        "tokens": np.int32,
        "vision_mask": np.bool_,
        "loss_weights": np.float32,
        "tokens_segment_ids": np.int32,
        "tokens_positions": np.int32,
        "segment_doc_ids": np.int64,
        "segment_offsets": np.int64,
        "segment_lengths": np.int32,
        "segment_prefix_lengths": np.int32,
    }
    assert set(out) == set(expected)
    for name, dtype in expected.items():
        assert out[name].dtype == dtype, name
        assert out[name].shape == ((5,) if not name.startswith("segment_") else (1,)), name


def test_padding_fills_the_rest():
    out = assemble_packed([_seg(1, [7, 8, 9], weights=[0.5, 2, 3], vision=[1, 1, 0])], 8)
    np.testing.assert_array_equal(out["tokens"][3:], [PAD_ID] * 5)
    np.testing.assert_array_equal(out["tokens_segment_ids"][3:], [0] * 5)
    np.testing.assert_array_equal(out["tokens_positions"][3:], [0] * 5)
    np.testing.assert_array_equal(out["loss_weights"], [0.5, 2, 3, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["vision_mask"], [1, 1, 0, 0, 0, 0, 0, 0])
    assert check_packed(out, 8) == []


def test_no_segments_is_all_padding():
    out = assemble_packed([], 4)
    np.testing.assert_array_equal(out["tokens"], [PAD_ID] * 4)
    np.testing.assert_array_equal(out["loss_weights"], [0] * 4)
    assert out["segment_lengths"].shape == (0,)
    assert check_packed(out, 4) == []


def test_exactly_full():
    out = assemble_packed([_seg(1, [1, 2]), _seg(2, [3, 4, 5])], 5)
    np.testing.assert_array_equal(out["tokens_segment_ids"], [1, 1, 2, 2, 2])
    np.testing.assert_array_equal(out["tokens_positions"], [0, 1, 0, 1, 2])


def test_piece_of_a_cut_document_restarts_positions():
    out = assemble_packed([_seg(3, [10, 11], offset=8)], 4)
    np.testing.assert_array_equal(out["tokens_positions"], [0, 1, 0, 0])
    np.testing.assert_array_equal(out["segment_offsets"], [8])


def test_result_encodes_and_passes_check_packed():
    out = assemble_packed([_seg(1, [1, 2, 3], weights=[0, 1, 1]), _seg(2, [4], vision=[True])], 6)
    rec = decode_record(encode_packed(out, 6))
    assert check_packed(rec, 6) == []
    for name, value in out.items():
        np.testing.assert_array_equal(rec[name], value, err_msg=name)


def test_too_many_tokens_raises():
    with pytest.raises(ValueError, match="segments hold 7 tokens, more than seq_len 6"):
        assemble_packed([_seg(1, [1, 2, 3, 4]), _seg(2, [5, 6, 7])], 6)


def test_field_lengths_must_agree():
    bad = Segment(1, 0, np.array([1, 2], np.int32), np.zeros(3, bool), np.ones(2, np.float32))
    with pytest.raises(ValueError, match="segment 0 of doc 1"):
        assemble_packed([bad], 4)
    bad = Segment(2, 0, np.array([1, 2], np.int32), np.zeros(2, bool), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="segment 1 of doc 2"):
        assemble_packed([_seg(1, [9]), bad], 4)
