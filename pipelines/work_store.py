"""The work store: tokenized documents kept on disk between stages, the unit of resume.

A job's tokenized documents are heavy (tokens, masks, weights); what its later stages need to
decide anything (dedup, the plan, routing pieces to shards) is a few numbers per document. So
tokenized documents are written to *units* under `<output>/.work/units/` as soon as they are
made, and only small references travel on through the pipeline: no shuffle and no runner buffer
ever holds the corpus, and peak memory per worker is bounded by the unit size, whatever the input
size. The shard writers read each piece's tokens back from its unit.

A unit is two files, written atomically in this order:
    <name>.bin   the encoded documents, one after another (a `tf.train.Example` each)
    <name>.json  its receipt: the unit's size and SHA-256, and one reference per document
                 (doc_id, source file and line, chars, meta, token count, atomic spans, and
                 where its record lies in the unit with the record's own SHA-256)
`<name>` is the SHA-256 of the unit's bytes, so rewriting the same documents is idempotent. A
receipt whose unit is missing or of another size is ignored. A job that is killed and run again
reads the receipts and skips every source record they cover (see `pipelines/books.py`), and the
shard writers skip every shard whose receipt under `.work/shards/` still matches (same pieces,
same bytes on disk), so a rerun redoes only what was not finished and ends byte-identical to an
uninterrupted run.

`.work/identity.json` records what the units were made from (inputs, tokenizer, the options that
shape documents); a job whose identity differs starts from an empty store.

Example, one document through the store:
    (doc_id 7, payload {tokens: b"...", token_dtype: "<u2", file: "a.jsonl", line: 3, ...})
      -> .work/units/3f2a....bin + .json
      -> (7, {"file": "a.jsonl", "line": 3, "num_tokens": 812, "at": ["3f2a...", 0, 1650], "sha": "9c1e..."})
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue
from lwmkit.packing.shards import dumps_json
from lwmkit.packing.wire import WireError, decode_example, encode_example
from lwmkit.pipelines.outputs import (
    delete_outputs,
    is_local,
    join,
    list_outputs,
    read_output_bytes,
    write_output_bytes,
)
from lwmkit.pipelines.stages import COUNTS

WORK_DIR = ".work"
DEFAULT_UNIT_BYTES = 64 << 20
_REF_KEYS = ("file", "line", "chars", "meta", "atomic_spans")


class WorkStoreError(RuntimeError):
    """A unit of the work store is missing or damaged."""


def work_dir(output: str) -> str:
    return join(output, WORK_DIR)


def units_dir(output: str) -> str:
    return join(output, WORK_DIR, "units")


# --- the unit record codec --------------------------------------------------------------------


def encode_payload(doc_id: int, payload: dict[str, Any]) -> bytes:
    """The compact payload's arrays as one record (token bytes as stored, masks only if present)."""
    features: dict[str, list] = {
        "doc_id": [int(doc_id)],
        "tokens": [payload["tokens"]],
        "token_dtype": [payload["token_dtype"].encode()],
    }
    for key in ("vision_mask", "loss_weights"):
        if payload[key] is not None:
            features[key] = [payload[key]]
    return encode_example(features)


def decode_payload(data: bytes, where: str) -> tuple[int, dict[str, Any]]:
    """(doc_id, payload arrays) of a unit record; the inverse of `encode_payload`.

    Raises:
      WorkStoreError: the record is not a unit record (named by `where`).
    """
    try:
        f = decode_example(data)
        return int(f["doc_id"][0]), {
            "tokens": bytes(f["tokens"][0]),
            "token_dtype": bytes(f["token_dtype"][0]).decode(),
            "vision_mask": bytes(f["vision_mask"][0]) if "vision_mask" in f else None,
            "loss_weights": bytes(f["loss_weights"][0]) if "loss_weights" in f else None,
        }
    except (WireError, KeyError, IndexError, UnicodeDecodeError) as e:
        raise WorkStoreError(f"{where}: not a work-store record ({e})") from e


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


# --- writing units --------------------------------------------------------------------------------


