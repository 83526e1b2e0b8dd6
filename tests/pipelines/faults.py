"""Fault injection for pipeline tests: make a stage function fail on chosen records.

`Faulty(fn, fail_on, times, state_dir)` wraps a stage function. For a record whose
`(basename(file), line)` is in `fail_on` (or for every record after the first `after` records)
it raises `InjectedFault` on the first `times` attempts (`times=None`: on every attempt) and then
behaves like `fn`; `kill=True` kills the whole process instead, like a worker lost to the OOM
killer. Attempts are counted in files under `state_dir`, so the count survives pickling and
holds across Beam worker processes.

Example, the tokenize stage fails twice on b.jsonl:4 (a transient fault), forever on a.jsonl:1:
    Faulty(Tokenize(tok), fail_on={("b.jsonl", 4): 2, ("a.jsonl", 1): None}, state_dir=tmp)
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from typing import Any


class InjectedFault(RuntimeError):
    """The fault a `Faulty` stage raises."""


def _where(element: Any) -> tuple[str, int]:
    if isinstance(element, tuple) and len(element) == 2:
        element = element[1]
    if isinstance(element, dict):
        return os.path.basename(str(element.get("file", ""))), int(element.get("line", 0))
    return os.path.basename(str(element)), 0


class Faulty:
    def __init__(
        self,
        fn: Callable[[Any], Iterable[Any]],
        state_dir: str,
        fail_on: dict[tuple[str, int], int | None] | None = None,
        after: int | None = None,
        times: int | None = None,
        kill: bool = False,
    ):
        self.fn = fn
        self.state_dir = str(state_dir)
        self.fail_on = dict(fail_on or {})
        self.after = after
        self.times = times
        self.kill = kill

    def _bump(self, name: str) -> int:
        path = os.path.join(self.state_dir, name)
        with open(path, "a") as f:  # one byte per event: a count that any process can add to
            f.write("x")
        return os.path.getsize(path)

    def attempts(self, file: str, line: int) -> int:
        """How many times the record was attempted so far."""
        path = os.path.join(self.state_dir, f"attempt-{file}-{line}")
        return os.path.getsize(path) if os.path.exists(path) else 0

    def __call__(self, element: Any) -> Iterable[Any]:
        file, line = _where(element)
        attempt = self._bump(f"attempt-{file}-{line}")
        if (file, line) in self.fail_on:
            limit = self.fail_on[(file, line)]
        elif self.after is not None and self._bump("seen") > self.after:
            limit = self.times
        else:
            limit = 0
        if limit is None or attempt <= limit:
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFault(f"injected fault on {file}:{line}, attempt {attempt}")
        return self.fn(element)
