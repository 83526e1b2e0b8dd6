"""Reading the video job's input lists: parquet, CSV or JSONL rows naming a video and its text.

Each row names one video, by `url` (http(s), or file:// when allowed; WebVid's `contentUrl`) or by
`path` (relative to the list's folder; absolute only when allowed), and its text:

    a caption        `caption`, `text` or `name` (WebVid's caption column)
    chat turns       `conversations`: [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...]
                     (LLaVA / Valley style; "<video>" placeholders are removed), or `qa`:
                     [{"question"|"q": ..., "answer"|"a": ...}, ...], or one `question` + `answer`
                     (Video-ChatGPT's `q` / `a`); in CSV, list columns hold JSON text
    a clip range     optional `start` / `end` (also `start_time`/`end_time`, InternVid's
                     `Start_timestamp`/`End_timestamp`): seconds, or "HH:MM:SS.fff" / "MM:SS" text

Every video is `dict(file, line, key, url, path, caption, turns, start, end, meta)`: `line` is the
1-based row (parquet, CSV) or line (JSONL); `key` is the row's `key`/`videoid`/`video_id`/`id`, or
`<file name>:<row>`; `turns` is a list of [question, answer] or None; `meta` is a small JSON string.

Failure reasons: `unreadable_file`, `parquet_error`, `csv_error`, `invalid_utf8`, `invalid_json`,
`not_an_object`, `missing_video` (neither url nor path), `unsafe_path`, `bad_time`, `bad_turns`,
`line_too_long`, `bad_record` (any other failure of one row; the next is still read), `empty_file`
(a list that holds no row). `invalid_json` includes JSON nested too deeply to parse.

Example, a WebVid CSV row (line 2 of webvid.csv, after the header):
    videoid,contentUrl,duration,page_dir,name
    1056,https://example.com/1056.mp4,PT00H00M12S,dir,A red bus drives by
  -> {"file": "webvid.csv", "line": 2, "key": "1056", "url": "https://example.com/1056.mp4", "path": None,
      "caption": "A red bus drives by", "turns": None, "start": None, "end": None,
      "meta": '{"key": "1056", "source": "csv", "url": "https://example.com/1056.mp4"}'}
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lwmkit.pipelines.engine.jsonl import file_chunks, guard_record, not_an_object, parse_line, read_records, split_lines, too_long
from lwmkit.pipelines.engine.inputs import kind_by_suffix
from lwmkit.pipelines.engine.drops import Dropped
from lwmkit.pipelines.images.sources import unsafe_member_name

URL_COLUMNS = ("url", "contentUrl", "video_url", "URL")
PATH_COLUMNS = ("path", "video_path", "video", "file")
CAPTION_COLUMNS = ("caption", "text", "name")
KEY_COLUMNS = ("key", "videoid", "video_id", "id")
START_COLUMNS = ("start", "start_time", "Start_timestamp", "timestamp_start")
END_COLUMNS = ("end", "end_time", "End_timestamp", "timestamp_end")
_PLACEHOLDER = re.compile(r"<video>|<image>")
_HUMAN = ("human", "user")
_ASSISTANT = ("gpt", "assistant", "bot")
_TIME = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)$")


class RowError(ValueError):
    """A row cannot give a video; `reason` is one of the module docstring's reasons."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class VideoSourceOptions:
    """Column names of the inputs (None tries the usual names) and what local paths may be read.

    Attributes:
      url_column, path_column, caption_column: where a row keeps its video and caption.
      allow_local: accept absolute `path` values (relative ones are always read from the list's
        folder); file:// URLs are the download stage's `allow_file`.
    """

    url_column: str | None = None
    path_column: str | None = None
    caption_column: str | None = None
    allow_local: bool = False


def source_kind(path: str) -> str:
    """'parquet', 'csv' or 'jsonl' by file name.

    Raises:
      ValueError: listing the supported suffixes.
    """
    return kind_by_suffix(path, ((".parquet", "parquet"), (".csv", "csv"), (".jsonl", "jsonl")),
                          "unsupported video list; expected .parquet, .csv or .jsonl")


