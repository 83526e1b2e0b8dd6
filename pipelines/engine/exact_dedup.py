"""Exact deduplication as a stage: of records grouped under one content hash, keep the first.

Jobs key each record by a hash of its content (text; image bytes and caption; video, clip and
text), group by it, and run `KeepFirst` on every group. "First" is by (file, line), and by the
record's `key` too where one row of an input can hold several records, so the record kept does
not depend on arrival order or runner; every other one leaves as a `Dropped("duplicate", ...)`
naming the record kept.

Example:
    KeepFirst("text")((7, [b.jsonl:2, a.jsonl:9]))
    -> a.jsonl:9, Dropped("duplicate", "same text as a.jsonl:9", "b.jsonl", 2)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from lwmkit.pipelines.engine.stages import Dropped


@dataclass(frozen=True)
class KeepFirst:
    """The exact-dedup stage over `(content_hash, records)` groups.

    Attributes:
      what: what the records of a group share, as the drop detail says it ("same <what> as f:l").
      by_key: order by (file, line, key) instead of (file, line).
      with_doc_id: the kept record carries the group's hash as `doc_id`.
    """

    what: str
    by_key: bool = False
    with_doc_id: bool = False

    def __call__(self, element: tuple[int, Iterable[dict]]) -> Iterator[dict | Dropped]:
        doc_id, records = element
        if self.by_key:
            ordered = sorted(records, key=lambda d: (d["file"], d["line"], d["key"]))
        else:
            ordered = sorted(records, key=lambda d: (d["file"], d["line"]))
        first = ordered[0]
        yield {**first, "doc_id": doc_id} if self.with_doc_id else first
        for d in ordered[1:]:
            yield Dropped("duplicate", f"same {self.what} as {first['file']}:{first['line']}", d["file"], d["line"])
