"""The training loader: host sharding, mixtures, exact resume, targets within segments, JAX arrays."""

from __future__ import annotations

import os

import numpy as np
import pytest
from lwmkit.packing import ShardDataSource, make_loader
from lwmkit.packing.batches import shift_targets
from lwmkit.packing.loader import LoaderConfig
from lwmkit.packing.online import online_packed_dataset

from tests.packing.helpers import write_documents_dir, write_packed_dir

LENGTHS = [37, 12, 80, 5, 64, 23, 41, 9, 30, 55, 18, 70, 3, 44, 27, 61]


@pytest.fixture
def packed(tmp_path):
    d = str(tmp_path / "packed")
    write_packed_dir(d, LENGTHS * 3, seq_len=64)
    return d


def _record_keys(batches) -> list[bytes]:
    return [row.tobytes() for b in batches for row in b["tokens"]]


def test_two_hosts_together_see_every_record_once_per_epoch(packed):
    src = ShardDataSource(packed)
    everything = sorted(np.asarray(src[i]["tokens"], np.int32).tobytes() for i in range(len(src)))
    seen = []
    for host in range(2):
        seen += _record_keys(make_loader(packed, 1, seed=4, shard_index=host, shard_count=2))
    assert sorted(seen) == everything
    # Two epochs: each host's share twice, in a new order the second time.
    two = _record_keys(make_loader(packed, 1, seed=4, shard_index=0, shard_count=2, num_epochs=2))
    half = len(two) // 2
    assert sorted(two[:half]) == sorted(two[half:]) and two[:half] != two[half:]


def test_mixture_proportions_match_the_weights(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_packed_dir(a, LENGTHS, seq_len=64)
    write_packed_dir(b, LENGTHS[::-1] * 2, seq_len=64)
    it = make_loader([a, b], 8, weights=[0.75, 0.25], num_epochs=None, seed=1)
    counts = np.zeros(2)
    for _ in range(100):
        counts += np.bincount(next(it)["dataset_index"], minlength=2)
    share = counts[0] / counts.sum()
    assert abs(share - 0.75) < 0.01, share  # stated tolerance: 1 point over 800 rows


@pytest.mark.parametrize("workers", [0, 2])
def test_restored_state_continues_with_byte_identical_batches(packed, workers):
    kw = dict(seed=9, num_epochs=None, worker_count=workers)
    it = make_loader(packed, 4, **kw)
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(6)]
    resumed = make_loader(packed, 4, **kw)
    resumed.set_state(state)
    got = [next(resumed) for _ in range(6)]
    for e, g in zip(expected, got, strict=True):
        assert sorted(e) == sorted(g)
        for key in e:
            assert e[key].tobytes() == g[key].tobytes(), key


def test_targets_never_cross_a_segment_boundary(packed):
    for batch in make_loader(packed, 4, seed=2, drop_remainder=False):
        seg, tok = batch["tokens_segment_ids"], batch["tokens"]
        same = np.zeros_like(seg, dtype=bool)
        same[:, :-1] = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] != 0)
        assert np.all(batch["targets"][~same] == 0)
        assert np.all(batch["target_loss_weights"][~same] == 0)
        assert np.array_equal(batch["targets"][:, :-1][same[:, :-1]], tok[:, 1:][same[:, :-1]])
        np.testing.assert_array_equal(
            batch["target_loss_weights"][:, :-1][same[:, :-1]],
            batch["loss_weights"][:, 1:][same[:, :-1]],
        )


def test_shift_targets_docstring_example_and_single_vocabulary():
    rec = {
        "tokens": np.array([5, 6, 7, 8, 9, 0]),
        "vision_mask": np.array([0, 0, 1, 0, 1, 0], bool),
        "loss_weights": np.array([0, 1, 1, 0, 1, 0], np.float32),
        "tokens_segment_ids": np.array([1, 1, 1, 2, 2, 0]),
        "tokens_positions": np.array([0, 1, 2, 0, 1, 0]),
    }
    out = shift_targets(rec)
    assert out["targets"].tolist() == [6, 7, 0, 9, 0, 0]
    assert out["target_loss_weights"].tolist() == [1, 1, 0, 1, 0, 0]
    one = shift_targets(rec, vision_offset=32000)
    assert one["tokens"].tolist() == [5, 6, 32007, 8, 32009, 0]
    assert one["targets"].tolist() == [6, 32007, 0, 32009, 0, 0]


