"""Turns the pieces of one bin into the arrays of a packed record.

Example, seq_len 6, pieces [1, 5, 2] (doc a) and [1, 9] (doc b, loss weights [0, 1]):
    tokens             [1, 5, 2, 1, 9, 0]
    tokens_segment_ids [1, 1, 1, 2, 2, 0]
    tokens_positions   [0, 1, 2, 0, 1, 0]
    loss_weights       [0, 1, 1, 0, 1, 0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PAD_ID = 0


@dataclass(frozen=True)
class Segment:
    """One piece's data: tokens[offset:offset+len] of document `doc_id`."""

    doc_id: int
    offset: int
    tokens: np.ndarray  # [n] int32
    vision_mask: np.ndarray  # [n] bool
    loss_weights: np.ndarray  # [n] float32


def assemble_packed(segments: Sequence[Segment], seq_len: int) -> dict[str, np.ndarray]:
    """Lays segments out back to back and pads to seq_len.

    Positions restart at 0 for every segment (a piece of a cut document restarts too).

    Raises:
      ValueError: if the segments hold more than seq_len tokens or disagree in length.
    """
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
        seg_ids[start:end] = i + 1
        positions[start:end] = np.arange(n, dtype=np.int32)
        start = end
    return {
        "tokens": tokens,
        "vision_mask": vision,
        "loss_weights": weights,
        "tokens_segment_ids": seg_ids,
        "tokens_positions": positions,
        "segment_doc_ids": np.array([s.doc_id for s in segments], dtype=np.int64),
        "segment_offsets": np.array([s.offset for s in segments], dtype=np.int64),
        "segment_lengths": lengths,
    }
