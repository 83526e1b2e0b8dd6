"""The generic Beam stage: one per-record function, counted, with dropped records sent aside.

A stage function takes one element and yields output elements and/or `Dropped` markers (or raises
`DropRecord`). `StageDoFn` runs it and, per stage, counts `seen` (inputs), `kept` (outputs) and
`dropped` in Beam metrics and in a per-bundle counts output that the job reconciles in its
manifest. Every drop becomes a failure row `{stage, file, line, reason, detail}`.

Any other exception is a fault, not a verdict on the record. If it comes before the element gave
any output, the element is tried again (up to `attempts` times in all, with a short growing pause:
a flaky network mount or an out-of-memory blip passes; after five records in a row failed every
attempt the stage stops pausing and retrying until one succeeds, so a systematic error costs no
time); if it persists, or if it comes after some
outputs were already sent on (a retry would duplicate them), the element is dropped with reason
`stage_error` and the exception in the detail. One bad record never stops the job and is never
lost silently; nothing is emitted twice.

Example, a stage that drops empty texts:
    def non_empty(doc):
        if not doc["text"]:
            raise DropRecord("empty")
        yield doc
    docs | "filter" >> beam.ParDo(StageDoFn("filter", non_empty)).with_outputs(FAILURES, COUNTS, main="docs")
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

FAILURES = "failures"
COUNTS = "counts"


class DropRecord(Exception):  # noqa: N818 - it is a signal, not an error of the job
    """Raised by a stage function to drop the current record with a reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Dropped:
    """Yielded by a stage function for a record it drops (when one input yields several records)."""

    reason: str
    detail: str = ""
    file: str = ""
    line: int = 0


def failure_row(stage: str, file: str, line: int, reason: str, detail: str = "") -> dict[str, Any]:
    return {"stage": stage, "file": file, "line": int(line), "reason": reason, "detail": detail}


def failure_sort_key(row: dict[str, Any]) -> tuple:
    return (row["file"], row["line"], row["stage"], row["reason"], row["detail"])


class StageDoFn(beam.DoFn):
    """Runs `fn` as the named stage; see the module docstring.

    Args:
      stage: the stage name used in metrics, counts and failure rows.
      fn: element -> iterable of outputs and `Dropped`; may raise `DropRecord`.
      progress: print a progress line to stderr at most every 2 seconds.
    """

    def __init__(self, stage: str, fn: Callable[[Any], Iterable[Any]], progress: bool = False, attempts: int = 3,
                 retry_pause_s: float = 0.1):
        self.stage = stage
        self.fn = fn
        self.progress = progress
        self.attempts = attempts
        self.retry_pause_s = retry_pause_s

    def setup(self):
        self._metric = {
            k: beam.metrics.Metrics.counter("lwmkit", f"{self.stage}.{k}")
            for k in ("seen", "kept", "dropped", "retried")
        }
        self._last_print = time.monotonic()  # first line after 2 s: short jobs stay quiet
        self._failing_in_a_row = 0  # records that failed every attempt, since the last success
        self._total = [0, 0, 0]

    def start_bundle(self):
        self._counts = [0, 0, 0]  # seen, kept, dropped

    def _where(self, element: Any) -> tuple[str, int]:
        if isinstance(element, tuple) and len(element) == 2:
            element = element[1]
        if isinstance(element, dict):
            return str(element.get("file", "")), int(element.get("line", 0))
        if isinstance(element, str):
            return element, 0
        return "", 0

    def process(self, element):
        self._counts[0] += 1
        for attempt in range(1, self.attempts + 1):
            emitted = 0
            try:
                for out in self.fn(element):
                    emitted += 1
                    if isinstance(out, Dropped):
                        self._counts[2] += 1
                        file, line = (out.file, out.line) if out.file else self._where(element)
                        yield beam.pvalue.TaggedOutput(
                            FAILURES, failure_row(self.stage, file, line, out.reason, out.detail)
                        )
                    else:
                        self._counts[1] += 1
                        yield out
                self._failing_in_a_row = 0
                break
            except DropRecord as d:
                self._counts[2] += 1
                file, line = self._where(element)
                yield beam.pvalue.TaggedOutput(FAILURES, failure_row(self.stage, file, line, d.reason, d.detail))
                break
            except Exception as e:  # noqa: BLE001 - a fault in one record must not stop the job
                if emitted == 0 and attempt < self.attempts and self._failing_in_a_row < 5:
                    self._metric["retried"].inc()
                    time.sleep(self.retry_pause_s * attempt)
                    continue
                self._counts[2] += 1
                file, line = self._where(element)
                when = f"after {emitted} outputs" if emitted else f"on each of {attempt} attempts"
                detail = f"{type(e).__name__}: {e} ({when})"
                self._failing_in_a_row += 1
                yield beam.pvalue.TaggedOutput(FAILURES, failure_row(self.stage, file, line, "stage_error", detail))
                break
        if self.progress:
            now = time.monotonic()
            if now - self._last_print > 2.0:
                self._last_print = now
                s, k, d = (t + c for t, c in zip(self._total, self._counts, strict=True))
                print(f"[lwm-pack] {self.stage}: {s} in, {k} out, {d} dropped (this worker)", file=sys.stderr, flush=True)

    def finish_bundle(self):
        seen, kept, dropped = self._counts
        for name, value in zip(("seen", "kept", "dropped"), self._counts, strict=True):
            if value:
                self._metric[name].inc(value)
        self._total = [t + c for t, c in zip(self._total, self._counts, strict=True)]
        if seen or kept or dropped:
            yield beam.pvalue.TaggedOutput(
                COUNTS, WindowedValue((self.stage, (seen, kept, dropped)), MIN_TIMESTAMP, [GlobalWindow()])
            )


def run_stage(pcoll, stage: str, fn: Callable[[Any], Iterable[Any]], progress: bool = False):
    """Applies `StageDoFn(stage, fn)`; returns (main output, failures, counts) PCollections."""
    out = pcoll | stage >> beam.ParDo(StageDoFn(stage, fn, progress)).with_outputs(
        FAILURES, COUNTS, main="main"
    )
    return out.main, out[FAILURES], out[COUNTS]


class StageList:
    """A job's stages as its pipeline adds them: each is `run_stage`, and every stage's failures
    and counts outputs are kept for the job's last step (`write_datasets`).

    Example:
        stage = StageList(progress=True)
        docs = stage(paths, "read", ReadFile("text"))
        docs = stage(docs, "normalize", normalize)
        write_datasets(p, docs, stage.failures, stage.counts, ...)
    """

    def __init__(self, progress: bool = False):
        self.progress = progress
        self.failures: list = []
        self.counts: list = []

    def __call__(self, pcoll, name: str, fn: Callable[[Any], Iterable[Any]]):
        """Applies `fn` as the stage `name`; returns its main output."""
        out, failures, counts = run_stage(pcoll, name, fn, self.progress)
        self.failures.append(failures)
        self.counts.append(counts)
        return out