class SpillDoFn(beam.DoFn):
    """Writes tokenized documents to units and yields small references in their place.

    Input: `(doc_id, payload)` as a job's tokenize stage makes them (see
    `shard_writing.doc_arrays`). Output: `(doc_id, ref)`; `ref` keeps the payload's file, line,
    chars, meta and atomic spans, and adds `num_tokens`, `at` (unit name, offset, length) and
    `sha` (of the record). A unit is flushed once it holds `unit_bytes` bytes, and at the end of
    every bundle.

    Args:
      output: the job's output directory; units go to `<output>/.work/units/`.
      unit_bytes: flush a unit at this size.
    """

    def __init__(self, output: str, unit_bytes: int = DEFAULT_UNIT_BYTES):
        self.output = output
        self.unit_bytes = unit_bytes

    def start_bundle(self):
        self._records: list[bytes] = []
        self._refs: list[tuple[int, dict[str, Any]]] = []
        self._size = 0

    def process(self, element: tuple[int, dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
        doc_id, payload = element
        data = encode_payload(doc_id, payload)
        ref = {k: payload.get(k) for k in _REF_KEYS}
        ref["num_tokens"] = len(payload["tokens"]) // np.dtype(payload["token_dtype"]).itemsize
        ref["at"] = [None, self._size, len(data)]
        ref["sha"] = _sha(data)
        self._records.append(data)
        self._refs.append((doc_id, ref))
        self._size += len(data)
        if self._size >= self.unit_bytes:
            yield from self._flush()

    def finish_bundle(self):
        for out in self._flush():
            yield WindowedValue(out, MIN_TIMESTAMP, [GlobalWindow()])

    def _flush(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if not self._records:
            return
        data = b"".join(self._records)
        name = hashlib.sha256(data).hexdigest()
        for _, ref in self._refs:
            ref["at"][0] = name
        receipt = {
            "unit": f"{name}.bin",
            "bytes": len(data),
            "sha256": name,
            "documents": [{"doc_id": d, **r} for d, r in self._refs],
        }
        base = units_dir(self.output)
        write_output_bytes(join(base, f"{name}.bin"), data)
        write_output_bytes(join(base, f"{name}.json"), dumps_json(receipt))  # the receipt goes last
        refs = self._refs
        self.start_bundle()
        yield from refs


# --- resuming: stored documents and the records they cover ---


class SkipDone(beam.DoFn):
    """Passes on source records whose document is not in the work store yet.

    A record that is already there (from an interrupted run, or a finished one being retried)
    is not processed again; it is counted as kept by every stage it skips (`stages`: once each,
    or as often as the stored record says, e.g. its frames), so the job's counts equal an
    uninterrupted run's. Records are dicts with `file` and `line`; the side input `done` holds
    `((file, line), {stage: count})` per stored record.
    """

    def __init__(self, stages: tuple[str, ...]):
        self.stages = stages

    def setup(self):
        self._done_id = None
        self._done: dict = {}

    def start_bundle(self):
        self._skipped = dict.fromkeys(self.stages, 0)

    def process(self, record: dict, done: list):
        if self._done_id != id(done):
            self._done = {tuple(where): counts for where, counts in done}
            self._done_id = id(done)
        counts = self._done.get((record["file"], record["line"]))
        if counts is None:
            yield record
            return
        for stage in self.stages:
            self._skipped[stage] += counts.get(stage, 1)

    def finish_bundle(self):
        for stage, n in self._skipped.items():
            if n:
                yield beam.pvalue.TaggedOutput(COUNTS, WindowedValue((stage, (n, n, 0)), MIN_TIMESTAMP, [GlobalWindow()]))


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
    out = records | "skip stored" >> beam.ParDo(SkipDone(stages), done=beam.pvalue.AsList(done)).with_outputs(
        COUNTS, main="main"
    )
    return out.main, out[COUNTS]


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



def retry_summary(manifest: dict[str, Any]) -> str | None:
    """The line a command prints after --retry-failures, from the job manifest's `retry` entry."""
    r = manifest.get("retry")
    if r is None:
        return None
    return f"retried {r['rows']} failed rows: {r['recovered']} recovered, {r['still_failing']} still failing"


# --- reading units back -----------------------------------------------------------------------


def receipt_paths(output: str) -> list[str]:
    """Every unit receipt in the store (one listing)."""
    return list_outputs(join(units_dir(output), "*.json"))


class ReadReceipt:
    """Yields `(doc_id, ref)` for every document of a receipt whose unit is intact (by size).

    A receipt whose unit is missing, or of another size (a write that never finished), yields
    nothing: those documents are simply made again.
    """

    def __call__(self, path: str) -> Iterator[tuple[int, dict[str, Any]]]:
        raw = read_output_bytes(path)
        if raw is None:
            return
        try:
            receipt = json.loads(raw)
        except json.JSONDecodeError:
            return
        unit = (
            path.rsplit("/", 1)[0] + "/" + receipt["unit"]
            if not is_local(path)
            else os.path.join(os.path.dirname(path), receipt["unit"])
        )
        if _size(unit) != receipt["bytes"]:
            return
        for entry in receipt["documents"]:
            doc_id = entry.pop("doc_id")
            yield doc_id, entry


def _size(path: str) -> int | None:
    if is_local(path):
        try:
            return os.path.getsize(path)
        except OSError:
            return None
    from apache_beam.io.filesystems import FileSystems

    found = [m.size_in_bytes for r in FileSystems.match([path]) for m in r.metadata_list]
    return found[0] if found else None


class UnitReader:
    """Reads unit records by reference, keeping a few units open; verifies each record's SHA-256."""

    def __init__(self, output: str, max_open: int = 16):
        self.base = units_dir(output)
        self.max_open = max_open
        self._open: dict[str, Any] = {}

    def _handle(self, name: str):
        f = self._open.pop(name, None)
        if f is None:
            path = join(self.base, f"{name}.bin")
            try:
                if is_local(path):
                    f = open(path, "rb")  # noqa: SIM115 - kept open across reads, closed in close()
                else:
                    from apache_beam.io.filesystem import CompressionTypes
                    from apache_beam.io.filesystems import FileSystems

                    f = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
            except (OSError, Exception) as e:  # Beam raises its own IOError subclasses
                raise WorkStoreError(
                    f"{path}: work unit cannot be opened ({e}); rerun the job"
                ) from e
            while len(self._open) >= self.max_open:
                self._open.pop(next(iter(self._open))).close()
        self._open[name] = f  # most recently used last
        return f

    def load(self, doc_id: int, ref: dict[str, Any]) -> dict[str, Any]:
        """The payload arrays of a referenced document.

        Raises:
          WorkStoreError: the unit is missing, or the record is damaged or is another document's.
        """
        name, offset, length = ref["at"]
        where = f"{join(self.base, name + '.bin')} (document {doc_id}, {ref.get('file')}:{ref.get('line')})"
        f = self._handle(name)
        f.seek(offset)
        data = f.read(length)
        if len(data) != length or _sha(data) != ref["sha"]:
            raise WorkStoreError(
                f"{where}: record at byte {offset} is damaged (size or SHA-256 differs)"
            )
        got, payload = decode_payload(data, where)
        if got != doc_id:
            raise WorkStoreError(f"{where}: holds document {got}")
        return payload

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


# --- the store's identity and upkeep --------------------------------------------------------------


def prepare(output: str, identity: dict[str, Any], fresh: bool) -> int:
    """Makes the store ready for a job; returns how many unit receipts it keeps for resuming.

    The store is emptied when `fresh` (e.g. --force) or when it was made for another identity.
    """
    path = join(work_dir(output), "identity.json")
    raw = read_output_bytes(path)
    same = raw is not None and json.loads(raw) == json.loads(dumps_json(identity))
    if fresh or not same:
        clear(output)
        write_output_bytes(path, dumps_json(identity))
        return 0
    return len(receipt_paths(output))


def clear(output: str) -> None:
    """Deletes the whole work store."""
    base = work_dir(output)
    if is_local(base):
        import shutil

        shutil.rmtree(base, ignore_errors=True)
        return
    delete_outputs(list_outputs(join(base, "**")))
