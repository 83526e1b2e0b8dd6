"""Document and packed records: encode/decode, validation, ids and the TFDS features.json."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tensorflow_datasets as tfds
from lwmkit.packing.records import (
    DOC_ID_MASK,
    DOCUMENT_FORMAT,
    PACKED_FORMAT,
    PACKED_TOKEN_FIELDS,
    SEGMENT_FIELDS,
    TOKEN_FIELDS,
    RecordError,
    check_packed,
    decode_record,
    document_id,
    encode_document,
    encode_packed,
    tfds_features_json,
)
from lwmkit.packing.wire import decode_example, encode_example


def _docstring_packed() -> dict[str, np.ndarray]:
    """The module docstring's example: [1, 5, 6, 2] and [1, 7, 2] packed into seq_len 8."""
    return {
        "tokens": np.array([1, 5, 6, 2, 1, 7, 2, 0]),
        "vision_mask": np.array([0, 0, 1, 1, 0, 0, 0, 0], bool),
        "loss_weights": np.array([0, 1, 1, 1, 0, 1, 1, 0], np.float32),
        "tokens_segment_ids": np.array([1, 1, 1, 1, 2, 2, 2, 0]),
        "tokens_positions": np.array([0, 1, 2, 3, 0, 1, 2, 0]),
        "segment_doc_ids": np.array([DOC_ID_MASK, 17]),
        "segment_offsets": np.array([0, 4096]),
        "segment_lengths": np.array([4, 3]),
        "segment_prefix_lengths": np.array([0, 0]),
    }


def _raw_packed_features(fields: dict) -> dict[str, list]:
    feats: dict[str, list] = {"format": [PACKED_FORMAT.encode()]}
    for name, (dtype, _, _) in {**PACKED_TOKEN_FIELDS, **SEGMENT_FIELDS}.items():
        feats[name] = [np.asarray(fields[name]).astype(dtype).tobytes()]
    return feats


# ---------------------------------------------------------------------------------------------
# documents


def test_document_round_trip():
    tokens = np.array([1, 2**31 - 1, -7, 65536])
    blob = encode_document(
        doc_id=DOC_ID_MASK,
        source_file="books/ünïcode.jsonl",
        source_line=12,
        tokens=tokens,
        vision_mask=[False, True, True, False],
        loss_weights=[0.0, 0.5, 1.0, 2.0],
    )
    rec = decode_record(blob)
    assert rec["format"] == DOCUMENT_FORMAT
    assert rec["doc_id"] == DOC_ID_MASK
    assert rec["source_file"] == "books/ünïcode.jsonl"
    assert rec["source_line"] == 12
    assert set(rec) == {"format", "doc_id", "source_file", "source_line", "atomic_spans", "example_kind", "prefix_length", *TOKEN_FIELDS}
    for name, (dtype, _, _) in TOKEN_FIELDS.items():
        assert rec[name].dtype == np.dtype(dtype)
        assert not rec[name].flags.writeable
    np.testing.assert_array_equal(rec["tokens"], tokens)
    np.testing.assert_array_equal(rec["vision_mask"], [False, True, True, False])
    np.testing.assert_array_equal(rec["loss_weights"], [0.0, 0.5, 1.0, 2.0])


def test_document_defaults_are_text_with_unit_weights():
    rec = decode_record(encode_document(doc_id=1, source_file="a", source_line=1, tokens=[3, 4, 5]))
    np.testing.assert_array_equal(rec["vision_mask"], [False] * 3)
    np.testing.assert_array_equal(rec["loss_weights"], [1.0] * 3)


def test_empty_document_round_trips():
    rec = decode_record(encode_document(doc_id=1, source_file="a", source_line=1, tokens=[]))
    for name in TOKEN_FIELDS:
        assert rec[name].shape == (0,)


def test_document_encode_is_deterministic():
    kw = {"doc_id": 5, "source_file": "f", "source_line": 2, "tokens": [1, 2, 3]}
    assert encode_document(**kw) == encode_document(**kw)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tokens": [1, 2, 3], "vision_mask": [True]}, "vision_mask"),
        ({"tokens": [1, 2, 3], "loss_weights": [1.0] * 4}, "loss_weights"),
        ({"tokens": [[1, 2], [3, 4]]}, "1-D"),
    ],
)
def test_document_encode_rejects_bad_arrays(kwargs, match):
    with pytest.raises(RecordError, match=match):
        encode_document(doc_id=1, source_file="a", source_line=1, **kwargs)


