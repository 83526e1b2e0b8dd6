"""Resuming a job from its work store, and `--retry-failures`.

A source record whose document is already in the work store (`work_store.py`) is not processed
again: `stored_documents` reads the store's receipts into references (one per source record) and
the set of records they cover; `skip_stored` drops those records right after the job's read
stage and counts them as kept by every stage they skip, so the manifest's counts equal an
uninterrupted run's. The stored references then join the new ones before the plan.

`--retry-failures` is the same resume over a finished output: every record it kept is in the
store, so only the rows its failures.jsonl lists are processed again (`previous_failures` reads
them for the manifest's `retry` entry).

Example (the books job):
    stored, done = stored_documents(p, receipt_paths(output))
    docs, skipped = skip_stored(read_output, done, ("normalize", "filter", "tokenize"))
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import apache_beam as beam
from lwmkit.pipelines.engine.lifecycle import retry_summary  # noqa: F401  (kept importable from here)
from lwmkit.pipelines.engine.outputs import join, read_output_bytes
from lwmkit.pipelines.engine.stages import COUNTS, MAIN, RuntimeState, add_counts, split_tagged
from lwmkit.pipelines.engine.work_store import ReadReceipt


class SkipDone(RuntimeState, beam.DoFn):
    """Passes on source records whose document is not in the work store yet.

    A record that is already there (from an interrupted run, or a finished one being retried)
    is not processed again; it is counted as kept by every stage it skips (`stages`: once each,
    or as often as the stored record says, e.g. its frames), so the job's counts equal an
    uninterrupted run's. Records are dicts with `file` and `line`; the side input `done` holds
    `((file, line), {stage: count})` per stored record. Its one output holds tagged records
    (`engine.stages.split_tagged`): `(MAIN, record)` or, per skipped record and stage,
    `(COUNTS, (stage, (n, n, 0)))`.
    """

    def __init__(self, stages: tuple[str, ...]):
        self.stages = stages

    RUNTIME_ATTRS = ("_done_id", "_done")

    def setup(self):
        self._done_id = None
        self._done: dict = {}

    def process(self, record: dict, done: list):
        if self._done_id != id(done):
            self._done = {tuple(where): counts for where, counts in done}
            self._done_id = id(done)
        counts = self._done.get((record["file"], record["line"]))
        if counts is None:
            yield MAIN, record
            return
        for stage in self.stages:
            n = counts.get(stage, 1)
            yield COUNTS, (stage, (n, n, 0))


def _one_per_record(item: tuple[tuple[str, int], Iterable[tuple[int, dict]]]) -> tuple[int, dict]:
    """Of the references a record has in the store (a retried bundle may have written two), one."""
    _, refs = item
    return min(refs, key=lambda r: (r[1]["at"][0], r[1]["at"][1]))


def stored_documents(p: beam.Pipeline, receipts: Sequence[str], weigh: Callable[[dict], dict] | None = None):
    """(references, done records) of the documents already in the store, as PCollections.

    References are `(doc_id, ref)`, one per source record; done records are
    `((file, line), {stage: count})`, the counts from `weigh(ref)` for stages that count a stored
    record more than once (none by default).
    """
    stored = (
        p
        | "work receipts" >> beam.Create(list(receipts))
        | "read receipts" >> beam.FlatMap(ReadReceipt())
        | "key stored by record" >> beam.Map(lambda r: ((r[1]["file"], r[1]["line"]), r))
        | "group stored by record" >> beam.GroupByKey()
        | "one per record" >> beam.Map(_one_per_record)
    )
    return stored, stored | "stored records" >> beam.Map(_done_entry, weigh)


def _done_entry(item: tuple[int, dict], weigh: Callable[[dict], dict] | None) -> tuple[tuple[str, int], dict]:
    ref = item[1]
    return (ref["file"], ref["line"]), (weigh(ref) if weigh else {})


def skip_stored(records, done, stages: tuple[str, ...]):
    """(records still to process, counts of the skipped ones): applies `SkipDone`."""
    tagged = records | "skip stored" >> beam.ParDo(SkipDone(stages), done=beam.pvalue.AsList(done))
    out = split_tagged(tagged, "skip stored", (MAIN, COUNTS))
    return out[MAIN], out[COUNTS] | "skip stored/sum counts" >> beam.CombinePerKey(add_counts)


def previous_failures(output: str) -> list[dict[str, Any]]:
    """The rows of an earlier run's failures.jsonl that `retry_failures` processes again.

    Rows of the packing stages (`pack-<seq_len>`) are left out: those documents were kept, and
    a long-document policy, not a fault, kept them out of a packed dataset.

    Raises:
      FileNotFoundError: `output` has no failures.jsonl (no earlier run finished there).
    """
    raw = read_output_bytes(join(output, "failures.jsonl"))
    if raw is None:
        raise FileNotFoundError(f"--retry-failures: {join(output, 'failures.jsonl')} does not exist; run the job first")
    rows = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
    return [r for r in rows if not r["stage"].startswith("pack-")]
