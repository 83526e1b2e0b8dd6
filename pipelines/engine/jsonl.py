"""Reading JSON-lines inputs record by record, so that no line can cost its neighbours.

Every job that reads JSON lines (books' `.jsonl`/`.jsonl.zst`, images' `captions.jsonl`, videos'
`.jsonl` lists) reads them here: `split_lines` cuts a stream of byte chunks into lines in linear
time (a long line is gathered as a list of pieces and joined once, never re-copied per chunk), a
line over the limit is counted without being held; `parse_line` turns one line into a JSON value
through the one guarded parser (`packing.json_input.parse_json`: bad UTF-8, bad JSON and JSON
nested too deeply to parse are that line's `Dropped`); `guard_record` makes any other exception
while turning a line or row into a record that record's `Dropped` (`bad_record`), and
`count_empty` gives a file that holds no record one `empty_file` row, so an empty input is
counted rather than silently missing. `read_records` opens one input file of any kind for its
reader and does both ends: a file that cannot be opened is one `unreadable_file` row;
`parquet_file` opens a parquet input the same way (a bad one is one `parquet_error` row).

Reasons: `invalid_utf8`, `invalid_json` (including too deeply nested), `not_an_object`, `line_too_long`,
`bad_record`, `empty_file`, `unreadable_file`.

Example:
    for line_no, raw in split_lines(chunks, 256 << 20):
        item = Dropped("line_too_long", ...) if isinstance(raw, int) else parse_line(raw, path, line_no)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from lwmkit.packing.json_input import parse_json
from lwmkit.pipelines.engine.drops import Dropped
from lwmkit.pipelines.engine.outputs import open_input


def file_chunks(f: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of an open file, `size` at a time."""
    while chunk := f.read(size):
        yield chunk


def split_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | int]]:
    """(line number, line bytes) for each non-blank line; (line number, its length) for one over the limit.

    Linear in the input whatever the line lengths: the pieces of a line spread over many chunks are
    kept in a list and joined once at its end (peak memory about twice the longest line kept), and
    a line over `max_line_bytes` is only measured. A trailing `\\r` is removed.
    """
    line_no = 0
    parts: list[bytes] = []
    held = 0  # bytes of the current line in `parts`
    skipped = -1  # >= 0: inside an over-long line, its length so far
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if skipped >= 0:
                skipped += len(piece)
            elif held + len(piece) > max_line_bytes:
                skipped, parts, held = held + len(piece), [], 0
            elif piece:
                parts.append(piece)
                held += len(piece)
            if end < 0:
                break
            line_no += 1
            if skipped >= 0:
                yield line_no, skipped
            elif held:
                raw = parts[0] if len(parts) == 1 else b"".join(parts)
                parts, held = [], 0
                if raw.strip():
                    yield line_no, raw.rstrip(b"\r")
            skipped = -1
            start = end + 1
    if skipped >= 0:
        yield line_no + 1, skipped
    elif held:
        raw = b"".join(parts)
        if raw.strip():
            yield line_no + 1, raw.rstrip(b"\r")


class _LineError(ValueError):
    pass


def parse_line(raw: bytes, path: str, line_no: int) -> Any:
    """The JSON value of one line, or a `Dropped` (`invalid_utf8` or `invalid_json`) saying why not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Dropped("invalid_utf8", f"byte {e.start} of the line: {e.reason}", path, line_no)
    try:
        return parse_json(text, f"line {line_no}", _LineError, expect=object)
    except _LineError as e:
        return Dropped("invalid_json", str(e), path, line_no)


def utf8_text(value: bytes, path: str, row: int, where: str = "") -> str | Dropped:
    """`value` decoded as UTF-8, or its `invalid_utf8` row (`where` starts the detail, e.g. "'caption': ")."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        return Dropped("invalid_utf8", f"{where}byte {e.start}: {e.reason}", path, row)


def parse_object(raw: bytes, path: str, line_no: int) -> dict | Dropped:
    """`parse_line` of a line that must hold a JSON object; any other value is `not_an_object`."""
    obj = parse_line(raw, path, line_no)
    if isinstance(obj, Dropped | dict):
        return obj
    return not_an_object(obj, path, line_no)


def not_an_object(value: Any, path: str, line_no: int) -> Dropped:
    """The `not_an_object` row of a record that is a JSON `value` other than an object."""
    return Dropped("not_an_object", f"a JSON {type(value).__name__}, expected an object", path, line_no)


def too_long(path: str, line_no: int, length: int, max_line_bytes: int) -> Dropped:
    """The `line_too_long` row of a line `split_lines` measured."""
    return Dropped("line_too_long", f"{length:,} bytes, maximum {max_line_bytes:,}", path, line_no)


def guard_record(make: Callable[[], Any], path: str, line_no: int) -> Any:
    """`make()`, or a `bad_record` Dropped naming the exception it raised (the file goes on)."""
    try:
        return make()
    except Exception as e:  # any failure of one record is that record's, never its neighbours'
        return Dropped("bad_record", f"{type(e).__name__}: {e}", path, line_no)


def count_empty(path: str, items: Iterable[Any]) -> Iterator[Any]:
    """Passes `items` on; a file that gave none gets one `empty_file` Dropped."""
    seen = False
    for item in items:
        seen = True
        yield item
    if not seen:
        yield Dropped("empty_file", "the file holds no record", path, 0)


def read_records(path: str, read: Callable[[BinaryIO], Iterable[Any]]) -> Iterator[Any]:
    """The records `read(f)` yields from the opened input file `path`, through `count_empty`; a
    file that cannot be opened (missing, no permission, a remote error) is one `unreadable_file`
    Dropped instead."""
    try:
        f = open_input(path)
    except Exception as e:  # missing file, permission, remote error
        yield Dropped("unreadable_file", str(e), path, 0)
        return
    with f:
        yield from count_empty(path, read(f))


def parquet_file(path: str, f: BinaryIO):
    """Opens the parquet file `f` (of input `path`) and reads its schema; used as
    `pf = yield from parquet_file(path, f)` in a reader, it yields the `parquet_error` Dropped of
    a file that is not one and returns None.

    Returns:
      The `pyarrow.parquet.ParquetFile`, or None.
    """
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
        pf.schema_arrow.names  # noqa: B018 - a schema pyarrow cannot read is this file's error
    except Exception as e:  # pyarrow raises several types for a bad file
        yield Dropped("parquet_error", str(e), path, 0)
        return None
    return pf
