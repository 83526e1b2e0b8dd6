"""Reading raw text documents from Books3-style `jsonl.zst`, `.jsonl`, `.txt` and parquet files.

`read_documents(path)` yields one `dict(file, line, text, meta)` per document and a `Dropped` for
each record it cannot read, with the reason; the rest of the file is still read. A `.txt` file is
one document. Files are opened through Beam's `FileSystems`, so any Beam path (`gs://`, `s3://`,
local) works.

Failure reasons: `unreadable_file`, `corrupt_zstd`, `invalid_utf8`, `invalid_unicode`,
`invalid_json`, `not_an_object`, `missing_text`, `text_not_string`, `line_too_long`, `parquet_error`,
`bad_record`, `empty_file`.
`invalid_json` includes JSON nested too deeply to parse; `bad_record` is any other failure of one
line (the next line is still read); `empty_file` is a file that holds no record.
A corrupt or truncated zstd stream keeps every complete line before the damage; `invalid_unicode`
is a lone surrogate, which a JSON escape such as `\\ud800` can produce. Memory stays bounded
whatever the input: zstd output is produced a few MiB at a time and a line over
`MAX_LINE_BYTES` (a decompression bomb is one endless line) is dropped without being held.

Example, a `books.jsonl` line `{"text": "Call me Ishmael.", "meta": {"title": "Moby Dick"}}`:
    {"file": "books.jsonl", "line": 1, "text": "Call me Ishmael.", "meta": '{"title": "Moby Dick"}'}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

from lwmkit.pipelines.engine.jsonl import file_chunks, guard_record, parquet_file, parse_object, read_records, split_lines, too_long, utf8_text
from lwmkit.pipelines.engine.inputs import kind_by_suffix
from lwmkit.pipelines.engine.drops import Dropped

_SURROGATE = re.compile("[\ud800-\udfff]")
SUFFIXES = (".jsonl.zst", ".jsonl.zstd", ".jsonl", ".json.zst", ".txt", ".parquet")
_KINDS = (((".jsonl.zst", ".jsonl.zstd", ".json.zst"), "jsonl.zst"), (".jsonl", "jsonl"), (".txt", "txt"),
          (".parquet", "parquet"))


def input_kind(path: str) -> str:
    """'jsonl.zst', 'jsonl', 'txt' or 'parquet' by file name.

    Raises:
      ValueError: listing the supported suffixes.
    """
    return kind_by_suffix(path, _KINDS, f"unsupported input type; expected one of {list(SUFFIXES)}")


def _meta_json(meta: Any) -> str | None:
    if meta is None:
        return None
    # Parquet metadata may hold dates or bytes: record them as text rather than lose the row.
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str)


def _jsonl_record(path: str, line_no: int, raw: bytes, text_key: str) -> dict | Dropped:
    obj = parse_object(raw, path, line_no)
    if isinstance(obj, Dropped):
        return obj
    if text_key not in obj or obj[text_key] is None:
        return Dropped("missing_text", f"no {text_key!r} field", path, line_no)
    text = obj[text_key]
    if not isinstance(text, str):
        return Dropped("text_not_string", f"{text_key!r} is a {type(text).__name__}", path, line_no)
    if bad := _SURROGATE.search(text):  # JSON escapes such as \ud800 decode to lone surrogates
        return Dropped("invalid_unicode", f"lone surrogate U+{ord(bad.group()):04X} at character {bad.start()}", path, line_no)
    return {"file": path, "line": line_no, "text": text, "meta": _meta_json(obj.get("meta"))}


# A line longer than this is dropped (`line_too_long`) without being held in memory: a Books3 book
# is a few MB, and a decompression bomb is one endless line.
MAX_LINE_BYTES = 256 << 20


def _lines_of(
    path: str, chunks: Iterator[bytes], text_key: str, errors: tuple[type, ...], reason: str,
    max_line_bytes: int = MAX_LINE_BYTES,
):
    """Splits a stream of byte chunks into records (linear time, see `engine.jsonl.split_lines`);
    a stream error keeps every complete line before it."""
    line_no = 0
    try:
        for line_no, raw in split_lines(chunks, max_line_bytes):
            if isinstance(raw, int):
                yield too_long(path, line_no, raw, max_line_bytes)
            else:
                yield guard_record(lambda: _jsonl_record(path, line_no, raw, text_key), path, line_no)
    except errors as e:
        yield Dropped(reason, f"after {line_no} complete lines: {e}", path, line_no + 1)


class TruncatedZstdError(ValueError):
    """The compressed input ends inside a zstd frame."""


def _zstd_chunks(f: BinaryIO, size: int = 1 << 16, feed: int = 512) -> Iterator[bytes]:
    """Decompressed bytes of a (multi-frame) zstd stream, checking that the last frame is complete.

    Input is read 64 KiB at a time and fed to the decompressor `feed` bytes at a time: zstd can
    expand a few bytes into a 128 KiB block, so 512 input bytes yield at most ~16 MiB and a
    decompression bomb never lands in memory at once (`_lines_of` then drops its endless line).
    """
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    dobj = dctx.decompressobj()
    started = False  # the current frame has consumed input
    while data := f.read(size):
        for start in range(0, len(data), feed):
            chunk = data[start : start + feed]
            while chunk:
                started = True
                out = dobj.decompress(chunk)
                if out:
                    yield out
                if dobj.eof:
                    chunk = dobj.unused_data
                    dobj = dctx.decompressobj()
                    started = False
                else:
                    chunk = b""
    if started:
        raise TruncatedZstdError("the input ends inside a zstd frame (truncated file)")


def _read_jsonl_zst(path: str, f: BinaryIO, text_key: str) -> Iterator[dict | Dropped]:
    import zstandard

    yield from _lines_of(path, _zstd_chunks(f), text_key, (zstandard.ZstdError, TruncatedZstdError), "corrupt_zstd")


def _read_txt(path: str, f: BinaryIO) -> Iterator[dict | Dropped]:
    data = f.read()
    if not data:
        return  # counted as `empty_file`
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        yield Dropped("invalid_utf8", f"byte {e.start} (line {line}): {e.reason}", path, 1)
        return
    yield {"file": path, "line": 1, "text": text, "meta": None}


def _read_parquet(path: str, f: BinaryIO, text_key: str) -> Iterator[dict | Dropped]:
    pf = yield from parquet_file(path, f)
    if pf is None:
        return
    names = pf.schema_arrow.names
    if text_key not in names:
        yield Dropped("missing_text", f"no {text_key!r} column (columns: {names})", path, 0)
        return
    columns = [text_key] + (["meta"] if "meta" in names else [])
    row = 0
    try:
        for batch in pf.iter_batches(columns=columns, batch_size=256):
            texts = batch.column(0).to_pylist()
            metas = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
            for text, meta in zip(texts, metas, strict=True):
                row += 1
                if isinstance(text, bytes):
                    text = utf8_text(text, path, row)
                if text is None:
                    yield Dropped("missing_text", f"{text_key!r} is null", path, row)
                elif isinstance(text, Dropped):
                    yield text
                elif isinstance(text, str):
                    yield {"file": path, "line": row, "text": text, "meta": _meta_json(meta)}
                else:
                    yield Dropped("text_not_string", f"{text_key!r} is a {type(text).__name__}", path, row)
    except Exception as e:  # a corrupt page mid-file; rows before it are kept
        yield Dropped("parquet_error", f"after row {row}: {e}", path, row + 1)


def read_documents(path: str, text_key: str = "text") -> Iterator[dict | Dropped]:
    """Yields the documents of one input file, and a `Dropped` per unreadable record.

    Args:
      path: a local or Beam filesystem path with a supported suffix.
      text_key: the JSON key or parquet column holding the text.
    """
    kind = input_kind(path)

    def read(f):
        if kind == "jsonl.zst":
            return _read_jsonl_zst(path, f, text_key)
        if kind == "jsonl":
            return _lines_of(path, file_chunks(f), text_key, (OSError,), "unreadable_file")
        if kind == "txt":
            return _read_txt(path, f)
        return _read_parquet(path, f, text_key)

    yield from read_records(path, read)


def iter_texts(path: str, text_key: str = "text") -> Iterator[str]:
    """The texts of one input file, skipping unreadable records (for tokenizer training)."""
    for item in read_documents(path, text_key):
        if isinstance(item, dict):
            yield item["text"]
