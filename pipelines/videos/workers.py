"""Decode worker processes: a crashing, hanging or leaking decoder costs one video, never the job.

`DecoderPool.stream(job, budget_s)` hands one video to a worker process (a fresh `python -c`
started with subprocess: nothing of the caller's JAX or Beam state is inherited, and unlike
multiprocessing's spawn it never re-imports the caller's `__main__`) and yields what the worker's
task (`video_frames.decode_video` by default) yields, as it arrives:

    ("meta", {...})                            once, first
    ("frames", first position, uint8 [k, 256, 256, 3])   chunks of at most `chunk_frames` frames

and raises `VideoError` for a failed video. Besides the task's own reasons:

    decoder_crashed  the worker died (a segfault, an abort, the kernel's OOM killer): exit code or signal
    timeout          the job waited on the worker longer than `budget_s` in total (time the caller
                     spends between frames, e.g. running the VQGAN, is not counted); the worker is killed
    decode_error     the task raised something other than `VideoError` (a bug, not the file's fault)

Workers are recycled: one that finished `videos_per_worker` videos, or whose resident memory passed
`max_rss_mb`, is stopped and a fresh one takes its place; the cap is also checked after every
chunk of frames, so a video that drives its worker past it mid-way is dropped (`worker_memory`)
and the worker killed, rather than growing until the machine runs out; one that crashed, timed out or was
abandoned mid-video (the caller stopped iterating) is killed. Frames cross the pipe as raw bytes
(no pickle of large data); control messages are small tuples between our own processes.

Memory bound of one stream, whatever the video's length: the worker holds its decoder, at most one
chunk of source frames and one chunk of 256x256 frames being built, and blocks on the pipe while
the caller still holds the previous chunk; the caller holds one received chunk (two copies while
it is read off the pipe): at most 2 x `chunk_frames` x 196,608 bytes of frames on each side.
tests/pipelines/test_video_workers.py measures it on 3,600 frames.

Example:
    pool = DecoderPool(workers=1)
    for event in pool.stream({"path": "clip.mp4", "clip": [None, None], "options": options.to_json()}, 60.0):
        ...  # ("meta", {...}) then ("frames", 0, uint8 [16, 256, 256, 3]), ("frames", 16, ...)
"""

from __future__ import annotations

import atexit
import importlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from lwmkit.pipelines.videos.index import VideoError

DEFAULT_TASK = "lwmkit.pipelines.videos.frames:decode_video"


def process_rss_mb(pid: int) -> float | None:
    """Resident memory of process `pid` in MiB (None where /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak, where /proc is missing


def process_peak_rss_mb(pid: int | str = "self") -> float | None:
    """Peak resident memory of process `pid` in MiB since it started its program (`VmHWM`), or None.

    Not `getrusage(...).ru_maxrss`: Linux carries that across `execve`, so a worker started by an
    800 MiB Beam process reports 800 MiB before it has decoded anything (and so does the parent's
    `RUSAGE_CHILDREN` once the worker is reaped).
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            return _vm_hwm_mb(f.read())
    except OSError:
        return None


def _vm_hwm_mb(status: str) -> float | None:
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return None


def _stats() -> dict[str, float]:
    peak = process_peak_rss_mb()
    if peak is None:  # no /proc: the rusage peak, which may include the parent's at the worker's start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rss_mb": round(_rss_mb(), 1), "peak_rss_mb": round(peak, 1)}


