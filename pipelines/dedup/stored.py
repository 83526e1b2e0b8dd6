"""Near-dedup inside a job: the sketch a document carries into the work store, the dedup of a job's
elements by those sketches, and the manifest entry.

A job sketches each document where its content is at hand (the books job: after the length filter,
before tokenizing) and keeps the sketch's bytes (`encode_sketch`, base64, in the field
`SKETCH_FIELD`) with the document, so they rest in the work store's receipts with its reference. Near
dedup then runs on the references, after exact dedup, and reads the sketches back (`StoredSketch`):
a resumed or retried run sketches only the documents it makes again, never the stored ones.

A document without a readable sketch (its content could not be sketched, or the stored bytes were
made with other parameters) is kept and counted in the `near_dedup.unsketched` metric.

Jobs whose stored examples skip every stage after their read (images, videos) near-deduplicate
in the middle of the job, before the VQGAN: `near_dedup_new_and_stored` sketches the new records
(`SketchRecord`), lets the stored references take part with their stored sketches (a resumed run
decides as an uninterrupted one) and counts the stored survivors in the stages after it.

Example (the books job):
    sketcher = CarrySketch(near)                     # in the tokenize stage:
    payload[SKETCH_FIELD] = sketcher(f"{file}:{line}", doc["text"])
    kept, failures, counts, entry = near_dedup_elements(
        refs, near, key_of=ref_key, content=StoredSketch(near), where=ref_where)
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from lwmkit.pipelines.dedup.entry import NearDedup, NearDedupOptions, duplicate_summary, sketch_of
from lwmkit.pipelines.dedup.sketch import Sketch, decode_sketch, encode_sketch
from lwmkit.pipelines.engine.stages import StageList, add_counts

SKETCH_FIELD = "near_sketch"
MANIFEST_KEY = "near_dedup"


class CarrySketch:
    """(key, content) -> the base64 text of the content's encoded sketch, or None when the content
    cannot be sketched. Picklable; the matcher's fingerprint is computed once per worker."""

    def __init__(self, options: NearDedupOptions):
        self.options = options
        self._fingerprint: str | None = None

    def __call__(self, key: str, value: Any) -> str | None:
        if self._fingerprint is None:
            self._fingerprint = self.options.matcher().fingerprint
        try:
            sketch = sketch_of(self.options, key, value)
        except (ValueError, OSError, KeyError, TypeError):
            return None
        return base64.b64encode(encode_sketch(sketch, self.options.kind, self._fingerprint)).decode("ascii")


class StoredSketch:
    """`content` for `NearDedup`: the `Sketch` an element carries in `SKETCH_FIELD`.

    Raises (so `NearDedup` keeps the element as unsketched):
      KeyError: the element carries no sketch.
      ValueError: the bytes are not a sketch of this kind and these parameters.
    """

    def __init__(self, options: NearDedupOptions, field: Callable[[Any], Any] | None = None):
        self.options = options
        self.field = field
        self._fingerprint: str | None = None

    def __call__(self, element: Any) -> Sketch:
        if self._fingerprint is None:
            self._fingerprint = self.options.matcher().fingerprint
        data = self.field(element) if self.field else element.get(SKETCH_FIELD)
        if not data:
            raise KeyError(SKETCH_FIELD)
        return decode_sketch(base64.b64decode(data), self.options.kind, self._fingerprint)


def near_dedup_elements(
    pcoll: beam.PCollection,
    options: NearDedupOptions,
    key_of: Callable[[Any], str],
    content: Callable[[Any], Any],
    where: Callable[[Any], tuple[str, int]],
    label: str = "near dedup",
):
    """Near-deduplicates a job's elements (any shape) and returns them in the same shape.

    Args:
      key_of: element -> its unique key (the failure rows name the kept twin by it).
      content: element -> what `NearDedup` sketches (e.g. `StoredSketch(options)`).
      where: element -> (file, line) of its failure row.

    Returns:
      (survivors, failure rows, counts, manifest entry): the counts as `(stage, (seen, kept,
      dropped))`, the entry one `(MANIFEST_KEY, {"params", "removed", "histogram", "cluster_sizes"})`.
    """
    keyed = pcoll | f"{label}: key" >> beam.Map(lambda e: (key_of(e), e))
    out = keyed | label >> NearDedup(options, content=content, where=lambda _key, e: where(e))
    survivors = out.survivors | f"{label}: unkey" >> beam.Values()
    params = options.params()
    entry = (out.duplicates
             | f"{label}: gather" >> beam.combiners.ToList()
             | f"{label}: summary" >> beam.Map(lambda ds: (MANIFEST_KEY, {"params": params, **duplicate_summary(ds)})))
    return survivors, out.failures, out.counts, entry


