"""Reading JSON-lines files that come from elsewhere (haystacks, cases, results), one line at a time.

Every line is decoded and parsed on its own; anything wrong with one (not UTF-8, not JSON, nested
too deeply for the parser, not a JSON object) raises the caller's error class with a message that
names the file, the line and the reason, never a bare traceback.

Example:
    >>> for line, row in json_lines("cases.jsonl", CaseError):
    ...     ...
    CaseError: cases.jsonl:3: not valid JSON: Expecting value: line 1 column 1 (char 0)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lwmkit.packing.json_input import parse_json


def parse_line(raw: bytes | str, where: str, error: type[ValueError]) -> Any:
    """One JSON value from one line; `where` ("file:line") heads the error message.

    Raises:
      error: the line is not UTF-8, not JSON, or nested too deeply to parse
        (`lwmkit.packing.json_input.parse_json`, the one guarded parser).
    """
    return parse_json(raw, where, error, object)


def json_lines(path: str, error: type[Exception], data: bytes | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line of `path` (or of `data`, its bytes).

    Raises:
      error: naming the file and line of a line that is not a JSON object, or the file if unreadable.
    """
    if data is None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise error(f"{path}: cannot read: {e}") from e
    for i, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        row = parse_line(raw, f"{path}:{i}", error)
        if not isinstance(row, dict):
            raise error(f"{path}:{i}: not a JSON object (got {type(row).__name__})")
        yield i, row