def _load_task(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def worker_main(conn, task_spec: str) -> None:
    """The worker process: runs jobs from `conn` until it is told to stop (None) or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    task = _load_task(task_spec)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            for event in task(job):
                if event[0] == "frames":
                    _, start, frames = event
                    frames = np.ascontiguousarray(frames, dtype=np.uint8)
                    conn.send(("frames", int(start), frames.shape))
                    conn.send_bytes(memoryview(frames).cast("B"))
                else:
                    conn.send(event)
            conn.send(("done", _stats()))
        except VideoError as e:
            conn.send(("error", e.reason, e.detail, _stats()))
        except Exception as e:  # noqa: BLE001 - reported to the parent, which drops the video
            conn.send(("error", "decode_error", f"{type(e).__name__}: {e}", _stats()))


_CHILD = "import sys; from lwmkit.pipelines.videos.workers import _child_main; _child_main(sys.argv[1:])"


def _child_main(argv: list[str]) -> None:
    """Entry point of a worker process: `python -c _CHILD <fd> <task> [python path entries...]`."""
    import sys
    from multiprocessing.connection import Connection

    fd, task_spec, *path = argv
    sys.path[:0] = path
    worker_main(Connection(int(fd)), task_spec)


class _Worker:
    """One worker process, started with subprocess (not multiprocessing, which would re-import the
    caller's __main__) and spoken to over a socket pair with multiprocessing's Connection framing."""

    def __init__(self, task_spec: str, python_path: tuple[str, ...]):
        parent, child = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(child.fileno()), task_spec, *python_path],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self.videos = 0

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
        self.conn.close()

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait()
        self.conn.close()


def _death(process: subprocess.Popen) -> str:
    try:
        code = process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        return "the worker closed its pipe"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class DecoderPool:
    """Decode worker processes shared by every stream of one process; see the module docstring.

    Args:
      workers: the most processes running at once (a stream waits for a free one).
      videos_per_worker: recycle a worker after this many videos.
      max_rss_mb: recycle a worker whose resident memory passed this after a video.
      task: "module:function" the workers run, a generator of the events above for one job dict.
      python_path: folders put first on the workers' sys.path (to find a `task` outside lwmkit).
    """

    def __init__(
        self,
        workers: int = 1,
        videos_per_worker: int = 32,
        max_rss_mb: float = 4096,
        task: str = DEFAULT_TASK,
        python_path: tuple[str, ...] = (),
    ):
        if workers < 1 or videos_per_worker < 1 or max_rss_mb <= 0:
            raise ValueError(f"DecoderPool: workers {workers}, videos_per_worker {videos_per_worker} and "
                             f"max_rss_mb {max_rss_mb} must be positive")
        self.workers = workers
        self.videos_per_worker = videos_per_worker
        self.max_rss_mb = max_rss_mb
        self.task = task
        self.python_path = tuple(python_path)
        self._idle: list[_Worker] = []
        self._busy = threading.Semaphore(workers)
        self._lock = threading.Lock()
        self.started = 0  # workers ever started (tests and metrics read it)
        # the worker's memory after the last video it finished: rss_mb now, peak_rss_mb its own peak
        self.last_stats: dict[str, float] | None = None
        self.recycled = 0
        self.killed = 0

    def _acquire(self) -> _Worker:
        self._busy.acquire()
        with self._lock:
            while self._idle:
                w = self._idle.pop()
                if w.alive():
                    return w
                w.kill()
            self.started += 1
        try:
            return _Worker(self.task, self.python_path)
        except BaseException:
            self._busy.release()
            raise

    def _release(self, w: _Worker, stats: dict[str, float] | None) -> None:
        self.last_stats = stats
        w.videos += 1
        worn = w.videos >= self.videos_per_worker or (stats or {}).get("rss_mb", 0.0) > self.max_rss_mb
        if worn:
            self.recycled += 1
            w.stop()
        else:
            with self._lock:
                self._idle.append(w)
        self._busy.release()

    def _discard(self, w: _Worker) -> None:
        self.killed += 1
        w.kill()
        self._busy.release()

    def stream(self, job: dict[str, Any], budget_s: float) -> Iterator[tuple]:
        """Runs one job on a worker; yields its events; see the module docstring.

        Raises:
          VideoError: the task's reason, decoder_crashed, timeout or decode_error.
        """
        w = self._acquire()
        waited = 0.0
        healthy = False
        stats = None

        def receive(what: str, recv):
            nonlocal waited
            t0 = time.monotonic()
            ready = w.conn.poll(max(0.0, budget_s - waited))
            waited += time.monotonic() - t0
            if not ready:
                raise VideoError("timeout", f"no {what} from the decoder within the {budget_s:g}s budget")
            try:
                out = recv()
            except (EOFError, OSError, ConnectionError) as e:
                raise VideoError("decoder_crashed", f"the decode worker died ({_death(w.process)})") from e
            return out

        try:
            try:
                w.conn.send(job)
            except (OSError, ValueError) as e:
                raise VideoError("decoder_crashed", f"the decode worker died ({_death(w.process)})") from e
            while True:
                msg = receive("message", w.conn.recv)
                kind = msg[0]
                if kind == "frames":
                    _, start, shape = msg
                    data = receive("frames", w.conn.recv_bytes)
                    rss = process_rss_mb(w.process.pid)
                    if rss is not None and rss > self.max_rss_mb:  # checked during a video, not only after
                        raise VideoError("worker_memory", f"the decode worker reached {rss:.0f} MiB mid-video, "
                                         f"over max_worker_rss_mb {self.max_rss_mb:g}")
                    yield "frames", start, np.frombuffer(data, np.uint8).reshape(shape)
                elif kind == "meta":
                    yield msg
                elif kind == "done":
                    healthy, stats = True, msg[1]
                    return
                elif kind == "error":
                    healthy, stats = True, msg[3]
                    raise VideoError(msg[1], msg[2])
                else:
                    raise VideoError("decode_error", f"unexpected message {kind!r} from the decode worker")
        finally:
            if healthy:
                self._release(w, stats)
            else:  # crashed, timed out, or abandoned mid-video: its state is unknown
                self._discard(w)

    def close(self) -> None:
        """Stops the idle workers (busy ones are stopped when their stream ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for w in idle:
            w.stop()


_POOLS: dict[tuple, DecoderPool] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(
    workers: int, videos_per_worker: int, max_rss_mb: float, task: str = DEFAULT_TASK, python_path: tuple[str, ...] = ()
) -> DecoderPool:
    """The process-wide pool for these settings (Beam DoFns of one worker process share it)."""
    key = (workers, videos_per_worker, max_rss_mb, task, tuple(python_path))
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = DecoderPool(workers, videos_per_worker, max_rss_mb, task, tuple(python_path))
        return _POOLS[key]


@atexit.register
def close_shared_pools() -> None:
    """Stops the idle workers of every shared pool (at exit; benchmarks call it to reap their CPU time)."""
    for pool in list(_POOLS.values()):
        pool.close()