def record_key(record: dict) -> str:
    """A source record's near-dedup key, 'file:line' (unique per record, as the work store's)."""
    return f"{record['file']}:{record['line']}"


class SketchRecord:
    """record -> the record with `SKETCH_FIELD`: the base64 sketch of `content(record)` (None when
    it cannot be sketched), keyed by `record_key`. Picklable when `content` is.

    Example (images): {"file": "a.tar", "line": 3, "image": b"\\x89PNG..."}
      -> {..., "near_sketch": "TFdNU0tUMQo..."}
    """

    def __init__(self, options: NearDedupOptions, content: Callable[[dict], Any]):
        self.carry = CarrySketch(options)
        self.content = content

    def __call__(self, record: dict) -> dict:
        try:
            value = self.content(record)
        except (ValueError, OSError, KeyError, TypeError):
            value = None
        sketch = None if value is None else self.carry(record_key(record), value)
        return {**record, SKETCH_FIELD: sketch}


def _record(tagged: tuple[str, Any]) -> dict:
    """("new", record) or ("stored", (doc_id, ref)) -> the record or ref (both have file and line)."""
    return tagged[1] if tagged[0] == "new" else tagged[1][1]


def _later_counts(item: tuple[int, dict], stages: tuple[str, ...], weigh: Callable[[dict], dict] | None):
    counts = weigh(item[1]) if weigh else {}
    for stage in stages:
        n = counts.get(stage, 1)
        yield stage, (n, n, 0)


def near_dedup_new_and_stored(
    new: beam.PCollection,
    stored: beam.PCollection,
    options: NearDedupOptions,
    content: Callable[[dict], Any],
    later: tuple[str, ...] = (),
    weigh: Callable[[dict], dict] | None = None,
    label: str = "near dedup",
):
    """Near-dedup of a job's new records together with the examples its work store already holds.

    Args:
      new: records (dicts with `file` and `line`) not in the store yet; each is sketched here
        (`SketchRecord(options, content)`) and leaves with its sketch in `SKETCH_FIELD`, which the
        job carries into its payload so it rests in the store's receipts.
      stored: `(doc_id, ref)` of the stored examples (`resume.stored_documents`); their sketches are
        read back, never recomputed. They skipped the job's stages up to this one (the job counts
        them there with `skip_stored`); a stored survivor is counted kept by every stage in `later`
        (`weigh(ref)[stage]` times, else once), so a stored example this stage removes (a retried
        record may be a bigger twin) leaves the later stages' counts consistent.

    Returns:
      (new survivors, stored survivors, failure rows, [counts PCollections], manifest entry).
    """
    sketched = new | f"{label}: sketch" >> beam.Map(SketchRecord(options, content))
    tagged = (
        (sketched | f"{label}: tag new" >> beam.Map(lambda r: ("new", r)),
         stored | f"{label}: tag stored" >> beam.Map(lambda s: ("stored", s)))
        | f"{label}: new and stored" >> beam.Flatten()
    )
    kept, failures, counts, entry = near_dedup_elements(
        tagged, options, key_of=lambda t: record_key(_record(t)),
        content=StoredSketch(options, field=lambda t: _record(t).get(SKETCH_FIELD)),
        where=lambda t: (_record(t)["file"], _record(t)["line"]), label=label)
    parts = kept | f"{label}: split" >> beam.Partition(lambda t, _n: 0 if t[0] == "new" else 1, 2)
    new_kept = parts[0] | f"{label}: new kept" >> beam.Map(lambda t: t[1])
    stored_kept = parts[1] | f"{label}: stored kept" >> beam.Map(lambda t: t[1])
    later_counts = (stored_kept
                    | f"{label}: stored later counts" >> beam.FlatMap(_later_counts, tuple(later), weigh)
                    | f"{label}: sum stored later counts" >> beam.CombinePerKey(add_counts))
    return new_kept, stored_kept, failures, [counts, later_counts], entry


def near_dedup_stage(
    stage: StageList,
    new: beam.PCollection,
    stored: beam.PCollection,
    options: NearDedupOptions | None,
    content: Callable[[dict], Any],
    later: tuple[str, ...] = (),
    weigh: Callable[[dict], dict] | None = None,
):
    """`near_dedup_new_and_stored` as a stage of a job's `StageList`, which keeps its failures, counts
    and manifest entry; with `options` None (near dedup off) it returns `(new, stored)` unchanged.

    Returns:
      (new survivors, stored survivors).
    """
    if options is None:
        return new, stored
    new, stored, failures, counts, entry = near_dedup_new_and_stored(
        new, stored, options, content=content, later=later, weigh=weigh)
    stage.add(failures, *counts, entry=entry)
    return new, stored