# ---------------------------------------------------------------------------------------------
# packed records


def test_packed_round_trip():
    fields = _docstring_packed()
    rec = decode_record(encode_packed(fields, 8))
    assert rec["format"] == PACKED_FORMAT
    assert set(rec) == {"format", *PACKED_TOKEN_FIELDS, *SEGMENT_FIELDS}
    for name, (dtype, _, _) in {**PACKED_TOKEN_FIELDS, **SEGMENT_FIELDS}.items():
        assert rec[name].dtype == np.dtype(dtype), name
        assert not rec[name].flags.writeable, name
        np.testing.assert_array_equal(rec[name], fields[name], err_msg=name)
    assert int(rec["segment_doc_ids"][0]) == DOC_ID_MASK
    assert check_packed(rec, 8) == []


def test_packed_encode_rejects_missing_and_wrong_length_fields():
    fields = _docstring_packed()
    del fields["tokens_positions"]
    with pytest.raises(RecordError, match="tokens_positions"):
        encode_packed(fields, 8)
    with pytest.raises(RecordError, match="expected 9"):
        encode_packed(_docstring_packed(), 9)
    bad = _docstring_packed()
    bad["segment_offsets"] = np.array([0])
    with pytest.raises(RecordError, match="segment_offsets"):
        encode_packed(bad, 8)


def test_decode_is_zero_copy_for_a_million_tokens():
    seq_len = 1 << 20
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 2**31 - 1, size=seq_len, dtype=np.int32)
    fields = {
        "tokens": tokens,
        "vision_mask": tokens % 2 == 0,
        "loss_weights": np.ones(seq_len, np.float32),
        "tokens_segment_ids": np.ones(seq_len, np.int32),
        "tokens_positions": np.arange(seq_len, dtype=np.int32),
        "segment_doc_ids": np.array([123]),
        "segment_offsets": np.array([0]),
        "segment_lengths": np.array([seq_len]),
    }
    blob = encode_packed(fields, seq_len)
    rec = decode_record(blob)
    backing = np.frombuffer(blob, dtype=np.uint8)
    for name in (*PACKED_TOKEN_FIELDS, *SEGMENT_FIELDS):
        assert np.shares_memory(rec[name], backing), name
    np.testing.assert_array_equal(rec["tokens"], tokens)
    assert check_packed(rec, seq_len) == []


# ---------------------------------------------------------------------------------------------
# decode errors


def test_decode_rejects_unknown_format():
    with pytest.raises(RecordError, match="unknown record format 'lwmkit.packed.v3'"):
        decode_record(encode_example({"format": [b"lwmkit.packed.v3"]}))


def test_decode_rejects_a_record_without_format():
    with pytest.raises(RecordError, match="'format' field"):
        decode_record(encode_example({"tokens": [b"\x00" * 4]}))


def test_decode_rejects_non_example_bytes_as_record_error():
    with pytest.raises(RecordError, match="not a serialized tf.train.Example"):
        decode_record(b"\x0a\x05ab")


def test_decode_rejects_missing_array_field():
    feats = _raw_packed_features(_docstring_packed())
    del feats["segment_lengths"]
    with pytest.raises(RecordError, match="segment_lengths"):
        decode_record(encode_example(feats))


def test_decode_rejects_bytes_not_a_multiple_of_itemsize():
    feats = _raw_packed_features(_docstring_packed())
    feats["tokens"] = [feats["tokens"][0][:-1]]
    with pytest.raises(RecordError, match="not a multiple of 4"):
        decode_record(encode_example(feats))


def test_decode_rejects_per_token_fields_of_different_lengths():
    fields = _docstring_packed()
    fields["tokens_positions"] = np.arange(7)
    with pytest.raises(RecordError, match="per-token fields disagree"):
        decode_record(encode_example(_raw_packed_features(fields)))


def test_decode_rejects_segment_fields_of_different_lengths():
    fields = _docstring_packed()
    fields["segment_offsets"] = np.array([0, 0, 0])
    with pytest.raises(RecordError, match="segment fields disagree"):
        decode_record(encode_example(_raw_packed_features(fields)))


def test_decode_rejects_document_fields_of_different_lengths():
    blob = encode_example(
        {
            "format": [DOCUMENT_FORMAT.encode()],
            "doc_id": [1],
            "source_file": [b"f"],
            "source_line": [1],
            "tokens": [np.arange(3, dtype="<i4").tobytes()],
            "vision_mask": [b"\x00\x00"],
            "loss_weights": [np.ones(3, "<f4").tobytes()],
            "atomic_spans": [b""],
            "example_kind": [b"text"],
            "prefix_length": [0],
        }
    )
    with pytest.raises(RecordError, match="per-token fields disagree"):
        decode_record(blob)


