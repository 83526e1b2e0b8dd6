"""The `tf.train.Example` wire format, written and read without TensorFlow or protobuf.

lwmkit stores every record as a serialized `tf.train.Example` whose array fields hold the raw
little-endian bytes of a numpy array (TFDS's `Tensor(..., encoding=BYTES)`). That makes the shards
readable by `tfds.builder_from_directory(dir).as_data_source()`, while our own decoder walks only
the dozen field headers and returns numpy views straight into the record buffer: nothing is parsed
per token, so decoding a 1M-token record costs a few microseconds.

The encoder writes features sorted by key, so the same arrays always give the same bytes; TFDS
parses them to the same message its own serializer makes (which emits protobuf map order instead).

Example (field values as the wire sees them):
    >>> blob = encode_example({"n": [7], "s": [b"ab"]})
    >>> decode_example(blob)
    {'n': [7], 's': [b'ab']}
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

# Wire types and field tags of the three messages involved:
#   Example  { Features features = 1; }
#   Features { map<string, Feature> feature = 1; }  (entries: key = 1, value = 2)
#   Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
#   BytesList { repeated bytes value = 1; }  Int64List { repeated int64 value = 1 [packed]; }
_LEN = 2
_VARINT = 0
_TAG_FEATURES = (1 << 3) | _LEN
_TAG_ENTRY = (1 << 3) | _LEN
_TAG_KEY = (1 << 3) | _LEN
_TAG_VALUE = (2 << 3) | _LEN
_TAG_BYTES_LIST = (1 << 3) | _LEN
_TAG_FLOAT_LIST = (2 << 3) | _LEN
_TAG_INT64_LIST = (3 << 3) | _LEN
_TAG_LIST_VALUE_LEN = (1 << 3) | _LEN
_TAG_LIST_VALUE_VARINT = (1 << 3) | _VARINT

FeatureValue = list  # list[bytes | memoryview] or list[int]


class WireError(ValueError):
    """A record is not a well-formed `tf.train.Example` of the kind lwmkit writes."""


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 is written as its two's-complement uint64
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _len_field(tag: int, payload: bytes | bytearray | memoryview) -> list:
    return [bytes((tag,)), _varint(len(payload)), payload]


def _feature(value: Sequence) -> bytes:
    if not value or isinstance(value[0], (bytes, bytearray, memoryview)):
        items: list = []
        for v in value:
            items += _len_field(_TAG_LIST_VALUE_LEN, v)
        return b"".join(_len_field(_TAG_BYTES_LIST, b"".join(items)))
    packed = b"".join(_varint(int(v)) for v in value)
    inner = b"".join(_len_field(_TAG_LIST_VALUE_LEN, packed))
    return b"".join(_len_field(_TAG_INT64_LIST, inner))


def encode_example(features: Mapping[str, Sequence]) -> bytes:
    """Serializes features to `tf.train.Example` bytes, keys sorted.

    Args:
      features: key -> a list of bytes-like values (a BytesList) or of ints (an Int64List).

    Returns:
      The serialized Example.
    """
    entries: list = []
    for key in sorted(features):
        entry = b"".join(
            _len_field(_TAG_KEY, key.encode("utf-8")) + _len_field(_TAG_VALUE, _feature(features[key]))
        )
        entries += _len_field(_TAG_ENTRY, entry)
    body = b"".join(entries)
    return b"".join(_len_field(_TAG_FEATURES, body))


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


def _read_len(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    """Returns (start, stop) of a length-delimited payload starting at pos."""
    n, pos = _read_varint(buf, pos, end)
    if pos + n > end:
        raise WireError(f"field of {n} bytes runs past the end of its message")
    return pos, pos + n


def _skip(buf: memoryview, pos: int, end: int, wire_type: int) -> int:
    if wire_type == _VARINT:
        return _read_varint(buf, pos, end)[1]
    if wire_type == _LEN:
        return _read_len(buf, pos, end)[1]
    width = {1: 8, 5: 4}.get(wire_type)
    if width is not None:
        if pos + width > end:
            raise WireError(f"truncated {width}-byte field")
        return pos + width
    raise WireError(f"unsupported wire type {wire_type}")


def _fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, Any]]:
    """Yields (tag, value) for each field of the message in buf[pos:end].

    The value is (start, stop) of the payload for length-delimited fields and the int for varints;
    fixed-width fields are skipped.
    """
    while pos < end:
        tag, pos = _read_varint(buf, pos, end)
        wire_type = tag & 7
        if wire_type == _LEN:
            start, pos = _read_len(buf, pos, end)
            yield tag, (start, pos)
        elif wire_type == _VARINT:
            value, pos = _read_varint(buf, pos, end)
            yield tag, value
        else:
            pos = _skip(buf, pos, end, wire_type)


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _decode_feature(buf: memoryview, pos: int, end: int) -> FeatureValue:
    values: list = []
    for tag, span in _fields(buf, pos, end):
        if tag == _TAG_BYTES_LIST:
            start, stop = span
            values += [buf[v[0] : v[1]] for t, v in _fields(buf, start, stop) if t == _TAG_LIST_VALUE_LEN]
        elif tag == _TAG_INT64_LIST:
            start, stop = span
            for t, v in _fields(buf, start, stop):
                if t == _TAG_LIST_VALUE_LEN:  # packed
                    s, e = v
                    while s < e:
                        n, s = _read_varint(buf, s, e)
                        values.append(_int64(n))
                elif t == _TAG_LIST_VALUE_VARINT:
                    values.append(_int64(v))
        elif tag == _TAG_FLOAT_LIST:
            raise WireError("float_list features are not part of lwmkit's format")
    return values


def decode_example(data: bytes | bytearray | memoryview) -> dict[str, FeatureValue]:
    """Parses `tf.train.Example` bytes into key -> list of values.

    Bytes values come back as memoryviews into `data` (no copy); int64 values as ints.

    Raises:
      WireError: if `data` is not a well-formed Example.
    """
    buf = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
    out: dict[str, FeatureValue] = {}
    for tag, features in _fields(buf, 0, len(buf)):
        if tag != _TAG_FEATURES:
            continue
        for t, entry in _fields(buf, *features):
            if t != _TAG_ENTRY:
                continue
            key = None
            value: FeatureValue = []
            for et, span in _fields(buf, *entry):
                if et not in (_TAG_KEY, _TAG_VALUE):
                    continue
                s, e = span
                if et == _TAG_KEY:
                    try:
                        key = bytes(buf[s:e]).decode("utf-8")
                    except UnicodeDecodeError as err:
                        raise WireError(f"feature key is not UTF-8: {err}") from err
                else:
                    value = _decode_feature(buf, s, e)
            if key is None:
                raise WireError("feature map entry without a key")
            out[key] = value
    return out
