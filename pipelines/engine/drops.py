"""What a stage function says about a record it drops, without Beam: `DropRecord` (raised; a
`ReasonError`, like every exception that names a failure's reason), `Dropped` (yielded), the
failure row each becomes, and `KeepFirst`, the exact-dedup verdict.

Readers, downloaders and the VQGAN step import these markers; `stages.py` (the Beam stage adapter)
turns them into failure rows. Keeping them apart from Beam lets a job's options and input checks
(e.g. `images/options.py`, which reads `images/sources.py`) load before Beam does.

Exact deduplication: jobs key each record by a hash of its content (text; image bytes and caption;
video, clip and text), group by it, and run `KeepFirst` on every group. "First" is by (file, line),
and by the record's `key` too where one row of an input can hold several records, so the record
kept does not depend on arrival order or runner; every other one leaves as a
`Dropped("duplicate", ...)` naming the record kept.

Example:
    KeepFirst("text")((7, [b.jsonl:2, a.jsonl:9]))
    -> a.jsonl:9, Dropped("duplicate", "same text as a.jsonl:9", "b.jsonl", 2)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


class ReasonError(Exception):
    """An exception that says why in two parts: `reason`, the short name a failure row counts
    (`missing_file`, `timeout`, ...), and `detail`, the rest; its message is "reason: detail".
    The base of `DropRecord`, the downloaders' `DownloadError`, the decoders' `VideoError` and the
    model client's `CallError`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class DropRecord(ReasonError):  # noqa: N818 - it is a signal, not an error of the job
    """Raised by a stage function to drop the current record with a reason."""


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
