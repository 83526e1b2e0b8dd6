"""The tf.train.Example wire codec: round trips, agreement with TFDS, errors, zero copy."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given
from hypothesis import strategies as st
from lwmkit.packing.wire import WireError, decode_example, encode_example
from tensorflow_datasets.proto import tf_example_pb2

INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_/é", min_size=1, max_size=12)
FEATURE = st.one_of(
    st.lists(INT64, min_size=1, max_size=8), st.lists(st.binary(max_size=40), max_size=4)
)


def _plain(decoded: dict) -> dict:
    return {
        k: [bytes(v) if isinstance(v, memoryview) else v for v in vs] for k, vs in decoded.items()
    }


def _tfds_serializer():
    return tfds.features.FeaturesDict(
        {
            "tokens": tfds.features.Tensor(
                shape=(None,), dtype=np.int32, encoding=tfds.features.Encoding.BYTES
            ),
            "doc_id": tfds.features.Tensor(shape=(), dtype=np.int64),
            "source_file": tfds.features.Text(),
        }
    )


def test_docstring_example():
    blob = encode_example({"n": [7], "s": [b"ab"]})
    assert _plain(decode_example(blob)) == {"n": [7], "s": [b"ab"]}


@given(st.dictionaries(KEYS, FEATURE, max_size=6))
def test_round_trip(features):
    blob = encode_example(features)
    decoded = decode_example(blob)
    # An empty list is written as an empty BytesList, so it decodes as an empty list too.
    assert _plain(decoded) == features


@given(st.dictionaries(KEYS, FEATURE, max_size=6))
def test_matches_protobuf_parse(features):
    """Whatever we write, protobuf parses into the same feature values."""
    parsed = tf_example_pb2.Example.FromString(encode_example(features))
    got = {}
    for key, feature in parsed.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "int64_list":
            got[key] = list(feature.int64_list.value)
        else:
            assert kind in ("bytes_list", None)
            got[key] = list(feature.bytes_list.value)
    assert got == features


def test_same_features_same_bytes_whatever_the_key_order():
    a = encode_example({"b": [1], "a": [b"x"], "c": [-1]})
    b = encode_example({"c": [-1], "a": [b"x"], "b": [1]})
    assert a == b


@pytest.mark.parametrize(
    "key, value, ours",
    [
        (
            "tokens",
            np.array([1, -2, 300, 2**31 - 1], np.int32),
            [np.array([1, -2, 300, 2**31 - 1], "<i4").tobytes()],
        ),
        ("tokens", np.zeros(0, np.int32), [b""]),
        ("doc_id", 12345, [12345]),
        ("doc_id", -5, [-5]),
        ("doc_id", -(2**63), [-(2**63)]),
        ("doc_id", 2**63 - 1, [2**63 - 1]),
        ("source_file", "dir/héllo.jsonl", ["dir/héllo.jsonl".encode()]),
        ("source_file", "", [b""]),
    ],
)
def test_single_feature_bytes_equal_tfds(key, value, ours):
    """One feature at a time: TFDS's serializer writes exactly our bytes."""
    fd = tfds.features.FeaturesDict({key: _tfds_serializer()[key]})
    assert encode_example({key: ours}) == fd.serialize_example({key: value})


def test_example_bytes_equal_tfds_serialization():
    """A whole example: our bytes are TFDS's Example serialized with sorted map keys.

    TFDS calls `SerializeToString()` without `deterministic=True`, so its map entries come out in
    protobuf's (unsorted) map order; the message is the same and the deterministic bytes are ours.
    """
    tokens = np.array([5, -1, 70000, 0], np.int32)
    value = {"tokens": tokens, "doc_id": -42, "source_file": "a/b.txt"}
    tfds_bytes = _tfds_serializer().serialize_example(value)
    ours = encode_example(
        {"tokens": [tokens.astype("<i4").tobytes()], "doc_id": [-42], "source_file": [b"a/b.txt"]}
    )
    tfds_message = tf_example_pb2.Example.FromString(tfds_bytes)
    assert tf_example_pb2.Example.FromString(ours) == tfds_message
    assert tfds_message.SerializeToString(deterministic=True) == ours
    assert len(ours) == len(tfds_bytes)
    # And we read TFDS's bytes, whatever their entry order.
    decoded = decode_example(tfds_bytes)
    assert decoded["doc_id"] == [-42]
    assert bytes(decoded["source_file"][0]) == b"a/b.txt"
    np.testing.assert_array_equal(np.frombuffer(decoded["tokens"][0], "<i4"), tokens)


