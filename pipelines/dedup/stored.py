"""Near-dedup inside a job: the sketch a document carries into the work store, the dedup of a job's
elements by those sketches, and the manifest entry.

A job sketches each document where its content is at hand (the books job: after the length filter,
before tokenizing) and keeps the sketch's bytes (`encode_sketch`, base64, in the field
`SKETCH_FIELD`) with the document, so they rest in the work store's receipts with its reference. Near
dedup then runs on the references, after exact dedup, and reads the sketches back (`StoredSketch`):
a resumed or retried run sketches only the documents it makes again, never the stored ones.

A document without a readable sketch (its content could not be sketched, or the stored bytes were
made with other parameters) is kept and counted in the `near_dedup.unsketched` metric.

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
