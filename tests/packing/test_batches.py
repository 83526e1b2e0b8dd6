"""TrainingBatch: the loader's batch function equals shift_targets and never recycles a held batch."""

import gc
import pickle

import numpy as np
import pytest
from lwmkit.packing.batches import BATCH_FIELDS, TrainingBatch, shift_targets
from lwmkit.packing.records import PACKED_TOKEN_FIELDS


def _record(rng: np.random.Generator, seq: int, dataset_index: int = 0) -> dict:
    cuts = np.sort(rng.choice(np.arange(1, seq), size=3, replace=False))
    seg = np.zeros(seq, dtype=np.int32)
    pos = np.zeros(seq, dtype=np.int32)
    start = 0
    for s, end in enumerate([*cuts[:2], cuts[2]], start=1):  # three segments, then padding
        seg[start:end] = s
        pos[start:end] = np.arange(end - start)
        start = end
    return {
        "tokens": rng.integers(1, 9000, seq).astype(np.int32) * (seg > 0),
        "vision_mask": (rng.random(seq) < 0.3) & (seg > 0),
        "loss_weights": rng.random(seq).astype(np.float32) * (seg > 0),
        "tokens_segment_ids": seg,
        "tokens_positions": pos,
        "dataset_index": np.int32(dataset_index),
    }


@pytest.mark.parametrize("offset", [None, 32000])
def test_batch_equals_shift_targets_of_the_stacked_records(offset):
    rng = np.random.default_rng(0)
    records = [_record(rng, 64, i % 2) for i in range(5)]
    batch = TrainingBatch(offset)(records)
    stacked = {k: np.stack([r[k] for r in records]) for k in PACKED_TOKEN_FIELDS}
    expected = shift_targets(stacked, offset)
    assert set(batch) == set(BATCH_FIELDS) | {"dataset_index"}
    for k, v in expected.items():
        assert batch[k].dtype == v.dtype, k
        np.testing.assert_array_equal(batch[k], v, err_msg=k)
    np.testing.assert_array_equal(batch["dataset_index"], [0, 1, 0, 1, 0])


def test_a_held_batch_is_never_overwritten_and_a_released_one_is_reused():
    rng = np.random.default_rng(1)
    make = TrainingBatch()
    first = make([_record(rng, 32) for _ in range(2)])
    kept = {k: v.copy() for k, v in first.items()}
    view = first["targets"][0, :4]  # a view alone keeps the buffers out of reuse
    del first
    gc.collect()
    second = make([_record(rng, 32) for _ in range(2)])
    assert not np.shares_memory(second["targets"], view)
    np.testing.assert_array_equal(view, kept["targets"][0, :4])
    buffers = second["tokens"]
    del second, buffers, view
    pooled = [id(b["tokens"]) for b in make._pool]
    assert len(pooled) == 2
    third = make([_record(rng, 32) for _ in range(2)])
    # Both earlier sets are free again; one of them is reused rather than a third allocated.
    assert id(third["tokens"]) in pooled and len(make._pool) == 2


def test_mixed_sequence_lengths_are_refused():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="mixes sequence lengths 32 and 16"):
        TrainingBatch()([_record(rng, 32), _record(rng, 16)])


def test_shared_memory_output_hands_over_batches_without_a_copy_and_never_reuses_a_held_one():
    from lwmkit.packing.shared_batches import OpenSharedBatch, SharedBatch

    rng = np.random.default_rng(3)
    make = TrainingBatch()
    make.enable_shared_memory_output()
    worker = pickle.loads(pickle.dumps(make))  # how Grain ships it to a worker process
    open_batch = OpenSharedBatch()
    records = [_record(rng, 48) for _ in range(3)]
    ref = worker(records)
    assert isinstance(ref, SharedBatch)
    held = open_batch(pickle.loads(pickle.dumps(ref)))  # what crosses the process boundary
    expected = TrainingBatch()(records)
    assert set(held) == set(expected)
    for k in expected:
        np.testing.assert_array_equal(held[k], expected[k], err_msg=k)
    # While `held` lives, its segment is in use: the next batch goes elsewhere.
    second = worker([_record(rng, 48) for _ in range(3)])
    assert second.name != ref.name
    np.testing.assert_array_equal(held["targets"], expected["targets"])
    tokens = held["tokens"]
    del held
    third = worker([_record(rng, 48) for _ in range(3)])
    assert third.name != ref.name  # a view (`tokens`) still holds the first segment
    del tokens
    gc.collect()
    fourth = worker([_record(rng, 48) for _ in range(3)])
    assert fourth.name == ref.name  # released: reused, no new segment