def test_decodes_unpacked_int64_and_skips_unknown_fields():
    # Int64List with non-packed values (field 1, varint) as older writers emit, plus an unknown
    # varint field (99) at the top level and an unknown fixed32 (field 7) inside the feature.
    int64_list = b"\x08\x07\x08\x7f"  # value 7, value 127
    feature = b"\x1a" + bytes([len(int64_list)]) + int64_list + b"\x3d\x01\x02\x03\x04"
    entry = b"\x0a\x01n\x12" + bytes([len(feature)]) + feature
    features = b"\x0a" + bytes([len(entry)]) + entry
    blob = b"\x98\x06\x05" + b"\x0a" + bytes([len(features)]) + features
    assert decode_example(blob) == {"n": [7, 127]}


def test_every_truncation_raises():
    blob = encode_example(
        {"tokens": [np.arange(40, dtype="<i4").tobytes()], "doc_id": [-3], "s": [b"hello"]}
    )
    for cut in range(1, len(blob)):
        with pytest.raises(WireError):
            decode_example(blob[:cut])


@pytest.mark.parametrize(
    "blob, match",
    [
        (b"\xff", "truncated varint"),  # varint that never ends
        (b"\x80" * 11 + b"\x01", "longer than 10 bytes"),
        (b"\x0a\x05ab", "runs past the end"),
        (b"\x0a\x04\x0a\x02\x12\x00", "without a key"),  # map entry with a value only
        (b"\x0a\x09\x0a\x07\x0a\x01k\x12\x02\x12\x00", "float_list"),  # a well-formed empty float_list
        (b"\x0b", "unsupported wire type 3"),  # group start
        (b"\x0f", "unsupported wire type 7"),
    ],
)
def test_garbage_raises(blob, match):
    with pytest.raises(WireError, match=match):
        decode_example(blob)


@pytest.mark.parametrize("blob", [b"\x09", b"\x0d\x00"])
def test_truncated_fixed_width_field_raises(blob):
    with pytest.raises(WireError):
        decode_example(blob)


def test_non_utf8_key_raises_wire_error():
    with pytest.raises(WireError):
        decode_example(b"\x0a\x05\x0a\x03\x0a\x01\xff")


def test_empty_input_is_an_empty_example():
    assert decode_example(b"") == {}


@pytest.mark.parametrize("container", [bytes, bytearray, memoryview])
def test_decode_is_zero_copy(container):
    payload = np.arange(1000, dtype="<i4").tobytes()
    raw = encode_example({"a": [payload], "b": [b"xyz"]})
    data = container(raw)
    decoded = decode_example(data)
    view = decoded["a"][0]
    assert isinstance(view, memoryview)
    assert bytes(view) == payload
    backing = np.frombuffer(data, dtype=np.uint8)
    assert np.shares_memory(np.frombuffer(view, dtype=np.uint8), backing)
    assert np.shares_memory(np.frombuffer(decoded["b"][0], dtype=np.uint8), backing)


def test_decode_views_see_writes_to_the_buffer():
    data = bytearray(encode_example({"a": [b"\x00\x00\x00\x00"]}))
    view = decode_example(data)["a"][0]
    data[-1] = 0x7F  # the payload is the last bytes of the record
    assert bytes(view) == b"\x00\x00\x00\x7f"
