"""The "balanced" ring layout for packed records: a per-row permutation that evens out each device's work.

The work is counted exactly (`permuted_work`: the block pairs the ring kernel runs, causal and
segment-masked), so these tests check the layout's promise directly: on packed rows of 32
documents over 8 devices the busiest device does <= 1.15x the average (zigzag: 1.6-2.2x), the
layout is a permutation made of whole blocks in their original order, the same row always gives
the same layout, and `layout_batch` / `restore_order` carry every field there and back.
"""

from __future__ import annotations

import numpy as np
import pytest
from lwmkit.lwm_model.balance import balanced_permutation, balanced_permutations
from lwmkit.lwm_model.layout import attention_work, busiest_over_average, permuted_work, restore_order
from lwmkit.lwm_model.mesh import layout_batch

from tests.lwm_model.test_layout import packed_segments

T, RING, BLOCK = 2048, 8, 16


def _rows(count: int = 3, docs: int = 32) -> np.ndarray:
    rng = np.random.default_rng(11)
    return np.stack([packed_segments(rng, T, docs, pad=64 * i) for i in range(count)])


def _balance(seg: np.ndarray, perm: np.ndarray, causal: bool = True) -> float:
    return busiest_over_average(permuted_work(seg[perm][None], perm, RING, BLOCK, causal))


def test_packed_rows_of_32_documents_are_balanced_where_zigzag_is_not():
    for seg in _rows():
        perm = balanced_permutation(seg, RING, BLOCK)
        zigzag = busiest_over_average(attention_work(seg, RING, "zigzag", BLOCK))
        balanced = _balance(seg, perm)
        assert zigzag > 1.4, zigzag  # the problem this layout solves
        assert balanced <= 1.15, (balanced, zigzag)
        # Moving whole blocks never changes which pairs are computed, only who computes them.
        assert permuted_work(seg[perm][None], perm, RING, BLOCK).sum() == attention_work(seg, RING, "contiguous",
                                                                                          BLOCK).sum()


def test_the_layout_is_a_permutation_of_whole_blocks_kept_in_order_on_each_device():
    seg = _rows(1)[0]
    perm = balanced_permutation(seg, RING, BLOCK)
    assert sorted(perm.tolist()) == list(range(T))
    blocks = perm.reshape(-1, BLOCK)
    assert (blocks == blocks[:, :1] + np.arange(BLOCK)).all() and (blocks[:, 0] % BLOCK == 0).all()
    for device in perm.reshape(RING, -1):  # each device's tokens in their original order
        assert (np.diff(device) > 0).all()


def test_never_worse_than_zigzag_on_one_causal_document_and_deterministic():
    seg = np.ones(T, np.int32)
    perm = balanced_permutation(seg, RING, BLOCK)
    assert _balance(seg, perm) <= busiest_over_average(attention_work(seg, RING, "zigzag", BLOCK)) + 1e-9
    np.testing.assert_array_equal(perm, balanced_permutation(seg, RING, BLOCK))
    packed = _rows(1)[0]
    np.testing.assert_array_equal(balanced_permutation(packed, RING, BLOCK), balanced_permutation(packed, RING, BLOCK))
    # Non-causal work is balanced too (every device's keys are seen by every device of its documents).
    assert _balance(packed, balanced_permutation(packed, RING, BLOCK, causal=False), causal=False) <= 1.15


def test_all_padding_and_one_device_give_the_identity():
    np.testing.assert_array_equal(balanced_permutation(np.zeros(T, np.int32), RING, BLOCK), np.arange(T))
    np.testing.assert_array_equal(balanced_permutation(_rows(1)[0], 1, BLOCK), np.arange(T))


def test_layout_batch_carries_every_field_and_restore_order_undoes_it():
    seg = _rows(2)
    rng = np.random.default_rng(0)
    batch = {
        "tokens": rng.integers(0, 100, seg.shape).astype(np.int32),
        "tokens_segment_ids": seg,
        "tokens_positions": rng.integers(0, 100, seg.shape).astype(np.int32),
        "loss_weights": rng.random(seg.shape).astype(np.float32),
        "extra": rng.random((2, T, 3)),  # a trailing feature axis moves with its token
        "row_id": np.arange(2),  # no sequence axis: kept as it is
    }
    laid = layout_batch(batch, "balanced", RING, BLOCK)
    np.testing.assert_array_equal(laid["token_index"], balanced_permutations(seg, RING, BLOCK))
    assert laid["token_index"].dtype == np.int32
    np.testing.assert_array_equal(laid["row_id"], batch["row_id"])
    for key in ("tokens", "tokens_segment_ids", "tokens_positions", "loss_weights", "extra"):
        np.testing.assert_array_equal(restore_order(laid[key], laid["token_index"]), batch[key], err_msg=key)
    with pytest.raises(ValueError, match="pass block="):
        layout_batch(batch, "balanced", RING)


def test_bad_sizes_name_the_problem():
    seg = _rows(1)[0]
    with pytest.raises(ValueError, match="unit=24 must be a multiple of the blocks"):
        balanced_permutation(seg, RING, BLOCK, unit=24)
    with pytest.raises(ValueError, match="one row"):
        balanced_permutation(seg[None], RING, BLOCK)
    with pytest.raises(ValueError, match="ring"):
        balanced_permutation(seg[:2046], RING, BLOCK)