def test_decode_rejects_document_without_doc_id():
    blob = encode_document(doc_id=1, source_file="a", source_line=1, tokens=[1])
    raw = {
        k: [bytes(x) if isinstance(x, memoryview) else x for x in v]
        for k, v in decode_example(blob).items()
        if k != "doc_id"
    }
    with pytest.raises(RecordError, match="doc_id"):
        decode_record(encode_example(raw))


# ---------------------------------------------------------------------------------------------
# check_packed


def test_check_packed_accepts_a_good_record():
    assert check_packed(_docstring_packed(), 8) == []


def test_check_packed_accepts_a_record_without_segments():
    empty = {
        "tokens": np.zeros(4, np.int32),
        "loss_weights": np.zeros(4, np.float32),
        "tokens_segment_ids": np.zeros(4, np.int32),
        "tokens_positions": np.zeros(4, np.int32),
        "segment_lengths": np.zeros(0, np.int32),
    }
    assert check_packed(empty, 4) == []


def _broken(**changes) -> dict:
    rec = copy.deepcopy(_docstring_packed())
    for name, (index, value) in changes.items():
        rec[name][index] = value
    return rec


@pytest.mark.parametrize(
    "record, problem",
    [
        (_broken(tokens_segment_ids=(4, 1)), "tokens_segment_ids"),  # segment 1 runs on
        (_broken(tokens_segment_ids=(7, 3)), "tokens_segment_ids"),  # padding has an id
        (_broken(tokens_segment_ids=(0, 2)), "tokens_segment_ids"),  # ids out of order
        (_broken(tokens_positions=(4, 4)), "tokens_positions"),  # no restart at segment 2
        (_broken(tokens_positions=(2, 5)), "tokens_positions"),  # does not count up
        (_broken(tokens_positions=(7, 1)), "tokens_positions"),  # padding position
        (_broken(loss_weights=(7, 0.5)), "padding carries non-zero loss weight"),
        (_broken(segment_lengths=(1, 2)), "tokens_segment_ids"),  # lengths disagree with ids
    ],
)
def test_check_packed_finds_problems(record, problem):
    problems = check_packed(record, 8)
    assert len(problems) >= 1
    assert any(problem in p for p in problems), problems


def test_check_packed_reports_zero_length_segment():
    rec = _docstring_packed()
    rec["segment_lengths"] = np.array([4, 3, 0])
    assert "a segment has no tokens" in check_packed(rec, 8)


def test_check_packed_reports_negative_segment_length():
    rec = _docstring_packed()
    rec["segment_lengths"] = np.array([4, -1])
    assert "a segment has no tokens" in check_packed(rec, 8)


def test_check_packed_wrong_seq_len_and_overfull():
    assert check_packed(_docstring_packed(), 16) == ["record has 8 tokens, expected seq_len 16"]
    rec = _docstring_packed()
    rec["segment_lengths"] = np.array([4, 5])
    assert check_packed(rec, 8) == ["segments hold 9 tokens, more than seq_len 8"]


def test_check_packed_padding_weight_is_fine_without_padding():
    rec = _docstring_packed()
    rec["segment_lengths"] = np.array([4, 4])
    rec["tokens_segment_ids"][7] = 2
    rec["tokens_positions"][7] = 3
    rec["loss_weights"][7] = 1.0
    assert check_packed(rec, 8) == []


# ---------------------------------------------------------------------------------------------
# document_id


def test_document_id_is_stable():
    # Pinned: ids are stored in shards and used for deduplication, so they must never change.
    # (BLAKE2b with an 8-byte digest, read little-endian, top bit cleared.)
    assert document_id("hello world") == 5814608031911216775
    assert document_id("") == 3797230976420062948
    assert document_id("hello world") == document_id("hello world")


def test_document_id_is_63_bit_and_distinguishes_texts():
    texts = [f"document {i} ü" for i in range(2000)] + ["", " ", "a", "A"]
    ids = [document_id(t) for t in texts]
    assert all(isinstance(i, int) and 0 <= i <= DOC_ID_MASK < 2**63 for i in ids)
    assert len(set(ids)) == len(texts)
    # The whole 63-bit range is used, not just the low bits.
    assert any(i >= 2**62 for i in ids)


