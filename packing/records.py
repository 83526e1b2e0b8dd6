"""lwmkit's one data contract: document records and packed records (format version 2; reads 1).

Both kinds are serialized `tf.train.Example`s (see `wire.py`); per-token arrays are stored as the raw
little-endian bytes of one numpy array, which TFDS reads as `Tensor(..., encoding=BYTES)`. The full
specification is `docs/format.md`.

A *document* record is one tokenized document, variable length, not packed:
    tokens int32[n], vision_mask bool[n], loss_weights float32[n], atomic_spans int64[2k] (flat
    start, end pairs of token ranges packing must never cut), doc_id, source_file, source_line,
    example_kind (text, understanding, generation, chat) and prefix_length (tokens a cut keeps or
    repeats; see `cuts.py`). A v1 document has no kind: `cuts.infer_shape` derives it.

A *packed* record holds exactly `seq_len` tokens made of whole documents or pieces of them:
    tokens, vision_mask, loss_weights, tokens_segment_ids (0 = padding, 1..k), tokens_positions
    (restart at 0 per segment), and per segment (doc id, token offset in its document, length,
    prefix length: tokens from its document's start placed before the ones from the offset; 0 in v1).

Example, two documents [1, 5, 6, 2] and [1, 7, 2] packed into seq_len 8:
    tokens             [1, 5, 6, 2, 1, 7, 2, 0]
    tokens_segment_ids [1, 1, 1, 1, 2, 2, 2, 0]
    tokens_positions   [0, 1, 2, 3, 0, 1, 2, 0]
    loss_weights       [0, 1, 1, 1, 0, 1, 1, 0]
    segment_doc_ids [d1, d2], segment_offsets [0, 0], segment_lengths [4, 3], segment_prefix_lengths [0, 0]
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from lwmkit.packing.cuts import EXAMPLE_KINDS, infer_shape
from lwmkit.packing.wire import WireError, decode_example, encode_example

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DOCUMENT_FORMAT = "lwmkit.document.v2"
PACKED_FORMAT = "lwmkit.packed.v2"
DOCUMENT_FORMAT_V1 = "lwmkit.document.v1"
PACKED_FORMAT_V1 = "lwmkit.packed.v1"
KINDS = {DOCUMENT_FORMAT: "document", PACKED_FORMAT: "packed", DOCUMENT_FORMAT_V1: "document", PACKED_FORMAT_V1: "packed"}

# field -> (numpy dtype as stored, TFDS dtype name, description)
TOKEN_FIELDS: dict[str, tuple[str, str, str]] = {
    "tokens": ("<i4", "int32", "token ids; text ids or vision ids, as vision_mask says"),
    "vision_mask": ("|b1", "bool", "True where the token is in the vision id space"),
    "loss_weights": ("<f4", "float32", "weight of this token as a prediction target"),
}
PACKED_TOKEN_FIELDS: dict[str, tuple[str, str, str]] = {
    **TOKEN_FIELDS,
    "tokens_segment_ids": ("<i4", "int32", "1..k per packed segment, 0 for padding"),
    "tokens_positions": ("<i4", "int32", "position within the segment, restarting at 0"),
}
SEGMENT_FIELDS: dict[str, tuple[str, str, str]] = {
    "segment_doc_ids": ("<i8", "int64", "doc_id of each segment's document"),
    "segment_offsets": ("<i8", "int64", "token offset of each segment within its document"),
    "segment_lengths": ("<i4", "int32", "number of tokens of each segment"),
    "segment_prefix_lengths": ("<i4", "int32", "tokens from the document's start before those from the offset (v2)"),
}
DOCUMENT_ONLY_FIELDS: dict[str, tuple[str, str, str]] = {
    "atomic_spans": ("<i8", "int64", "flat (start, end) pairs of token ranges that packing never cuts"),
}
DOC_ID_MASK = (1 << 63) - 1


class RecordError(ValueError):
    """A record cannot be encoded or decoded as an lwmkit record."""


def document_id(text: str) -> int:
    """A stable 63-bit id for a document: BLAKE2b with an 8-byte digest of its normalized UTF-8
    text, read little-endian, top bit cleared.

    The same id is the content hash used for exact deduplication.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & DOC_ID_MASK


def _array_bytes(name: str, value: Any, dtype: str, length: int | None) -> bytes:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise RecordError(f"field {name!r} must be 1-D, got shape {arr.shape}")
    if length is not None and arr.shape[0] != length:
        raise RecordError(f"field {name!r} has {arr.shape[0]} values, expected {length}")
    return arr.astype(dtype, copy=False).tobytes()


