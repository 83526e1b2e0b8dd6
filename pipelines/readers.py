"""Reading raw text documents from Books3-style `jsonl.zst`, `.jsonl`, `.txt` and parquet files.

`read_documents(path)` yields one `dict(file, line, text, meta)` per document and a `Dropped` for
each record it cannot read, with the reason; the rest of the file is still read. A `.txt` file is
one document. Files are opened through Beam's `FileSystems`, so any Beam path (`gs://`, `s3://`,
local) works.

Failure reasons: `unreadable_file`, `corrupt_zstd`, `invalid_utf8`, `invalid_json`,
`not_an_object`, `missing_text`, `text_not_string`, `parquet_error`.

Example, a `books.jsonl` line `{"text": "Call me Ishmael.", "meta": {"title": "Moby Dick"}}`:
    {"file": "books.jsonl", "line": 1, "text": "Call me Ishmael.", "meta": '{"title": "Moby Dick"}'}
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

from lwmkit.pipelines.stages import Dropped

SUFFIXES = (".jsonl.zst", ".jsonl.zstd", ".jsonl", ".json.zst", ".txt", ".parquet")


def input_kind(path: str) -> str:
    """'jsonl.zst', 'jsonl', 'txt' or 'parquet' by file name.

    Raises:
      ValueError: listing the supported suffixes.
    """
    lower = path.lower()
    if lower.endswith((".jsonl.zst", ".jsonl.zstd", ".json.zst")):
        return "jsonl.zst"
    if lower.endswith(".jsonl"):
        return "jsonl"
    if lower.endswith(".txt"):
        return "txt"
    if lower.endswith(".parquet"):
        return "parquet"
    raise ValueError(f"{path}: unsupported input type; expected one of {list(SUFFIXES)}")


def _open(path: str) -> BinaryIO:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _meta_json(meta: Any) -> str | None:
    if meta is None:
        return None
    return json.dumps(meta, sort_keys=True, ensure_ascii=False)


def _jsonl_record(path: str, line_no: int, raw: bytes, text_key: str) -> dict | Dropped:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Dropped("invalid_utf8", f"byte {e.start} of the line: {e.reason}", path, line_no)
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return Dropped("invalid_json", str(e), path, line_no)
    if not isinstance(obj, dict):
        return Dropped("not_an_object", f"a JSON {type(obj).__name__}, expected an object", path, line_no)
    if text_key not in obj or obj[text_key] is None:
        return Dropped("missing_text", f"no {text_key!r} field", path, line_no)
    text = obj[text_key]
    if not isinstance(text, str):
        return Dropped("text_not_string", f"{text_key!r} is a {type(text).__name__}", path, line_no)
    return {"file": path, "line": line_no, "text": text, "meta": _meta_json(obj.get("meta"))}


def _read_lines(path: str, stream: BinaryIO, text_key: str, errors: tuple[type, ...], reason: str):
    line_no = 0
    try:
        for raw in stream:
            line_no += 1
            if not raw.strip():
                continue
            yield _jsonl_record(path, line_no, raw.rstrip(b"\r\n"), text_key)
    except errors as e:
        yield Dropped(reason, f"after {line_no} lines: {e}", path, line_no + 1)


def _read_jsonl_zst(path: str, f: BinaryIO, text_key: str) -> Iterator[dict | Dropped]:
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True, closefd=False)
    yield from _read_lines(path, io.BufferedReader(reader, 1 << 20), text_key, (zstandard.ZstdError,), "corrupt_zstd")


def _read_txt(path: str, f: BinaryIO) -> Iterator[dict | Dropped]:
    data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        yield Dropped("invalid_utf8", f"byte {e.start} (line {line}): {e.reason}", path, 1)
        return
    yield {"file": path, "line": 1, "text": text, "meta": None}


def _read_parquet(path: str, f: BinaryIO, text_key: str) -> Iterator[dict | Dropped]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
    except Exception as e:  # pyarrow raises several types for a bad file
        yield Dropped("parquet_error", str(e), path, 0)
        return
    if text_key not in names:
        yield Dropped("missing_text", f"no {text_key!r} column (columns: {names})", path, 0)
        return
    columns = [text_key] + (["meta"] if "meta" in names else [])
    row = 0
    try:
        for batch in pf.iter_batches(columns=columns, batch_size=256):
            texts = batch.column(0).to_pylist()
            metas = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
            for text, meta in zip(texts, metas):
                row += 1
                if text is None:
                    yield Dropped("missing_text", f"{text_key!r} is null", path, row)
                elif isinstance(text, bytes):
                    try:
                        text = text.decode("utf-8")
                    except UnicodeDecodeError as e:
                        yield Dropped("invalid_utf8", f"byte {e.start}: {e.reason}", path, row)
                        continue
                    yield {"file": path, "line": row, "text": text, "meta": _meta_json(meta)}
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
    try:
        f = _open(path)
    except Exception as e:  # missing file, permission, remote error
        yield Dropped("unreadable_file", str(e), path, 0)
        return
    with f:
        if kind == "jsonl.zst":
            yield from _read_jsonl_zst(path, f, text_key)
        elif kind == "jsonl":
            yield from _read_lines(path, f, text_key, (OSError,), "unreadable_file")
        elif kind == "txt":
            yield from _read_txt(path, f)
        else:
            yield from _read_parquet(path, f, text_key)


def iter_texts(path: str, text_key: str = "text") -> Iterator[str]:
    """The texts of one input file, skipping unreadable records (for tokenizer training)."""
    for item in read_documents(path, text_key):
        if isinstance(item, dict):
            yield item["text"]
