"""Live stage counts while a job runs: every worker process reports, the launcher sums and shows.

The channel is a folder the launcher chose (`progress_folder`: `<output>/.lwm-pack/progress/` for
a local output; a local temporary folder for a remote output on a local runner; none otherwise).
A stage (`stages.StageDoFn`) adds each record's counts to its process's running totals (`count`)
and writes them, at most every `FLUSH_S` seconds and at the end of every bundle (`flush`), to its
own file `<host>-<pid>-<id>.json` `{stage: [seen, kept, dropped]}` (write, then rename: a reader
never sees half a file). This works for every runner whose workers share the launcher's disk
(the DirectRunner in both modes, a local Dask cluster, portable workers on this machine); a worker
that cannot write there just stays silent, and the job never depends on it. In the launcher's own
process (the in-memory DirectRunner) the totals are read directly, no file is written.

`ProgressWatch` runs around the pipeline: it empties the folder, sums every file (and its own
process's totals) every `interval_s` and shows, in the job's stage order, each stage's records
in, out, dropped and its rate (records in per second since the start) with `rich`: a live table
on a terminal; otherwise a plain `[lwm-pack] stage: ...` line per stage every `lines_every_s`
(logs). On the way out it takes a last sum (`totals`), stops the display and removes the folder;
the job then prints the manifest's final counts.

Example (what `lifecycle._run_locked` does):
    with ProgressWatch(folder, ("read", "tokenize")), beam.Pipeline(options=o) as p:
        build(p)
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from lwmkit.pipelines.engine.output_lock import LOCK_DIR
from lwmkit.pipelines.engine.outputs import is_local, join

FLUSH_S = 1.0
LOCAL_RUNNERS = ("DirectRunner", "DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner")

Totals = dict[str, list[int]]  # stage -> [seen, kept, dropped]

_lock = threading.Lock()  # guards the totals below
_write_lock = threading.Lock()  # orders the writes of one process: a later snapshot is never overwritten
_state: dict[str, Any] = {"pid": None}


def progress_folder(options: Any) -> str | None:
    """Where the workers of the job `options` (a `runner.RunOptions` with `output`) report, or None.

    None without `options.progress`, and for a remote output run by a remote runner (its workers
    cannot reach a folder of this machine).
    """
    if not options.progress:
        return None
    if is_local(options.output):
        return join(options.output, LOCK_DIR, "progress")
    remote_dask = any(a.startswith("--dask_client_address") for a in options.beam_args)
    if options.runner in LOCAL_RUNNERS and not remote_dask:
        digest = hashlib.sha256(options.output.encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), "lwm-pack-progress", digest)
    return None


def _process_state() -> dict[str, Any]:
    """This process's totals; a forked child starts from none (its parent's are not its own)."""
    if _state["pid"] != os.getpid():
        _state.update(pid=os.getpid(), totals={}, flushed={}, watched=set(),
                      name=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
    return _state


def count(folder: str, stage: str, seen: int, kept: int, dropped: int) -> None:
    """Adds one record's counts to this process's totals for `stage`."""
    with _lock:
        t = _process_state()["totals"].setdefault(folder, {}).setdefault(stage, [0, 0, 0])
        t[0], t[1], t[2] = t[0] + seen, t[1] + kept, t[2] + dropped


def flush(folder: str, force: bool = False) -> None:
    """Writes this process's totals to its file in `folder` (unless written less than `FLUSH_S`
    ago, or `force`). Never raises: a missing folder (the job ended, or another machine) is silence."""
    with _write_lock:
        with _lock:
            state = _process_state()
            now = time.monotonic()
            if folder in state["watched"] or (not force and now - state["flushed"].get(folder, -FLUSH_S) < FLUSH_S):
                return
            state["flushed"][folder] = now
            data = json.dumps(state["totals"].get(folder, {}), sort_keys=True)
            path = os.path.join(folder, state["name"])
        with contextlib.suppress(OSError):
            with open(path + ".part", "w") as f:
                f.write(data)
            os.replace(path + ".part", path)


def read_totals(folder: str) -> Totals:
    """The sum of every worker's file in `folder` and this process's own totals."""
    total: Totals = {}
    parts: list[dict] = []
    for path in glob.glob(os.path.join(folder, "*.json")):
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                parts.append(json.load(f))
    with _lock:
        state = _process_state()
        if folder in state["watched"]:
            parts.append({s: list(v) for s, v in state["totals"].get(folder, {}).items()})
    for part in parts:
        for stage, values in part.items():
            t = total.setdefault(stage, [0, 0, 0])
            for i in range(3):
                t[i] += int(values[i])
    return total


def ordered(totals: Totals, order: Sequence[str]) -> list[tuple[str, list[int]]]:
    """`(stage, [seen, kept, dropped])` in the job's stage order (every stage of `order`, zeros for one
    that saw nothing yet), then stages not in `order`, sorted."""
    names = list(order) + sorted(set(totals) - set(order))
    return [(s, totals.get(s, [0, 0, 0])) for s in names]


def _rate(seen: int, elapsed: float) -> str:
    return f"{seen / elapsed:.1f}/s" if elapsed > 0 else "-"


def count_lines(totals: Totals, order: Sequence[str], elapsed: float) -> list[str]:
    """One plain line per stage: `read: 10 in, 42 out, 0 dropped, 3.3/s`."""
    return [f"{s}: {v[0]} in, {v[1]} out, {v[2]} dropped, {_rate(v[0], elapsed)}" for s, v in ordered(totals, order)]


def count_table(totals: Totals, order: Sequence[str], elapsed: float):
    """The live display: a rich Table of the stages in order."""
    from rich.table import Table

    table = Table(title=f"lwm-pack stages ({elapsed:.0f}s)", title_justify="left")
    for name in ("stage", "in", "out", "dropped", "in/s"):
        table.add_column(name, justify="left" if name == "stage" else "right")
    for stage, (seen, kept, dropped) in ordered(totals, order):
        table.add_row(stage, str(seen), str(kept), str(dropped), _rate(seen, elapsed))
    return table


class ProgressWatch:
    """Shows a running job's stage counts (see the module docstring); a context manager.

    Args:
      folder: the job's `progress_folder` (None: nothing is shown, nothing is read).
      stages: the job's stage order.
      interval_s: how often the files are summed (and the live table redrawn).
      lines_every_s: how often plain lines are printed when stderr is not a terminal.
    """

    def __init__(self, folder: str | None, stages: Sequence[str], interval_s: float = 1.0,
                 lines_every_s: float = 20.0):
        self.folder, self.stages = folder, tuple(stages)
        self.interval_s, self.lines_every_s = interval_s, lines_every_s
        self.totals: Totals = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = None

    def __enter__(self) -> ProgressWatch:
        if self.folder is None:
            return self
        from rich.console import Console

        shutil.rmtree(self.folder, ignore_errors=True)  # counts of an earlier, killed run
        os.makedirs(self.folder, exist_ok=True)
        with _lock:
            state = _process_state()
            state["watched"].add(self.folder)
            state["totals"].pop(self.folder, None)
        self._start = time.monotonic()
        console = Console(file=sys.stderr)
        if console.is_terminal:
            from rich.live import Live

            self._live = Live(self._table(), console=console, auto_refresh=False, transient=True,
                              redirect_stdout=False)
            self._live.start()
        self._thread = threading.Thread(target=self._watch, name="lwm-pack-progress", daemon=True)
        self._thread.start()
        return self

    def _elapsed(self) -> float:
        return time.monotonic() - self._start

    def _table(self):
        return count_table(self.totals, self.stages, self._elapsed())

    def _watch(self) -> None:
        last_lines = time.monotonic()
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(Exception):  # a display hiccup never stops the job
                self.totals = read_totals(self.folder)
                if self._live is not None:
                    self._live.update(self._table(), refresh=True)
                elif time.monotonic() - last_lines >= self.lines_every_s:
                    last_lines = time.monotonic()
                    for line in count_lines(self.totals, self.stages, self._elapsed()):
                        print(f"[lwm-pack] {line}", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self.folder is None:
            return
        self._stop.set()
        self._thread.join()
        try:
            self.totals = read_totals(self.folder)
            self.finished(self.totals)
            if self._live is not None:
                self._live.update(self._table(), refresh=True)
        finally:
            if self._live is not None:
                self._live.stop()
            with _lock:
                _process_state()["watched"].discard(self.folder)
                _process_state()["totals"].pop(self.folder, None)
            shutil.rmtree(self.folder, ignore_errors=True)

    def finished(self, totals: Totals) -> None:
        """Called with the last sum, before the folder is removed (a hook for tests)."""
