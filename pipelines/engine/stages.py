"""The generic Beam stage: one per-record function, counted, with dropped records sent aside.

A stage function takes one element and yields output elements and/or `Dropped` markers (or raises
`DropRecord`). `StageDoFn` runs it and, per stage, counts `seen` (inputs), `kept` (outputs) and
`dropped` in Beam metrics and in a counts output that the job reconciles in its manifest. Every
drop becomes a failure row `{stage, file, line, reason, detail}`.

The graph is portable to every Beam runner: `StageDoFn` has ONE output of tagged records
`(tag, value)` (`MAIN`, `FAILURES`, `COUNTS`), which `run_stage` splits with one single-output
`FlatMap` per tag. No stage uses a multi-output `ParDo` (`.with_outputs`), which Beam 2.77's Dask
runner does not keep apart (all outputs of a ParDo come out as one bag), and no output comes from
`finish_bundle`, which the Dask runner drops (it collects a bundle's outputs before calling it):
each element's counts `(stage, (1, kept, dropped))` travel with it and are summed per stage by a
`CombinePerKey`, so the counts output holds one row per stage.

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
    docs, failures, counts = run_stage(docs, "filter", non_empty)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
from lwmkit.pipelines.engine import progress as progress_lib
from lwmkit.pipelines.engine.drops import Dropped, DropRecord, failure_row

MAIN = "main"
FAILURES = "failures"
COUNTS = "counts"


class RuntimeState:
    """Mixin for a DoFn whose `setup` builds runtime-only state: it pickles without that state.

    `RUNTIME_ATTRS` names the attributes `setup` sets (open files, process pools, indexes of a
    side input, loaded models); `__getstate__` leaves them out, and the copy's `setup`, which
    Beam calls before any `process`, builds them again. A runner may pickle a DoFn after its
    `setup` ran (Beam 2.77's Dask runner does, for a side input computed inside a worker).
    """

    RUNTIME_ATTRS: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self.RUNTIME_ATTRS}


class StageDoFn(beam.DoFn):
    """Runs `fn` as the named stage; see the module docstring.

    Args:
      stage: the stage name used in metrics, counts and failure rows.
      fn: element -> iterable of outputs and `Dropped`; may raise `DropRecord`.
      progress: the job's progress folder (`progress.progress_folder`), where this process's running
        counts go for the launcher's display; None: no live counts.
    """

    def __init__(self, stage: str, fn: Callable[[Any], Iterable[Any]], progress: str | None = None, attempts: int = 3,
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
        self._failing_in_a_row = 0  # records that failed every attempt, since the last success

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
        """Yields `(MAIN, output)`, `(FAILURES, row)` and, last, `(COUNTS, (stage, (1, kept, dropped)))`."""
        self._counts[0] += 1
        kept = dropped = 0
        for attempt in range(1, self.attempts + 1):
            emitted = 0
            try:
                for out in self.fn(element):
                    emitted += 1
                    if isinstance(out, Dropped):
                        self._counts[2] += 1
                        file, line = (out.file, out.line) if out.file else self._where(element)
                        dropped += 1
                        yield FAILURES, failure_row(self.stage, file, line, out.reason, out.detail)
                    else:
                        self._counts[1] += 1
                        kept += 1
                        yield MAIN, out
                self._failing_in_a_row = 0
                break
            except DropRecord as d:
                self._counts[2] += 1
                file, line = self._where(element)
                dropped += 1
                yield FAILURES, failure_row(self.stage, file, line, d.reason, d.detail)
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
                dropped += 1
                yield FAILURES, failure_row(self.stage, file, line, "stage_error", detail)
                break
        if self.progress:
            progress_lib.count(self.progress, self.stage, 1, kept, dropped)
            progress_lib.flush(self.progress)
        yield COUNTS, (self.stage, (1, kept, dropped))

    def finish_bundle(self):
        """Only metrics and the progress file: an output here would be lost on the Dask runner."""
        for name, value in zip(("seen", "kept", "dropped"), self._counts, strict=True):
            if value:
                self._metric[name].inc(value)
        if self.progress:
            progress_lib.flush(self.progress, force=True)  # a finished bundle's counts are in the file

    def teardown(self):
        if self.progress:
            progress_lib.flush(self.progress, force=True)


def tagged_values(element: tuple[str, Any], tag: str) -> Iterable[Any]:
    """The value of a tagged record `(tag, value)` if its tag is `tag`: one branch of a split."""
    if element[0] == tag:
        yield element[1]


def split_tagged(tagged, label: str, tags: Sequence[str]) -> dict[str, Any]:
    """{tag: PCollection of its values} from one PCollection of `(tag, value)` records.

    One single-output `FlatMap` per tag, which every runner keeps apart (Beam's `Partition` is
    itself a multi-output ParDo, which the Dask runner merges).
    """
    return {tag: tagged | f"{label}/{tag}" >> beam.FlatMap(tagged_values, tag) for tag in tags}


def add_counts(rows: Iterable[tuple[int, int, int]]) -> tuple[int, int, int]:
    """The sum of `(seen, kept, dropped)` rows, element-wise."""
    seen = kept = dropped = 0
    for s, k, d in rows:
        seen, kept, dropped = seen + s, kept + k, dropped + d
    return seen, kept, dropped


def run_stage(pcoll, stage: str, fn: Callable[[Any], Iterable[Any]], progress: str | None = None):
    """Applies `StageDoFn(stage, fn, progress)`; returns (main output, failures, counts) PCollections.

    The counts output holds `(stage, (seen, kept, dropped))`, one row per stage (none when the
    stage saw nothing), as `writing.finalize` reconciles them.
    """
    tagged = pcoll | stage >> beam.ParDo(StageDoFn(stage, fn, progress))
    out = split_tagged(tagged, stage, (MAIN, FAILURES, COUNTS))
    counts = out[COUNTS] | f"{stage}/sum counts" >> beam.CombinePerKey(add_counts)
    return out[MAIN], out[FAILURES], counts


class ReadInput:
    """A read stage function: `read(path, *args)`, the records of one input file (a class, so the
    stage pickles with its arguments)."""

    def __init__(self, read: Callable[..., Iterable[Any]], *args: Any):
        self.read = read
        self.args = args

    def __call__(self, path: str) -> Iterator[Any]:
        yield from self.read(path, *self.args)


class StageList:
    """A job's stages as its pipeline adds them: each is `run_stage`, and every stage's failures,
    counts and manifest entries are kept for the job's last step (`write_datasets`).

    Example:
        stage = StageList.for_job(options)           # progress to `progress_folder(options)`
        docs = stage.read(p, files, read_documents, "text")
        docs = stage(docs, "normalize", normalize)
        write_datasets(p, docs, stage.failures, stage.counts, ..., manifest_entries=stage.entries)
    """

    def __init__(self, progress: str | None = None):
        self.progress = progress
        self.failures: list = []
        self.counts: list = []
        self.entries: list = []

    @classmethod
    def for_job(cls, options: Any) -> StageList:
        """The stage list of the job `options`, reporting progress where `progress_folder` says."""
        return cls(progress_lib.progress_folder(options))

    def __call__(self, pcoll, name: str, fn: Callable[[Any], Iterable[Any]]):
        """Applies `fn` as the stage `name`; returns its main output."""
        out, failures, counts = run_stage(pcoll, name, fn, self.progress)
        self.failures.append(failures)
        self.counts.append(counts)
        return out

    def read(self, p, files: Sequence[str], read: Callable[..., Iterable[Any]], *args: Any):
        """The job's first stage, "read": `read(path, *args)` over the input `files`, spread over the
        workers first."""
        paths = p | "inputs" >> beam.Create(files) | "spread files" >> beam.Reshuffle()
        return self(paths, "read", ReadInput(read, *args))

    def add(self, failures, *counts, entry: dict | None = None) -> None:
        """Keeps the outputs of a step that is not one stage function (decode, near dedup): its
        failure rows, its counts PCollections and, when it has one, its manifest entry."""
        self.failures.append(failures)
        self.counts.extend(counts)
        if entry is not None:
            self.entries.append(entry)


def stage_links(stages: Sequence[str], sources: Sequence[str] = ("read",),
                inputs: dict[str, str] | None = None) -> tuple[tuple[str, str], ...]:
    """The (stage, previous stage) links of a job's stage chain (`writing.finalize.StageChain`).

    Every stage but the `sources` takes what the stage before it in `stages` kept, unless `inputs`
    names another one.

    Example:
        stage_links(("read", "decode", "frames", "encode", "gather"), ("read", "frames"), {"gather": "decode"})
        -> (("decode", "read"), ("encode", "frames"), ("gather", "decode"))
    """
    inputs = inputs or {}
    return tuple((s, inputs.get(s, stages[i - 1])) for i, s in enumerate(stages) if s not in sources)
