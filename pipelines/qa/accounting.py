"""The QA manifest's accounting: stage counts in one unit per stage, and what --retry-failures did.

The stage adapter counts what each stage function received and emitted, which for the QA job mixes
units (`read` receives files and emits books, `generate` receives batches, `validate` receives books
and drops chunks, `assemble` receives books and emits contexts). `stage_counts` restates every stage
in one unit, so that seen = kept + dropped holds for each, and keeps the adapter's other unit under
its own name:

    read      record    seen = books read + records dropped; `files`: the inputs read
    normalize, filter, dedup, chunk, generate   book  (`groups` / `batches`: what dedup / generate received)
    validate  chunk     seen = chunks generated, kept = chunks with a valid pair, dropped = failed chunks;
                        `books`: the books passed on to assemble
    assemble  context   kept = contexts, dropped = contexts (or books) left out; `books`: books received

`retry_entry` counts a --retry-failures run in failure rows (for validate, one per chunk): how many
rows the earlier run had, how many of them are gone (recovered), how many are still there, and the
generator calls and HTTP requests the retry sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

_OTHER_UNIT = {"read": "files", "dedup": "groups", "generate": "batches"}


def stage_counts(stages: dict[str, dict[str, int]], qa: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The QA job's stage counts restated in one unit per stage; see the module docstring.

    Args:
      stages: the adapter's counts, `{stage: {seen, kept, dropped}}`.
      qa: the manifest's `qa` section (its `chunks` counts give the validate stage).

    Raises:
      ValueError: if validate's failure rows and the chunk statistics disagree.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, c in stages.items():
        seen, kept, dropped = c["seen"], c["kept"], c["dropped"]
        if name == "validate":
            chunks = qa["chunks"]
            if chunks["failed"] != dropped:
                raise ValueError(f"validate dropped {dropped} chunks, the statistics count {chunks['failed']} failed")
            out[name] = {"unit": "chunk", "seen": chunks["chunks"], "kept": chunks["with_pairs"],
                         "dropped": dropped, "books": kept}
        elif name == "assemble":
            out[name] = {"unit": "context", "seen": kept + dropped, "kept": kept, "dropped": dropped, "books": seen}
        else:
            unit = "record" if name == "read" else "book"
            out[name] = {"unit": unit, "seen": kept + dropped, "kept": kept, "dropped": dropped}
            if name in _OTHER_UNIT:
                out[name][_OTHER_UNIT[name]] = seen
    return out


def failure_key(row: dict[str, Any]) -> tuple:
    """What identifies a failure row across runs: its chunk for generation rows, else the whole row."""
    if row["stage"] == "validate":
        try:
            return ("validate", json.loads(row["detail"])["chunk_id"])
        except (ValueError, KeyError, TypeError):
            pass
    return (row["stage"], row["file"], row["line"], row["reason"], row["detail"])


def retry_entry(previous: Sequence[dict], now: Sequence[dict], generation: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `retry` entry: the earlier run's failure rows, recovered, still failing, calls made.

    Args:
      previous: the earlier run's failure rows (`engine.resume.previous_failures`).
      now: this run's failure rows.
      generation: this run's `qa.generation` section.
    """
    before = {failure_key(r) for r in previous}
    still = before & {failure_key(r) for r in now}
    chunks_before = sum(1 for k in before if k[0] == "validate")
    return {
        "rows": len(before),
        "recovered": len(before) - len(still),
        "still_failing": len(still),
        "chunks": {"rows": chunks_before, "still_failing": sum(1 for k in still if k[0] == "validate")},
        "generator_calls": generation["calls"],
        "http_requests": generation["http_requests"],
    }


def retry_line(entry: dict[str, Any]) -> str:
    """The line `lwm-pack qa --retry-failures` prints."""
    c = entry["chunks"]
    return (
        f"retried {entry['rows']} failed rows ({c['rows']} chunks): {entry['recovered']} recovered, "
        f"{entry['still_failing']} still failing ({c['still_failing']} chunks); "
        f"{entry['generator_calls']} generator calls, {entry['http_requests']} HTTP requests"
    )