def test_document_id_fits_the_int64_fields():
    i = document_id("x")
    rec = decode_record(encode_document(doc_id=i, source_file="a", source_line=1, tokens=[1]))
    assert rec["doc_id"] == i


# ---------------------------------------------------------------------------------------------
# features.json


def _tfds_features(kind: str, seq_len: int | None, with_docs: bool) -> tfds.features.FeaturesDict:
    ours = tfds_features_json(kind, seq_len)["content"]["features"]
    doc = (lambda name: ours[name]["description"]) if with_docs else (lambda name: None)
    if kind == "packed":
        token_fields, seq_shape = PACKED_TOKEN_FIELDS, (seq_len,)
    else:
        token_fields, seq_shape = TOKEN_FIELDS, (None,)
    feats = {"format": tfds.features.Text(doc=doc("format"))}
    for name, (dtype, _, _) in token_fields.items():
        feats[name] = tfds.features.Tensor(
            shape=seq_shape,
            dtype=np.dtype(dtype).type,
            encoding=tfds.features.Encoding.BYTES,
            doc=doc(name),
        )
    if kind == "packed":
        for name, (dtype, _, _) in SEGMENT_FIELDS.items():
            feats[name] = tfds.features.Tensor(
                shape=(None,),
                dtype=np.dtype(dtype).type,
                encoding=tfds.features.Encoding.BYTES,
                doc=doc(name),
            )
    else:
        feats["atomic_spans"] = tfds.features.Tensor(
            shape=(None,), dtype=np.int64, encoding=tfds.features.Encoding.BYTES, doc=doc("atomic_spans")
        )
        feats["doc_id"] = tfds.features.Tensor(shape=(), dtype=np.int64, doc=doc("doc_id"))
        feats["source_file"] = tfds.features.Text(doc=doc("source_file"))
        feats["source_line"] = tfds.features.Tensor(
            shape=(), dtype=np.int64, doc=doc("source_line")
        )
        feats["example_kind"] = tfds.features.Text(doc=doc("example_kind"))
        feats["prefix_length"] = tfds.features.Tensor(shape=(), dtype=np.int64, doc=doc("prefix_length"))
    return tfds.features.FeaturesDict(feats)


def _without_descriptions(obj):
    if isinstance(obj, dict):
        return {k: _without_descriptions(v) for k, v in obj.items() if k != "description"}
    return obj


@pytest.mark.parametrize("kind, seq_len", [("document", None), ("packed", 16)])
def test_features_json_equals_tfds(kind, seq_len):
    ours = tfds_features_json(kind, seq_len)
    # Every field carries a description; without them the JSON is what TFDS writes.
    assert all(f["description"] for f in ours["content"]["features"].values())
    assert _without_descriptions(ours) == _tfds_features(kind, seq_len, with_docs=False).to_json()
    # "description" is the key TFDS itself writes for doc=..., so with docs it is equal as is.
    assert ours == _tfds_features(kind, seq_len, with_docs=True).to_json()


@pytest.mark.parametrize("kind, seq_len", [("document", None), ("packed", 16)])
def test_features_json_is_accepted_by_tfds_from_json(kind, seq_len):
    ours = tfds_features_json(kind, seq_len)
    features = tfds.features.FeaturesDict.from_json(ours)
    assert features.to_json() == ours
    assert features["tokens"].doc.desc == ours["content"]["features"]["tokens"]["description"]
    if kind == "packed":
        assert features["tokens"].shape == (seq_len,)
        assert features["segment_doc_ids"].shape == (None,)
    else:
        assert features["tokens"].shape == (None,)
        assert features["doc_id"].shape == ()


def test_tfds_decodes_our_records_with_our_features():
    features = tfds.features.FeaturesDict.from_json(tfds_features_json("packed", 8))
    fields = _docstring_packed()
    decoded = features.deserialize_example_np(encode_packed(fields, 8))
    for name in (*PACKED_TOKEN_FIELDS, *SEGMENT_FIELDS):
        np.testing.assert_array_equal(decoded[name], fields[name], err_msg=name)
    assert decoded["format"] == PACKED_FORMAT.encode()


def test_features_json_errors():
    with pytest.raises(ValueError, match="seq_len"):
        tfds_features_json("packed")
    with pytest.raises(ValueError, match="kind"):
        tfds_features_json("images")


def test_decode_rejects_int_format_as_record_error():
    # bytes(-5) raises a plain ValueError; a large positive value allocates that many bytes.
    with pytest.raises(RecordError):
        decode_record(encode_example({"format": [-5]}))
