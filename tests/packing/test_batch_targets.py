"""TrainingBatch's targets equal shift_targets' for any segment ids, not only packed-record layouts."""

import numpy as np
import pytest
from lwmkit.packing.batches import TrainingBatch, shift_targets
from lwmkit.packing.records import PACKED_TOKEN_FIELDS


def _arbitrary_record(rng: np.random.Generator, seq: int) -> dict:
    # Segment ids in random runs, padding (0) anywhere, an id reused after another: the targets
    # must follow the definition even where a packed record never looks like this.
    seg = np.repeat(rng.integers(0, 4, seq), rng.integers(1, 6, seq))[:seq].astype(np.int32)
    return {
        "tokens": rng.integers(1, 9000, seq).astype(np.int32),
        "vision_mask": rng.random(seq) < 0.3,
        "loss_weights": rng.random(seq).astype(np.float32),
        "tokens_segment_ids": seg,
        "tokens_positions": rng.integers(0, seq, seq).astype(np.int32),
        "dataset_index": np.int32(0),
    }


@pytest.mark.parametrize("seq", [1, 2, 7, 300])
@pytest.mark.parametrize("offset", [None, 32000])
def test_targets_follow_the_definition_for_any_segment_ids(seq, offset):
    rng = np.random.default_rng(seq)
    for _ in range(5):
        records = [_arbitrary_record(rng, seq) for _ in range(4)]
        batch = TrainingBatch(offset)(records)
        expected = shift_targets(
            {k: np.stack([r[k] for r in records]) for k in PACKED_TOKEN_FIELDS}, offset
        )
        for k, v in expected.items():
            np.testing.assert_array_equal(batch[k], v, err_msg=k)
