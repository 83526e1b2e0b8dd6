"""Turns the pieces of one bin into the arrays of a packed record.

Example, seq_len 6, pieces [1, 5, 2] (doc a) and [1, 9] (doc b, loss weights [0, 1]):
    tokens             [1, 5, 2, 1, 9, 0]
    tokens_segment_ids [1, 1, 1, 2, 2, 0]
    tokens_positions   [0, 1, 2, 0, 1, 0]
    loss_weights       [0, 1, 1, 0, 1, 0]

A segment with a prefix (a generation example's repeated condition, or the kept start of an example
whose leading frames were dropped) gets weight 0 on its prefix tokens; with "continue" positions
the prefix counts from 0 and the rest from its offset in the document.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from lwmkit.packing.loss import LossPolicy

PAD_ID = 0


@dataclass(frozen=True)
class Segment:
    """One piece's data: tokens[:prefix] + tokens[offset:offset + n - prefix] of document `doc_id`."""

    doc_id: int
    offset: int
    tokens: np.ndarray  # [n] int32
    vision_mask: np.ndarray  # [n] bool
    loss_weights: np.ndarray  # [n] float32
    prefix: int = 0


PIECE_POSITIONS = ("restart", "continue")


def assemble_packed(
    segments: Sequence[Segment],
    seq_len: int,
    *,
    piece_positions: str = "restart",
    loss_policy: LossPolicy | None = None,
) -> dict[str, np.ndarray]:
    """Lays segments out back to back, pads to seq_len and applies the loss policy.

    Args:
      segments: the record's segments in order.
      seq_len: record length.
      piece_positions: "restart" (every segment counts from 0) or "continue" (a piece of a cut
        document counts on from its offset in the document).
      loss_policy: rescales the weights inside the record (None keeps them).

    Raises:
      ValueError: if the segments hold more than seq_len tokens or disagree in length, or for an
        unknown piece_positions.
    """
    if piece_positions not in PIECE_POSITIONS:
        raise ValueError(f"piece_positions must be one of {list(PIECE_POSITIONS)}, got {piece_positions!r}")
    lengths = np.array([s.tokens.shape[0] for s in segments], dtype=np.int32)
    used = int(lengths.sum())
    if used > seq_len:
        raise ValueError(f"segments hold {used} tokens, more than seq_len {seq_len}")
    tokens = np.full(seq_len, PAD_ID, dtype=np.int32)  # [seq]
    vision = np.zeros(seq_len, dtype=bool)  # [seq]
    weights = np.zeros(seq_len, dtype=np.float32)  # [seq]
    seg_ids = np.zeros(seq_len, dtype=np.int32)  # [seq]
    positions = np.zeros(seq_len, dtype=np.int32)  # [seq]
    start = 0
    for i, s in enumerate(segments):
        n = s.tokens.shape[0]
        if s.vision_mask.shape[0] != n or s.loss_weights.shape[0] != n:
            raise ValueError(f"segment {i} of doc {s.doc_id}: field lengths disagree")
        end = start + n
        tokens[start:end] = s.tokens
        vision[start:end] = s.vision_mask
        weights[start:end] = s.loss_weights
        weights[start : start + s.prefix] = 0.0  # a repeated condition or kept start is context only
        seg_ids[start:end] = i + 1
        positions[start:end] = np.arange(n, dtype=np.int32)
        if piece_positions == "continue":
            positions[start + s.prefix : end] += s.offset - s.prefix
        start = end
    if loss_policy is not None and loss_policy.steps:
        weights = loss_policy.apply(weights, vision, seg_ids)
    return {
        "tokens": tokens,
        "vision_mask": vision,
        "loss_weights": weights,
        "tokens_segment_ids": seg_ids,
        "tokens_positions": positions,
        "segment_doc_ids": np.array([s.doc_id for s in segments], dtype=np.int64),
        "segment_offsets": np.array([s.offset for s in segments], dtype=np.int64),
        "segment_lengths": lengths,
        "segment_prefix_lengths": np.array([s.prefix for s in segments], dtype=np.int32),
    }
