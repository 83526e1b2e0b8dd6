"""The Grain loader over packed shards.

Grain worker processes are spawned, not forked: they unpickle the data source and the operations,
which live in the installed `lwmkit` package, so nothing here has to be importable in a worker.
The dataset-writing helper sits in `helpers.py` and runs in this process only.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
from lwmkit.packing import make_loader
from lwmkit.packing.batches import TARGET_FIELDS
from lwmkit.packing.records import PACKED_TOKEN_FIELDS
from lwmkit.packing.source import ShardDataSource

from .helpers import write_documents_dir, write_packed_dir

SEQ_LEN = 8
LENGTHS = [5, 9, 3, 2, 7, 8, 1, 4, 6, 6, 2, 3, 12, 15, 8, 5]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader") / "packed-8"
    records = write_packed_dir(str(d), LENGTHS, seq_len=SEQ_LEN, num_shards=3)
    return str(d), records


def _index(records) -> dict[tuple, int]:
    index = {tuple(r["tokens"].tolist()): i for i, r in enumerate(records)}
    assert len(index) == len(records)  # every record is told apart by its tokens
    return index


def _order(batches, records) -> list[int]:
    """The record indices the batches hold, in order, checking every field against the record."""
    index = _index(records)
    order = []
    for batch in batches:
        for row in range(batch["tokens"].shape[0]):
            i = index[tuple(batch["tokens"][row].tolist())]
            for name in PACKED_TOKEN_FIELDS:
                np.testing.assert_array_equal(batch[name][row], records[i][name], err_msg=name)
            order.append(i)
    return order


def test_batches_are_batch_by_seq_len(packed):
    d, records = packed
    batches = list(make_loader(d, batch_size=3, seed=0))
    assert len(batches) == len(records) // 3  # drop_remainder
    for batch in batches:
        assert set(batch) == {*PACKED_TOKEN_FIELDS, *TARGET_FIELDS, "dataset_index"}
        for name, (dtype, _, _) in PACKED_TOKEN_FIELDS.items():
            assert isinstance(batch[name], np.ndarray)
            assert batch[name].shape == (3, SEQ_LEN), name
            assert batch[name].dtype == np.dtype(dtype), name
    order = _order(batches, records)
    assert len(set(order)) == len(order)


@pytest.mark.parametrize("worker_count", [0, 2])
def test_every_record_once_per_epoch(packed, worker_count):
    d, records = packed
    batches = list(
        make_loader(d, batch_size=2, seed=3, worker_count=worker_count, drop_remainder=False)
    )
    for batch in batches:
        assert batch["tokens"].ndim == 2 and batch["tokens"].shape[1] == SEQ_LEN
        assert batch["tokens"].shape[0] in (1, 2)
        assert all(batch[name].shape == batch["tokens"].shape for name in PACKED_TOKEN_FIELDS)
    order = _order(batches, records)
    assert sorted(order) == list(range(len(records)))
    assert order != list(range(len(records)))  # shuffled


def test_each_epoch_is_a_permutation(packed):
    d, records = packed
    n = len(records)
    order = _order(make_loader(d, batch_size=1, seed=7, num_epochs=3), records)
    assert len(order) == 3 * n
    epochs = [order[e * n : (e + 1) * n] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(n))
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled between epochs


def test_shuffle_follows_the_seed(packed):
    d, records = packed

    def order(**kw):
        return _order(make_loader(d, batch_size=1, **kw), records)

    assert order(seed=1) == order(seed=1)
    assert order(seed=1) != order(seed=2)
    assert order(shuffle=False) == list(range(len(records)))


def test_repeats_forever_without_num_epochs(packed):
    d, records = packed
    loader = make_loader(d, batch_size=4, num_epochs=None, shuffle=False)
    counts = collections.Counter()
    for _ in range(3 * len(records) // 4 + 1):
        counts.update(_order([next(loader)], records))
    assert set(counts) == set(range(len(records)))


def test_drop_remainder_false_keeps_the_last_batch(packed):
    d, records = packed
    n = len(records)
    assert n % 5  # the last batch is partial
    loader = make_loader(d, batch_size=5, shuffle=False, drop_remainder=False)
    assert [b["tokens"].shape[0] for b in loader] == [5] * (n // 5) + [n % 5]
    loader = make_loader(d, batch_size=5, shuffle=False)
    assert [b["tokens"].shape[0] for b in loader] == [5] * (n // 5)


def test_rejects_a_documents_directory(tmp_path):
    d = str(tmp_path / "documents")
    write_documents_dir(d, [3, 4, 5])
    with pytest.raises(ValueError, match="holds document records"):
        make_loader(d, batch_size=1)


def test_rejects_batch_size_below_one(packed):
    d, _ = packed
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(d, batch_size=0)


@pytest.mark.parametrize("worker_count", [0, 2])
def test_records_that_cross_shard_blocks_arrive_whole(tmp_path, worker_count):
    # 8K-token records are 139 KB: each crosses 64 KiB block headers, so the mmap reader copies
    # them into recycled buffers, in Grain's worker processes too.
    d = str(tmp_path / "packed-8192")
    records = write_packed_dir(d, [3000, 9000, 500, 12000, 7000, 4000, 8192, 6000], seq_len=8192)
    assert ShardDataSource(d).reader_modes == {"mmap": 2}
    loader = make_loader(
        d, batch_size=2, seed=5, worker_count=worker_count, num_epochs=2, drop_remainder=False
    )
    batches = list(loader)
    order = _order(batches, records)
    assert sorted(order) == sorted(list(range(len(records))) * 2)