def parse_time(value: Any, column: str) -> float | None:
    """Seconds from a number or an "[HH:]MM:SS[.fff]" string; None for an empty value.

    Raises:
      RowError: bad_time, naming the column and value.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise RowError("bad_time", f"{column}={value!r} is not a time")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        m = _TIME.match(text)
        try:
            seconds = (int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))) if m else float(text)
        except ValueError:
            raise RowError("bad_time", f"{column}={value!r} is neither seconds nor [HH:]MM:SS[.fff]") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise RowError("bad_time", f"{column}={value!r} is not a time >= 0")
    return seconds


def _as_list(value: Any, column: str) -> list:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as e:
            raise RowError("bad_turns", f"{column} is text but not JSON: {e!r}") from None
    if not isinstance(value, list | tuple) or not value:
        raise RowError("bad_turns", f"{column} must be a non-empty list, got {type(value).__name__}")
    return list(value)


def _clean(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise RowError("bad_turns", f"{what} is a {type(text).__name__}, not text")
    return _PLACEHOLDER.sub("", text).strip()


def parse_turns(row: dict[str, Any]) -> list[list[str]] | None:
    """The row's question/answer turns, or None when it has none (see the module docstring).

    Raises:
      RowError: bad_turns, for a malformed conversation.
    """
    if row.get("conversations") is not None:
        items = _as_list(row["conversations"], "conversations")
        turns, question = [], None
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "value" not in item:
                raise RowError("bad_turns", f"conversations[{i}] is not a {{from, value}} object")
            role = str(item.get("from", "")).lower()
            if role in _HUMAN and question is None:
                question = _clean(item["value"], f"conversations[{i}].value")
            elif role in _ASSISTANT and question is not None:
                turns.append([question, _clean(item["value"], f"conversations[{i}].value")])
                question = None
            else:
                raise RowError("bad_turns", f"conversations[{i}] from {role!r} breaks the human/assistant alternation")
        if question is not None:
            raise RowError("bad_turns", "the conversation ends with an unanswered question")
        return turns
    for column in ("qa", "qa_pairs"):
        if row.get(column) is not None:
            turns = []
            for i, item in enumerate(_as_list(row[column], column)):
                if not isinstance(item, dict):
                    raise RowError("bad_turns", f"{column}[{i}] is not an object")
                q = item.get("question", item.get("q"))
                a = item.get("answer", item.get("a"))
                turns.append([_clean(q, f"{column}[{i}].question"), _clean(a, f"{column}[{i}].answer")])
            return turns
    q, a = row.get("question", row.get("q")), row.get("answer", row.get("a"))
    if q is None and a is None:
        return None
    return [[_clean(q, "question"), _clean(a, "answer")]]


def _pick(row: dict[str, Any], wanted: str | None, candidates: tuple[str, ...]) -> Any:
    if wanted is not None:
        return None if row.get(wanted) == "" else row.get(wanted)
    return next((row[c] for c in candidates if row.get(c) not in (None, "")), None)


def _meta(key: str, source: str, row: dict[str, Any], url: str | None, video: str) -> str:
    """The record's meta: its key, the list's kind, the video (its URL, or its path as the list
    writes it: the record's file and line name the list, this names the video) and listed facts."""
    d: dict[str, Any] = {"key": key, "source": source, "video": video}
    if url:
        d["url"] = url
    for k in ("license", "duration", "page_dir"):
        v = row.get(k)
        if isinstance(v, str | int | float) and not isinstance(v, bool) and v != "":
            d[k] = v
    return json.dumps(d, sort_keys=True, ensure_ascii=False)


def row_video(path: str, line: int, row: Any, kind: str, options: VideoSourceOptions) -> dict | Dropped:
    """One input row -> a video dict, or a `Dropped` with the reason."""
    if not isinstance(row, dict):
        return not_an_object(row, path, line)
    try:
        url = _pick(row, options.url_column, URL_COLUMNS)
        rel = _pick(row, options.path_column, PATH_COLUMNS) if url is None else None
        if url is None and rel is None:
            raise RowError("missing_video", f"no url or path (columns {sorted(row)})")
        video_path = None
        if rel is not None:
            rel = str(rel)
            if os.path.isabs(rel) or "://" in rel:
                if not options.allow_local:
                    hint = "allow it with allow_local / --allow-file-urls"
                    raise RowError("unsafe_path", f"{rel!r} is absolute ({hint})")
                video_path = rel
            elif unsafe_member_name(rel):
                raise RowError("unsafe_path", f"{rel!r} leaves the list's folder")
            else:
                folder = posixpath.dirname(path) if "://" in path else os.path.dirname(path)
                video_path = f"{folder}/{rel}" if "://" in path else os.path.join(folder, rel)
        start = parse_time(_pick(row, None, START_COLUMNS), "start")
        end = parse_time(_pick(row, None, END_COLUMNS), "end")
        if start is not None and end is not None and end <= start:
            raise RowError("bad_time", f"end {end:g}s is not after start {start:g}s")
        turns = parse_turns(row)
    except RowError as e:
        return Dropped(e.reason, e.detail, path, line)
    raw_key = _pick(row, None, KEY_COLUMNS)
    key = str(raw_key) if raw_key is not None else f"{posixpath.basename(path)}:{line}"
    caption = _pick(row, options.caption_column, CAPTION_COLUMNS)
    return {
        "file": path,
        "line": line,
        "key": key,
        "url": None if url is None else str(url),
        "path": video_path,
        "caption": caption,
        "turns": turns,
        "start": start,
        "end": end,
        "meta": _meta(key, kind, row, None if url is None else str(url), str(url) if url is not None else rel),
    }


def _parquet_rows(path: str, f) -> Iterator[tuple[int, Any] | Dropped]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except Exception as e:  # pyarrow raises several types for a bad file
        yield Dropped("parquet_error", str(e), path, 0)
        return
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=256):
            for r in batch.to_pylist():
                row += 1
                yield row, r
    except Exception as e:  # a corrupt page mid-file; rows before it are kept
        yield Dropped("parquet_error", f"after row {row}: {e}", path, row + 1)


