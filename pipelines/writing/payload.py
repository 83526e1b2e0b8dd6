"""The compact payload of a tokenized document: what a job's last stage makes and the shard writer reads.

Payloads travel between workers (and through the work store) compactly: tokens as uint16 when the
vocabulary allows, and `vision_mask` / `loss_weights` as None for a text document in LWM's default
layout (no vision tokens; weight 0 on BOS, 1 elsewhere).

Example: tokens [1, 5, 9] of a text document, vocabulary under 65,536:
    {"file": "a.jsonl", "line": 3, "chars": 12, "meta": null, "tokens": b"\x01\x00\x05\x00\t\x00",
     "token_dtype": "<u2", "vision_mask": None, "loss_weights": None, "atomic_spans": None}
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from lwmkit.packing.cuts import infer_shape

NEAR_SKETCH = "near_sketch"  # the field `dedup.stored.SKETCH_FIELD` names (writing does not import dedup)


def doc_arrays(doc: dict[str, Any], offset: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens int32, vision_mask bool, loss_weights float32) of a document payload or a piece of one.

    Payloads travel compactly between workers: tokens as uint16 when the vocabulary allows, and
    `vision_mask` / `loss_weights` as None for a text document in LWM's default layout (no vision
    tokens; weight 0 on BOS, 1 elsewhere). `offset` is where a piece starts in its document, so a
    piece's default weights have the BOS zero only when the piece starts the document.
    """
    tokens = np.frombuffer(doc["tokens"], dtype=doc["token_dtype"]).astype(np.int32)
    n = tokens.shape[0]
    if doc["vision_mask"] is None:
        vision = np.zeros(n, dtype=bool)
    else:
        vision = np.frombuffer(doc["vision_mask"], dtype="|b1")
    if doc["loss_weights"] is None:
        weights = np.ones(n, dtype=np.float32)
        if offset == 0:
            weights[:1] = 0.0
    else:
        weights = np.frombuffer(doc["loss_weights"], dtype="<f4")
    return tokens, vision, weights


def example_payload(
    source: dict[str, Any],
    chars: int,
    meta: dict[str, Any],
    tokens: np.ndarray,
    token_dtype: str,
    vision_mask: np.ndarray | None,
    loss_weights: np.ndarray,
    atomic_spans,
    kind: str | None = None,
    prefix: int | None = None,
) -> dict[str, Any]:
    """The compact payload `doc_arrays` reads back, from a built example's arrays.

    `source` gives the example's `file` and `line` (and its near-dedup sketch, `near_sketch`, when
    it has one); `vision_mask` None means no vision tokens. `kind` and `prefix` (see
    `packing.cuts.ExampleShape`) decide how packing cuts the example; None derives them.
    Example: tokens [1, 5, 9] as "<u2" -> {"tokens": b"\\x01\\x00\\x05\\x00\\t\\x00", "token_dtype": "<u2", ...}
    """
    payload = {
        "file": source["file"],
        "line": source["line"],
        "chars": chars,
        "meta": json.dumps(meta, sort_keys=True, ensure_ascii=False),
        "tokens": tokens.astype(token_dtype).tobytes(),
        "token_dtype": token_dtype,
        "vision_mask": None if vision_mask is None else vision_mask.astype("|b1").tobytes(),
        "loss_weights": loss_weights.astype("<f4").tobytes(),
        "atomic_spans": [list(s) for s in atomic_spans],
        "shape": infer_shape(
            np.zeros(len(tokens), bool) if vision_mask is None else vision_mask, loss_weights, atomic_spans, kind, prefix
        ).to_list(),
    }
    if source.get(NEAR_SKETCH) is not None:  # near-dedup's sketch rests in the work store's receipts
        payload[NEAR_SKETCH] = source[NEAR_SKETCH]
    return payload


def piece(doc: dict[str, Any], offset: int, length: int, prefix: int = 0) -> dict[str, Any]:
    """The payload of a piece, still compact: tokens [0, prefix) then [offset, offset + length - prefix)."""
    size = np.dtype(doc["token_dtype"]).itemsize

    def cut(data, item: int):
        if data is None:
            return None
        body = data[offset * item : (offset + length - prefix) * item]
        return data[: prefix * item] + body if prefix else body

    return {
        "tokens": cut(doc["tokens"], size),
        "token_dtype": doc["token_dtype"],
        "vision_mask": cut(doc["vision_mask"], 1),
        "loss_weights": cut(doc["loss_weights"], 4),
    }


def compact_payload(rec: dict[str, Any]) -> dict[str, Any]:
    """A decoded document record as the compact payload that `writing.shards` routes."""
    tokens = rec["tokens"]
    small = tokens.size == 0 or (tokens.min() >= 0 and tokens.max() < 1 << 16)
    n = tokens.shape[0]
    default_weights = np.ones(n, dtype=np.float32)
    default_weights[:1] = 0.0
    vision = rec["vision_mask"]
    weights = rec["loss_weights"]
    spans = rec["atomic_spans"].reshape(-1, 2)
    return {
        "file": rec["source_file"],
        "line": rec["source_line"],
        "chars": None,
        "meta": None,
        "tokens": tokens.astype("<u2" if small else "<i4").tobytes(),
        "token_dtype": "<u2" if small else "<i4",
        "vision_mask": None if not vision.any() else vision.tobytes(),
        "loss_weights": None if np.array_equal(weights, default_weights) else weights.tobytes(),
        "atomic_spans": [tuple(map(int, s)) for s in spans] or None,
        "shape": infer_shape(vision, weights, spans, rec["example_kind"], rec["prefix_length"]).to_list(),
    }
