"""One job per output folder: a lock file with its owner, start time and heartbeat.

`OutputLock(output).acquire()` writes `<output>/.lwm-pack/lock.json`
(`{"owner": "host:pid:uuid", "host", "pid", "started", "heartbeat"}`) and a thread renews the
heartbeat every `heartbeat_s`. A second job on the same output fails at once (`OutputLockedError`,
naming the owner and when it started and last beat). A lock is stale, and is taken over, when
its heartbeat is older than `stale_s` or its owner ran on this host under a pid that no longer
exists (a killed job). `release()` removes the lock if it is still ours. Once the lock is held,
`remove_stale_temps` deletes the temporary files earlier, killed runs left (`.<name>.*.tmp`
from local atomic writes, `<name>.tmp-<hex>` from object-store publishing).

What is guaranteed where:
- Local paths: the lock is created with `O_CREAT | O_EXCL` and a stale one is moved aside with
  `rename` before the new one is created, so of two jobs racing for it exactly one wins.
- Other Beam filesystems (`gs://`, `s3://`, ...): Beam's `FileSystems` offers no create-if-absent,
  so the lock is written, then read back after `settle_s`; a job that reads another owner
  gives up. GCS and S3 read-after-write are strongly consistent, so this catches a second job
  started after the first one's write landed; two jobs that start within the same second can
  still both write, and the one whose heartbeat later finds another owner stops with an error
  when its pipeline ends (`check()`), before anything is marked complete.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from lwmkit.packing.json_input import parse_json
from lwmkit.pipelines.engine.outputs import delete_outputs, is_local, join, list_outputs, read_output_bytes, write_output_bytes

LOCK_DIR = ".lwm-pack"


class OutputLockedError(OSError):
    """Another job holds the output's lock."""


def lock_path(output: str) -> str:
    return join(output, LOCK_DIR, "lock.json")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """The lock of one output folder (see the module docstring)."""

    def __init__(self, output: str, heartbeat_s: float = 15.0, stale_s: float = 120.0, settle_s: float = 1.0):
        if not 0 < heartbeat_s < stale_s:
            raise ValueError(f"heartbeat_s={heartbeat_s} must be > 0 and below stale_s={stale_s}")
        self.output, self.path = output, lock_path(output)
        self.heartbeat_s, self.stale_s, self.settle_s = heartbeat_s, stale_s, settle_s
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:12]}"
        self.started = time.time()
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps({"owner": self.owner, "host": self.host, "pid": self.pid,
                           "started": self.started, "heartbeat": time.time()}, sort_keys=True).encode()

    def _read(self) -> dict[str, Any] | None:
        raw = read_output_bytes(self.path)
        if raw is None:
            return None
        try:
            return parse_json(raw, self.path)
        except ValueError:
            return {}  # a damaged lock (a crash mid-write on a filesystem without rename) is stale

    def stale_reason(self, held: dict[str, Any]) -> str | None:
        """Why the lock `held` may be taken over, or None while its owner is alive."""
        beat = held.get("heartbeat")
        if not isinstance(beat, int | float):
            return "it is damaged"
        if time.time() - beat > self.stale_s:
            return f"its heartbeat is {time.time() - beat:.0f}s old"
        pid = held.get("pid")
        if held.get("host") == self.host and isinstance(pid, int) and pid != self.pid and not _pid_alive(pid):
            return f"its process {pid} on this host is gone"
        return None

    def _refuse(self, held: dict[str, Any]) -> OutputLockedError:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(held.get("started", 0)))
        return OutputLockedError(
            f"{self.output} is in use by another lwm-pack job ({held.get('owner')}, started {started}, "
            f"last heartbeat {time.time() - held.get('heartbeat', 0):.0f}s ago); wait for it to end, or if it "
            f"is dead, its lock {self.path} is taken over once its heartbeat is {self.stale_s:.0f}s old"
        )

    def acquire(self) -> str | None:
        """Takes the lock; returns why an earlier lock was taken over (None if there was none).

        Raises:
          OutputLockedError: another live job holds it.
        """
        took_over = self._acquire_local() if is_local(self.output) else self._acquire_remote()
        self._thread = threading.Thread(target=self._beat, name="lwm-pack-lock", daemon=True)
        self._thread.start()
        return took_over

    def _acquire_local(self) -> str | None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        took_over = None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self._read() or {}
                if (reason := self.stale_reason(held)) is None:
                    raise self._refuse(held) from None
                aside = f"{self.path}.stale-{uuid.uuid4().hex}"
                try:
                    os.rename(self.path, aside)  # one of several racing takers wins the rename
                    os.remove(aside)
                except FileNotFoundError:
                    pass
                took_over = f"took over the lock of {held.get('owner')}: {reason}"
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(self._record())
            return took_over
        raise OutputLockedError(f"{self.output}: could not take its lock {self.path} (other jobs keep taking it)")

    def _acquire_remote(self) -> str | None:
        held = self._read()
        took_over = None
        if held is not None:
            if (reason := self.stale_reason(held)) is None:
                raise self._refuse(held)
            took_over = f"took over the lock of {held.get('owner')}: {reason}"
        write_output_bytes(self.path, self._record())
        time.sleep(self.settle_s)
        now = self._read() or {}
        if now.get("owner") != self.owner:
            raise self._refuse(now)
        return took_over

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                held = self._read() or {}
                if held.get("owner") != self.owner:
                    self.lost = f"another job ({held.get('owner')}) took the lock {self.path}"
                    return
                write_output_bytes(self.path, self._record())
            except Exception:  # a transient storage error: try again at the next beat
                continue

    def check(self) -> None:
        """Raises OutputLockedError if the lock was taken by another job while this one ran."""
        if self.lost:
            raise OutputLockedError(f"{self.output}: {self.lost} while this job ran; its results are not trusted")

    def release(self) -> None:
        """Stops the heartbeat and removes the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held = self._read()
        if held is not None and held.get("owner") == self.owner:
            delete_outputs([self.path])


def remove_stale_temps(output: str) -> list[str]:
    """Deletes the temporary files of earlier runs under `output` (call only while holding its lock)."""
    if is_local(output):
        found = []
        for folder, _, names in os.walk(output):
            found += [os.path.join(folder, n) for n in names
                      if (n.startswith(".") and n.endswith(".tmp")) or ".tmp-" in n]
    else:
        found = []
        for depth in range(4):
            found += list_outputs(join(output, *(["*"] * depth), "*.tmp-*"))
    delete_outputs(found)
    return found