def encode_document(
    *,
    doc_id: int,
    source_file: str,
    source_line: int,
    tokens: Any,
    vision_mask: Any = None,
    loss_weights: Any = None,
    atomic_spans: Any = None,
    example_kind: str | None = None,
    prefix_length: int | None = None,
) -> bytes:
    """Serializes one document record.

    Args:
      doc_id: the document's stable id (see `document_id`).
      source_file: the input file it came from.
      source_line: its 1-based line (jsonl), row (parquet) or 1 (a whole .txt file).
      tokens: int token ids.
      vision_mask: bools, default all False (a text document).
      loss_weights: floats, default 1.0 everywhere.
      atomic_spans: (start, end) pairs, sorted and disjoint, that packing must not cut; default none.
      example_kind, prefix_length: see `cuts.ExampleShape`; None derives them from the arrays.

    Returns:
      The record bytes.

    Raises:
      RecordError: if the arrays disagree in length or are not 1-D, or for an unknown kind.
    """
    toks = np.asarray(tokens)
    n = toks.shape[0] if toks.ndim == 1 else -1
    if vision_mask is None:
        vision_mask = np.zeros(max(n, 0), dtype=bool)
    if loss_weights is None:
        loss_weights = np.ones(max(n, 0), dtype=np.float32)
    if example_kind is not None and example_kind not in EXAMPLE_KINDS:
        raise RecordError(f"example_kind {example_kind!r} is not one of {list(EXAMPLE_KINDS)}")
    features: dict[str, list] = {
        "format": [DOCUMENT_FORMAT.encode()],
        "doc_id": [int(doc_id)],
        "source_file": [source_file.encode("utf-8")],
        "source_line": [int(source_line)],
        "tokens": [_array_bytes("tokens", toks, "<i4", None)],
        "vision_mask": [_array_bytes("vision_mask", vision_mask, "|b1", n)],
        "loss_weights": [_array_bytes("loss_weights", loss_weights, "<f4", n)],
        "atomic_spans": [_array_bytes("atomic_spans", spans_array(atomic_spans).reshape(-1), "<i8", None)],
    }
    if example_kind is None or prefix_length is None:  # arrays checked above
        shape = infer_shape(np.asarray(vision_mask), np.asarray(loss_weights), (), example_kind, prefix_length)
        example_kind, prefix_length = shape.kind, shape.prefix
    features |= {
        "example_kind": [example_kind.encode()],
        "prefix_length": [int(prefix_length)],
    }
    return encode_example(features)


def spans_array(spans: Any) -> np.ndarray:
    """Atomic spans as an int64 [k, 2] array (from None, pairs, or a flat even-length array)."""
    if spans is None:
        return np.zeros((0, 2), dtype=np.int64)
    arr = np.asarray(spans, dtype=np.int64)
    if arr.size % 2:
        raise RecordError(f"atomic_spans needs (start, end) pairs, got {arr.size} numbers")
    return arr.reshape(-1, 2)


def encode_packed(fields: Mapping[str, Any], seq_len: int) -> bytes:
    """Serializes one packed record of exactly `seq_len` tokens.

    Args:
      fields: every name in `PACKED_TOKEN_FIELDS` (length seq_len) and `SEGMENT_FIELDS` (length k;
        `segment_prefix_lengths` may be left out when no segment has a prefix).
      seq_len: the record length.

    Returns:
      The record bytes.

    Raises:
      RecordError: if a field is missing or has the wrong length.
    """
    missing = [k for k in (*PACKED_TOKEN_FIELDS, *SEGMENT_FIELDS) if k not in fields and k != "segment_prefix_lengths"]
    if missing:
        raise RecordError(f"packed record is missing fields {missing}")
    k = np.asarray(fields["segment_lengths"]).shape[0]
    if "segment_prefix_lengths" not in fields:  # no segment has a prefix
        fields = {**fields, "segment_prefix_lengths": np.zeros(k, dtype=np.int32)}
    features: dict[str, list] = {"format": [PACKED_FORMAT.encode()]}
    for name, (dtype, _, _) in PACKED_TOKEN_FIELDS.items():
        features[name] = [_array_bytes(name, fields[name], dtype, seq_len)]
    for name, (dtype, _, _) in SEGMENT_FIELDS.items():
        features[name] = [_array_bytes(name, fields[name], dtype, k)]
    return encode_example(features)


