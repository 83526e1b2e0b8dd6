"""Decode worker processes: streaming, recycling, crashes and hangs cost one video, and the memory bound
of an hour-long clip (3,600 frames) streamed through decode and a batched JAX model handler.
"""

from __future__ import annotations

import os
import time
import tracemalloc

import numpy as np
import pytest
from lwmkit.pipelines.videos.frames import DecodeOptions
from lwmkit.pipelines.videos.index import FrameSampling, VideoError
from lwmkit.pipelines.videos.workers import DecoderPool

from .video_inputs import HERE, frame_levels, read_index, write_clip

FRAME_BYTES = 256 * 256 * 3


FOUR = FrameSampling("count", num_frames=4)


def _job(path, sampling=FOUR, **kw) -> dict:
    return {"path": str(path), "clip": [None, None], "options": DecodeOptions(sampling, **kw).to_json()}


def _frames(pool: DecoderPool, job: dict, budget_s: float = 60.0) -> tuple[dict, np.ndarray]:
    meta, chunks = None, []
    for event in pool.stream(job, budget_s):
        if event[0] == "meta":
            meta = event[1]
        else:
            chunks.append(event[2])
    return meta, np.concatenate(chunks) if chunks else np.zeros((0, 256, 256, 3), np.uint8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("worker-clips")
    return {
        "ok": write_clip(d / "ok.mp4", n=12),
        "crash": write_clip(d / "crash.mp4", n=40),
        "hang": write_clip(d / "hang.mp4", n=4),
    }


def test_frames_stream_in_order_and_workers_are_reused(clips):
    pool = DecoderPool(workers=1, videos_per_worker=3)
    try:
        for _ in range(3):
            meta, frames = _frames(pool, _job(clips["ok"], chunk_frames=3))
            assert meta["frame_indices"] == [0, 3, 7, 11]
            assert [read_index(f) for f in frames] == [0, 3, 7, 11]
        assert pool.started == 1 and pool.recycled == 1  # the third video wore the worker out
        _frames(pool, _job(clips["ok"]))
        assert pool.started == 2
    finally:
        pool.close()


def test_a_relative_path_is_the_senders_even_after_it_changed_folder(clips, tmp_path, monkeypatch):
    # A worker started while the caller sat in one folder decodes a relative path given from
    # another (a later job of the same process, e.g. in a notebook) where the caller means it.
    pool = DecoderPool(workers=1)
    try:
        monkeypatch.chdir(tmp_path)
        _frames(pool, _job(clips["ok"]))  # the worker starts here
        elsewhere = os.path.dirname(clips["ok"])
        monkeypatch.chdir(elsewhere)
        relative = {**_job(os.path.basename(clips["ok"])), "cwd": elsewhere}
        meta, frames = _frames(pool, relative)
        assert pool.started == 1 and [read_index(f) for f in frames] == [0, 3, 7, 11]
        with pytest.raises(VideoError, match="missing_file"):  # without the sender's folder: not found
            _frames(pool, {**relative, "cwd": str(tmp_path)})
    finally:
        pool.close()


def test_a_crash_costs_one_video(clips):
    pool = DecoderPool(task="video_inputs:crash_task", python_path=(HERE,))
    try:
        got = []
        with pytest.raises(VideoError, match="SIGABRT") as e:
            for event in pool.stream(_job(clips["crash"], FrameSampling("count", num_frames=40), chunk_frames=8), 60):
                got.append(event[0])
        assert e.value.reason == "decoder_crashed"
        assert got == ["meta", "frames"]  # one chunk went out before the decoder died
        meta, frames = _frames(pool, _job(clips["ok"]))  # a fresh worker takes the next video
        assert len(frames) == 4 and pool.killed == 1 and pool.started == 2
    finally:
        pool.close()


def test_a_hang_times_out_and_the_worker_is_killed(clips):
    pool = DecoderPool(task="video_inputs:hang_task", python_path=(HERE,))
    try:
        _frames(pool, _job(clips["ok"]))  # warm: the budget below must not cover a worker's start-up
        (worker,) = pool._idle
        start = time.monotonic()
        with pytest.raises(VideoError, match="budget") as e:
            _frames(pool, _job(clips["hang"]), budget_s=1.0)
        assert e.value.reason == "timeout" and time.monotonic() - start < 10
        assert worker.process.poll() is not None and pool.killed == 1
        assert len(_frames(pool, _job(clips["ok"]))[1]) == 4
    finally:
        pool.close()


def test_a_leaking_worker_is_replaced(clips):
    pool = DecoderPool(max_rss_mb=150, task="video_inputs:rss_task", python_path=(HERE,))
    try:
        _frames(pool, {**_job(clips["ok"]), "leak_mb": 0})
        assert pool.recycled == 0 and pool.last_stats["rss_mb"] < 150
        with pytest.raises(VideoError) as e:  # the cap holds during a video, not only after it
            _frames(pool, {**_job(clips["ok"]), "leak_mb": 200})
        assert e.value.reason == "worker_memory" and "over max_worker_rss_mb 150" in e.value.detail
        assert pool.killed == 1 and not pool._idle
        assert len(_frames(pool, {**_job(clips["ok"]), "leak_mb": 0})[1]) == 4  # a fresh worker
        assert pool.started == 2
    finally:
        pool.close()


def test_a_workers_peak_memory_is_its_own_not_its_parents(monkeypatch):
    """`peak_rss_mb` is the process's VmHWM: Linux carries ru_maxrss across execve, so a worker
    started by an 800 MiB Beam process would report 800 MiB before decoding anything."""
    from lwmkit.pipelines.videos import workers

    status = "Name:\tpython\nVmPeak:\t  999999 kB\nVmHWM:\t   11264 kB\nVmRSS:\t    9216 kB\n"
    assert workers._vm_hwm_mb(status) == 11.0 and workers._vm_hwm_mb("Name:\tpython\n") is None
    assert workers.process_peak_rss_mb(os.getpid()) is not None  # this test runs on Linux
    assert workers.process_peak_rss_mb(2**22 + 12345) is None  # no such process
    monkeypatch.setattr(workers, "process_peak_rss_mb", lambda pid="self": 12.5)
    assert workers._stats()["peak_rss_mb"] == 12.5
    monkeypatch.setattr(workers, "process_peak_rss_mb", lambda pid="self": None)  # no /proc: rusage's peak
    assert workers._stats()["peak_rss_mb"] > 0


def test_an_abandoned_stream_kills_its_worker(clips):
    pool = DecoderPool()
    try:
        stream = pool.stream(_job(clips["ok"], FrameSampling("count", num_frames=12), chunk_frames=2), 60)
        assert next(stream)[0] == "meta" and next(stream)[0] == "frames"
        stream.close()  # the caller stops mid-video: the worker's state is unknown
        assert pool.killed == 1 and not pool._idle
    finally:
        pool.close()


def test_errors_of_the_file_keep_the_worker(tmp_path, clips):
    pool = DecoderPool()
    try:
        (tmp_path / "bad.mp4").write_bytes(b"not a video at all" * 10)
        with pytest.raises(VideoError) as e:
            _frames(pool, _job(tmp_path / "bad.mp4"))
        assert e.value.reason == "broken_container" and pool.killed == 0 and len(pool._idle) == 1
    finally:
        pool.close()


def _patch_code_model():
    """A cheap JAX 'tokenizer' for the memory test: the mean of each 16x16 patch as its code."""
    import jax.numpy as jnp

    def apply(params, x):  # [B, 256, 256, 3] uint8 -> [B, 16, 16] int32
        patches = x.astype(jnp.float32).reshape(x.shape[0], 16, 16, 16, 16, 3).mean(axis=(2, 4, 5))
        return jnp.round(patches).astype(jnp.int32)

    return apply, {}


@pytest.mark.slow
def test_an_hour_long_clip_streams_within_the_memory_bound(tmp_path):
    """3,600 frames (an hour at 1 fps) through decode and a batched JaxModelHandler.

    Bound, caller side (traced by tracemalloc): a received chunk (twice while it is read off the
    pipe), the batch being filled, its stacked copy and the copy handed to JAX, plus the results
    (about 1.3 KB a frame): (2 x chunk + 3 x batch) frames x 196,608 bytes + 2 KB x frames
    (+ 2 MiB slack) = 33 MiB here. Holding the frames would take 3,600 x 196,608 = 675 MiB.
    Worker side: its peak resident memory grows by less than 64 MiB over an idle worker's.
    """
    from lwmkit.pipelines.engine.inference import JaxModelHandler

    n, chunk, batch = 3600, 16, 32
    path = write_clip(tmp_path / "hour.mp4", n=n, w=32, h=32, fps=1)
    handler = JaxModelHandler(_patch_code_model, batch_size=batch, example_shape=(256, 256, 3),
                              example_dtype=np.uint8, name="patch-means")
    model = handler.load_model()
    pool = DecoderPool()
    try:
        _frames(pool, _job(write_clip(tmp_path / "warm.mp4", n=2)))
        idle_peak = pool.last_stats["peak_rss_mb"]
        job = _job(path, FrameSampling("count", num_frames=n, max_frames=n), chunk_frames=chunk)
        codes: list[np.ndarray] = []
        pending: list[np.ndarray] = []
        tracemalloc.start()
        try:
            for event in pool.stream(job, 120):
                if event[0] == "meta":
                    assert event[1]["frames"] == n
                    continue
                for frame in event[2]:
                    pending.append(frame.copy())
                    if len(pending) == batch:
                        codes += [r.inference for r in handler.run_inference(pending, model)]
                        pending = []
            codes += [r.inference for r in handler.run_inference(pending, model)] if pending else []
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        worker_peak = pool.last_stats["peak_rss_mb"]
    finally:
        pool.close()
    bound = (2 * chunk + 3 * batch) * FRAME_BYTES + 2048 * n + (2 << 20)
    assert peak < bound, f"caller peak {peak / 2**20:.1f} MiB > bound {bound / 2**20:.1f} MiB"
    assert worker_peak - idle_peak < 64, f"worker peak {worker_peak} MiB, idle {idle_peak} MiB"
    # Every frame arrived once, in order: a frame's left/right halves carry its index's two digits.
    got = np.stack(codes)  # [3600, 16, 16]
    expected = np.array([frame_levels(i) for i in range(n)])  # [3600, 2]
    assert np.abs(got[:, 8, 3] - expected[:, 0]).max() <= 2 and np.abs(got[:, 8, 12] - expected[:, 1]).max() <= 2
    assert os.path.getsize(path) < 1 << 20