def _csv_rows(path: str, f) -> Iterator[tuple[int, Any] | Dropped]:
    data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        yield Dropped("invalid_utf8", f"byte {e.start}: {e.reason}", path, 0)
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for r in reader:
            yield reader.line_num, {k: (None if v == "" else v) for k, v in r.items() if k is not None}
    except csv.Error as e:
        yield Dropped("csv_error", str(e), path, reader.line_num)


def _jsonl_rows(path: str, f) -> Iterator[tuple[int, Any] | Dropped]:
    for line, raw in split_lines(file_chunks(f), MAX_LIST_LINE_BYTES):
        if isinstance(raw, int):
            yield too_long(path, line, raw, MAX_LIST_LINE_BYTES)
        elif isinstance(value := parse_line(raw, path, line), Dropped):
            yield value
        else:
            yield line, value


# A video list's line names one video (and its turns): longer than this, it is `line_too_long`.
MAX_LIST_LINE_BYTES = 16 << 20


_ROWS = {"parquet": _parquet_rows, "csv": _csv_rows, "jsonl": _jsonl_rows}


def read_videos(path: str, options: VideoSourceOptions = VideoSourceOptions()) -> Iterator[dict | Dropped]:
    """Yields the videos of one input list, and a `Dropped` per unusable row (see the module docstring)."""
    kind = source_kind(path)

    def read(f):
        for item in _ROWS[kind](path, f):
            yield item if isinstance(item, Dropped) else guard_record(
                lambda: row_video(path, item[0], item[1], kind, options), path, item[0])  # noqa: B023 - called at once

    yield from read_records(path, read)