def test_online_path_gives_the_online_packers_records(tmp_path):
    d = str(tmp_path / "docs")
    write_documents_dir(d, LENGTHS)
    batches = list(
        make_loader(d, 2, online_seq_len=48, online_window=5, seed=3, drop_remainder=False)
    )
    records = list(online_packed_dataset(d, 48, window=5, seed=3))
    rows = [row for b in batches for row in b["tokens"]]
    assert len(rows) == len(records)
    assert all(
        np.array_equal(r, np.asarray(x["tokens"])) for r, x in zip(rows, records, strict=True)
    )


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(weights=(1.0,)), "weights"),
        (dict(num_epochs=0), "num_epochs"),
        (dict(shard_index=0), "go together"),
        (dict(shard_index=2, shard_count=2), "outside"),
        (dict(worker_count=-1), "worker_count"),
    ],
)
def test_bad_loader_options(kw, match):
    with pytest.raises(ValueError, match=match):
        LoaderConfig(directories=("a", "b") if "weights" in kw else ("a",), batch_size=2, **kw)


def test_global_arrays_are_sharded_over_data_and_sequence_axes(packed):
    import jax
    from jax.sharding import Mesh, PartitionSpec
    from lwmkit.packing.device_arrays import to_global_arrays

    devices = np.array(jax.devices()[:8]).reshape(2, 1, 1, 4)
    if devices.size < 8:
        pytest.skip(
            "needs 8 devices (tests/conftest.py sets 8 virtual CPU devices before JAX starts)"
        )
    mesh = Mesh(devices, ("dp", "fsdp", "tp", "sp"))
    batch = next(make_loader(packed, 4, seed=0))
    arrays = to_global_arrays(batch, mesh)
    assert arrays["tokens"].shape == (4, 64)
    assert arrays["tokens"].sharding.spec == PartitionSpec(("dp", "fsdp"), "sp")
    assert np.array_equal(np.asarray(arrays["targets"]), batch["targets"])
    assert arrays["dataset_index"].shape == (4,)
    shard = arrays["tokens"].addressable_shards[0]
    assert shard.data.shape == (2, 16)  # batch over dp=2, sequence over sp=4
    with pytest.raises(ValueError, match="does not divide"):
        to_global_arrays({"tokens": np.zeros((4, 30), np.int32)}, mesh)


@pytest.mark.slow
def test_soak_memory_and_shared_memory_stay_flat(packed):
    """10,000 batches with 2 workers: resident memory and /dev/shm do not grow."""
    import psutil

    def usage() -> tuple[int, int]:
        me = psutil.Process()
        rss = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
        shm = (
            sum(e.stat().st_size for e in os.scandir("/dev/shm") if e.is_file())
            if os.path.isdir("/dev/shm")
            else 0
        )
        return rss, shm

    it = make_loader(packed, 4, seed=0, num_epochs=None, worker_count=2)
    for _ in range(1000):
        next(it)
    rss0, shm0 = usage()
    for _ in range(9000):
        next(it)
    rss1, shm1 = usage()
    assert rss1 - rss0 < max(0.1 * rss0, 64 << 20), (rss0, rss1)
    assert shm1 - shm0 < 16 << 20, (shm0, shm1)


def test_batches_held_from_workers_never_change(packed):
    """Worker batches live in recycled shared memory: one the caller keeps is never reused."""
    it = make_loader(packed, 2, seed=0, num_epochs=None, worker_count=2)
    kept = [next(it) for _ in range(6)]
    copies = [{k: v.copy() for k, v in b.items()} for b in kept]
    for _ in range(40):  # far more batches than the workers' pools hold
        next(it)
    for held, copy in zip(kept, copies, strict=True):
        for k in copy:
            np.testing.assert_array_equal(held[k], copy[k], err_msg=k)