def decode_record(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decodes a document or packed record into numpy arrays without copying token data.

    Arrays are read-only views into `data`; scalars come back as int or str. The key `format`
    says which kind it is.

    Raises:
      RecordError: if the bytes are not an lwmkit record of a known format version.
    """
    try:
        raw = decode_example(data)
    except WireError as e:
        raise RecordError(f"not a serialized tf.train.Example: {e}") from e
    fmt_values = raw.get("format")
    if not fmt_values or not isinstance(fmt_values[0], memoryview):
        raise RecordError("record has no text 'format' field; not an lwmkit record")
    fmt = bytes(fmt_values[0]).decode("utf-8", "replace")
    if fmt not in KINDS:
        raise RecordError(f"unknown record format {fmt!r}; this lwmkit reads {sorted(KINDS)}")
    packed = KINDS[fmt] == "packed"
    spec = {**PACKED_TOKEN_FIELDS, **SEGMENT_FIELDS} if packed else {**TOKEN_FIELDS, **DOCUMENT_ONLY_FIELDS}
    out: dict[str, Any] = {"format": fmt}
    for name, (dtype, _, _) in spec.items():
        if name == "segment_prefix_lengths" and fmt == PACKED_FORMAT_V1:
            continue  # filled with zeros below
        values = raw.get(name)
        if not values or len(values) != 1:
            raise RecordError(f"{fmt} record lacks the array field {name!r}")
        buf = values[0]
        itemsize = np.dtype(dtype).itemsize
        if len(buf) % itemsize:
            raise RecordError(f"field {name!r} has {len(buf)} bytes, not a multiple of {itemsize}")
        out[name] = np.frombuffer(buf, dtype=dtype)
    if not packed:
        try:
            out["doc_id"] = int(raw["doc_id"][0])
            out["source_line"] = int(raw["source_line"][0])
            out["source_file"] = bytes(raw["source_file"][0]).decode("utf-8")
            if fmt == DOCUMENT_FORMAT:
                out["example_kind"] = bytes(raw["example_kind"][0]).decode("utf-8")
                out["prefix_length"] = int(raw["prefix_length"][0])
        except (KeyError, IndexError) as e:
            raise RecordError(f"document record lacks the field {e}") from e
        if fmt == DOCUMENT_FORMAT_V1:
            shape = infer_shape(out["vision_mask"], out["loss_weights"], ())
            out["example_kind"], out["prefix_length"] = shape.kind, shape.prefix
        elif out["example_kind"] not in EXAMPLE_KINDS:
            raise RecordError(f"document record has the unknown example_kind {out['example_kind']!r}")
        n = out["tokens"].shape[0]
        lengths = {k: out[k].shape[0] for k in TOKEN_FIELDS}
    else:
        n = out["tokens"].shape[0]
        lengths = {k: out[k].shape[0] for k in PACKED_TOKEN_FIELDS}
        k = out["segment_lengths"].shape[0]
        if fmt == PACKED_FORMAT_V1:
            out["segment_prefix_lengths"] = np.zeros(k, dtype="<i4")
        bad = {f: out[f].shape[0] for f in SEGMENT_FIELDS if out[f].shape[0] != k}
        if bad:
            raise RecordError(f"segment fields disagree in length: {bad}, expected {k}")
    if any(v != n for v in lengths.values()):
        raise RecordError(f"per-token fields disagree in length: {lengths}")
    return out


def zero_loss_segments(record: Mapping[str, Any]) -> int:
    """How many of a packed record's segments carry no loss weight at all (they train nothing)."""
    lengths = np.asarray(record["segment_lengths"], dtype=np.int64)
    if not lengths.size:
        return 0
    weights = np.asarray(record["loss_weights"], dtype=np.float64)[: int(lengths.sum())]
    per_segment = np.add.reduceat(np.abs(weights), np.concatenate([[0], np.cumsum(lengths)[:-1]]))
    return int(np.count_nonzero(per_segment == 0))


def check_packed(record: Mapping[str, Any], seq_len: int, piece_positions: str = "restart") -> list[str]:
    """Checks a decoded packed record's internal consistency; returns the problems found.

    Checks: every field has seq_len tokens; segment ids run 1..k in contiguous blocks then 0s;
    positions count up from 0 per segment ("restart") or, past the segment's prefix, from its offset
    in its document ("continue"); block lengths equal `segment_lengths`; prefixes lie inside their
    segments and carry zero loss weight; padding has zero loss weight.
    """
    problems: list[str] = []
    if record["tokens"].shape[0] != seq_len:
        return [f"record has {record['tokens'].shape[0]} tokens, expected seq_len {seq_len}"]
    seg = np.asarray(record["tokens_segment_ids"])
    pos = np.asarray(record["tokens_positions"])
    lengths = np.asarray(record["segment_lengths"], dtype=np.int64)
    k = lengths.shape[0]
    if np.any(lengths <= 0):
        return ["a segment has no tokens"]
    used = int(lengths.sum())
    if used > seq_len:
        return [f"segments hold {used} tokens, more than seq_len {seq_len}"]
    expected_seg = np.zeros(seq_len, dtype=np.int32)
    expected_seg[:used] = np.repeat(np.arange(1, k + 1, dtype=np.int32), lengths)
    if not np.array_equal(seg, expected_seg):
        problems.append("tokens_segment_ids do not match segment_lengths (1..k blocks, then 0)")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if k else np.zeros(0, np.int64)
    expected_pos = np.zeros(seq_len, dtype=np.int64)
    prefix = np.asarray(record.get("segment_prefix_lengths", np.zeros(k)), dtype=np.int64)
    if np.any(prefix < 0) or np.any(prefix >= lengths):
        return ["a segment's prefix is not shorter than the segment"]
    if k:
        within = np.arange(used) - np.repeat(starts, lengths)  # index inside its segment
        in_prefix = within < np.repeat(prefix, lengths)
        expected_pos[:used] = within
        if piece_positions == "continue":
            offsets = np.asarray(record["segment_offsets"], dtype=np.int64)
            expected_pos[:used] += np.where(in_prefix, 0, np.repeat(offsets - prefix, lengths))
        if np.any(np.asarray(record["loss_weights"])[:used][in_prefix] != 0):
            problems.append("a segment's prefix carries non-zero loss weight")
    if not np.array_equal(pos, expected_pos):
        problems.append(f"tokens_positions do not follow piece_positions={piece_positions!r}")
    if used < seq_len and np.any(np.asarray(record["loss_weights"])[used:] != 0):
        problems.append("padding carries non-zero loss weight")
    return problems


def _tensor_json(dtype: str, dims: list[str] | None, encoding: str, doc: str) -> dict:
    shape = {"dimensions": dims} if dims is not None else {}
    return {
        "pythonClassName": "tensorflow_datasets.core.features.tensor_feature.Tensor",
        "tensor": {"shape": shape, "dtype": dtype, "encoding": encoding},
        "description": doc,
    }


def _text_json(doc: str) -> dict:
    return {
        "pythonClassName": "tensorflow_datasets.core.features.text_feature.Text",
        "text": {},
        "description": doc,
    }


def tfds_features_json(kind: str, seq_len: int | None = None) -> dict:
    """The TFDS `features.json` content describing records of `kind` ('document' or 'packed').

    TFDS reads it with `builder_from_directory` and decodes each field without TensorFlow.
    """
    feats: dict[str, dict] = {"format": _text_json("record format and version, e.g. " + PACKED_FORMAT)}
    if kind == "document":
        for name, (_, tf_dtype, doc) in TOKEN_FIELDS.items():
            feats[name] = _tensor_json(tf_dtype, ["-1"], "bytes", doc)
        for name, (_, tf_dtype, doc) in DOCUMENT_ONLY_FIELDS.items():
            feats[name] = _tensor_json(tf_dtype, ["-1"], "bytes", doc)
        feats["doc_id"] = _tensor_json("int64", None, "none", "stable 63-bit document id")
        feats["source_file"] = _text_json("input file the document came from")
        feats["source_line"] = _tensor_json("int64", None, "none", "1-based line or row in source_file")
        feats["example_kind"] = _text_json("text, understanding, generation or chat")
        feats["prefix_length"] = _tensor_json("int64", None, "none", "tokens at the start a cut keeps or repeats")
    elif kind == "packed":
        if not seq_len:
            raise ValueError("packed features need seq_len")
        for name, (_, tf_dtype, doc) in PACKED_TOKEN_FIELDS.items():
            feats[name] = _tensor_json(tf_dtype, [str(seq_len)], "bytes", doc)
        for name, (_, tf_dtype, doc) in SEGMENT_FIELDS.items():
            feats[name] = _tensor_json(tf_dtype, ["-1"], "bytes", doc)
    else:
        raise ValueError(f"kind must be one of ['document', 'packed'], got {kind!r}")
    return {
        "type": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
        "content": {"features": dict(sorted(feats.items()))},
        "proto_cls": "tensorflow_datasets.FeaturesDict",
    }
