import numpy as np
import pytest
from lwmkit.pipelines.dedup.sketch import (
    Duplicate,
    Sketch,
    SketchMismatch,
    decode_sketch,
    encode_sketch,
)


def test_text_sketch_round_trips_exactly():
    s = Sketch("book-7", 120_000, np.arange(128, dtype=np.uint32) * 7919)
    back = decode_sketch(encode_sketch(s, "text", "ab12"), "text", "ab12")
    assert back.key == "book-7" and back.size == 120_000 and back.mask is None
    assert back.values.dtype == np.uint32 and np.array_equal(back.values, s.values)


def test_video_sketch_keeps_mask_and_step():
    s = Sketch("clip.mp4", 4533, np.array([2**64 - 1, 0, 12345], dtype=np.uint64), np.array([True, False, True]), 500)
    back = decode_sketch(encode_sketch(s, "video", "f"), "video", "f")
    assert back.same(s) and back.step_ms == 500 and back.mask.tolist() == [True, False, True]
    assert back.values[0] == 2**64 - 1


def test_other_parameters_or_kind_ask_for_a_recompute():
    data = encode_sketch(Sketch("b", 1, np.zeros(4, dtype=np.uint32)), "text", "aaaa")
    with pytest.raises(SketchMismatch, match="'b' was made with parameters aaaa, expected bbbb"):
        decode_sketch(data, "text", "bbbb")
    with pytest.raises(SketchMismatch, match="is a 'text' sketch, expected 'image'"):
        decode_sketch(data, "image", "aaaa")
    with pytest.raises(SketchMismatch, match="not a sketch"):
        decode_sketch(b"\x80\x04K\x01.", "text", "aaaa")  # a pickle is refused, never loaded


def test_truncated_bytes_name_the_key():
    data = encode_sketch(Sketch("b9", 1, np.zeros(16, dtype=np.uint32)), "text", "a")
    with pytest.raises(ValueError, match="sketch of 'b9' has .* bytes, expected"):
        decode_sketch(data[:-3], "text", "a")


def test_invalid_sketches_are_refused():
    with pytest.raises(ValueError, match="key must be a non-empty string"):
        Sketch("", 1, np.zeros(2, dtype=np.uint32))
    with pytest.raises(ValueError, match="dtype float64"):
        Sketch("a", 1, np.zeros(2))
    with pytest.raises(ValueError, match="mask of 'a' has shape"):
        Sketch("a", 1, np.zeros(2, dtype=np.uint64), np.ones(3, dtype=bool))


def test_duplicate_detail_names_the_twin():
    d = Duplicate("b.jsonl:3", "a.jsonl:1", 0.91234, 2)
    assert d.detail() == "near copy of a.jsonl:1 (similarity 0.912, cluster of 2)"
    assert d.to_json() == {"key": "b.jsonl:3", "kept": "a.jsonl:1", "similarity": 0.91234, "cluster_size": 2}
