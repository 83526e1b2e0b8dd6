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
reads the receipts and skips every source record they cover (see `pipelines/resume.py`), and the
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
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue
from lwmkit.packing.shards import dumps_json
from lwmkit.packing.wire import WireError, decode_example, encode_example
from lwmkit.pipelines.engine.job_options import DEFAULT_UNIT_BYTES
from lwmkit.pipelines.engine.outputs import (
    delete_outputs,
    is_local,
    join,
    list_outputs,
    open_input,
    read_output_bytes,
    write_output_bytes,
)

WORK_DIR = ".work"
_REF_KEYS = ("file", "line", "chars", "meta", "atomic_spans", "shape", "near_sketch")  # near_sketch: see dedup/stored.py


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


def spill(tokenized, output: str, unit_bytes: int = DEFAULT_UNIT_BYTES, label: str = "spill"):
    """Applies `SpillDoFn` to `tokenized` (a PCollection of `(doc_id, payload)`); returns the references.

    On a runner that drops what `finish_bundle` emits (Beam 2.77's Dask runner, see
    `engine.runner.finish_bundle_outputs_kept`) every document is flushed as its own unit, in
    `process`: with `unit_bytes` units the references of a bundle's last unit would be lost, and
    no document would reach the plan. Units are bookkeeping; the shards are the same either way.
    """
    from lwmkit.pipelines.engine.runner import finish_bundle_outputs_kept

    if not finish_bundle_outputs_kept(tokenized.pipeline.options):
        unit_bytes = 0
    return tokenized | label >> beam.ParDo(SpillDoFn(output, unit_bytes))


class SpillDoFn(beam.DoFn):
    """Writes tokenized documents to units and yields small references in their place.

    Input: `(doc_id, payload)` as a job's tokenize stage makes them (see
    `writing.payload.doc_arrays`). Output: `(doc_id, ref)`; `ref` keeps the payload's file, line,
    chars, meta and atomic spans, and adds `num_tokens`, `at` (unit name, offset, length) and
    `sha` (of the record). A unit is flushed once it holds `unit_bytes` bytes, and at the end of
    every bundle (from `finish_bundle`; apply it with `spill`, which flushes every document in
    `process` on a runner that drops `finish_bundle` outputs).

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
    """Reads unit records by reference, keeping a few units open; verifies each record's SHA-256.

    The last document read is kept: a shard writer asks for the same document once per piece,
    and the pieces of a long document usually follow one another.
    """

    def __init__(self, output: str, max_open: int = 16):
        self.base = units_dir(output)
        self.max_open = max_open
        self._open: dict[str, Any] = {}
        self._last: tuple[tuple, dict[str, Any]] | None = None

    def _handle(self, name: str):
        f = self._open.pop(name, None)
        if f is None:
            path = join(self.base, f"{name}.bin")
            try:
                f = open_input(path)  # kept open across reads, closed in close()
            except Exception as e:  # Beam raises its own IOError subclasses
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
        key = (doc_id, *ref["at"], ref["sha"])
        if self._last is not None and self._last[0] == key:
            return self._last[1]
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
        self._last = (key, payload)
        return payload

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()
        self._last = None


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
