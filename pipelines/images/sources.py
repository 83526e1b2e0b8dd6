"""Reading image-text pairs from the image job's four input kinds, without ever writing to disk.

Input kinds, by file name:
    *.tar, *.tar.gz, *.tgz  img2dataset-style webdataset shards: members `<key>.<ext>` grouped by key,
                            an image (`jpg/jpeg/png/webp/...`), the caption (`.txt`) and `.json` meta
    *.parquet               a column of image bytes (or HF `{bytes, path}` structs) and a caption
                            column; or, with no image column, a `url` column (the download stage
                            fetches it)
    *.jsonl (or a folder)   a folder of images listed by `captions.jsonl`: rows `{"file", "caption"}`
                            with `file` relative to the jsonl's folder

Every pair is `dict(file, line, key, caption, image, url, meta)`: `line` is the 1-based sample (tar),
row (parquet) or line (jsonl); `key` names the pair inside its source (the webdataset key, the
parquet `key` column or `<file name>:<row>`, the image's relative path) and drives the
understanding/generation choice; `image` is bytes or None (then `url` is set); `meta` is a small
JSON string (key, source, url, license). Tar members are read in streaming mode; a member whose
name is absolute or contains `..` is refused (`unsafe_path`), links and devices likewise
(`not_a_file`), and nothing is ever extracted.

Failure reasons: `unreadable_file`, `corrupt_tar`, `unsafe_path`, `not_a_file`, `too_large`,
`missing_image`, `invalid_utf8`, `invalid_json`, `not_an_object`, `parquet_error`, `no_image_column`,
`missing_file`, `line_too_long`, `bad_record` (any other failure of one line or row; the next is still
read), `empty_file` (an input that holds no record). Captions are checked later (`missing_caption`, `empty_caption`).

Example, a tar with members `00/0001.jpg`, `00/0001.txt` ("a red bus"), `00/0001.json`:
    {"file": "shard-0.tar", "line": 1, "key": "00/0001", "caption": "a red bus", "image": b"\\xff\\xd8...",
     "url": None, "meta": '{"key": "00/0001", "source": "webdataset"}'}
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from lwmkit.pipelines.engine.jsonl import file_chunks, guard_record, parquet_file, parse_object, read_records, split_lines, too_long, utf8_text
from lwmkit.pipelines.engine.inputs import kind_by_suffix
from lwmkit.pipelines.engine.outputs import open_input
from lwmkit.pipelines.engine.drops import Dropped

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
CAPTION_EXTENSIONS = ("txt", "caption", "text")
IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "image_bytes", "img", "bytes")
CAPTION_COLUMNS = ("caption", "text", "txt", "TEXT", "alt")
URL_COLUMNS = ("url", "URL", "image_url")
FILE_KEYS = ("file", "image", "path")
KINDS = ("webdataset", "parquet", "folder")
_TOO_LARGE = "\0too_large"  # marks a tar sample already reported; never a member extension


@dataclass(frozen=True)
class SourceOptions:
    """Where each input kind keeps its parts.

    Attributes:
      image_column: parquet column (or captions.jsonl key) of the image; None tries the usual names.
      caption_column: parquet column / json key of the caption; None tries the usual names.
      url_column: parquet column of the URL (used when there is no image column); None tries the usual names.
      max_image_bytes: larger images (tar members, files) are dropped as too_large.
    """

    image_column: str | None = None
    caption_column: str | None = None
    url_column: str | None = None
    max_image_bytes: int = 32 << 20

    def __post_init__(self):
        if not 1 <= self.max_image_bytes <= 1 << 31:
            raise ValueError(f"max_image_bytes: {self.max_image_bytes} is outside 1..{1 << 31}")


def source_kind(path: str) -> str:
    """'webdataset', 'parquet' or 'folder' by file name.

    Raises:
      ValueError: listing the supported suffixes.
    """
    return kind_by_suffix(
        path, (((".tar", ".tar.gz", ".tgz"), "webdataset"), (".parquet", "parquet"), (".jsonl", "folder")),
        "unsupported image input; expected .tar/.tar.gz/.tgz, .parquet or a captions .jsonl (or its folder)")


def unsafe_member_name(name: str) -> bool:
    """True for an archive member name that could point outside an extraction folder."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return True
    return ".." in name.replace("\\", "/").split("/")


def _meta(key: str, source: str, extra: dict[str, Any] | None = None) -> str:
    d: dict[str, Any] = {"key": key, "source": source}
    for k in ("url", "license"):
        v = (extra or {}).get(k)
        if isinstance(v, str | int | float) and v != "":
            d[k] = v
    return json.dumps(d, sort_keys=True, ensure_ascii=False)


def _pair(path: str, line: int, key: str, caption, image: bytes | None, url: str | None, meta: str) -> dict:
    return {"file": path, "line": line, "key": key, "caption": caption, "image": image, "url": url, "meta": meta}


# --- webdataset tars -----------------------------------------------------------------------------


def split_member(name: str) -> tuple[str, str]:
    """(key, extension) of a webdataset member: the key ends at the first dot of the base name."""
    folder, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    return (posixpath.join(folder, stem) if folder else stem), (ext.lower() if dot else "")


def _tar_sample(path: str, line: int, key: str, parts: dict[str, bytes]) -> dict | Dropped:
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
    if image_ext is None:
        return Dropped("missing_image", f"sample {key!r} has no image member (has {sorted(parts)})", path, line)
    meta: dict[str, Any] = {}
    if "json" in parts:
        try:
            obj = json.loads(parts["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return Dropped("invalid_json", f"{key}.json: {e}", path, line)
        if not isinstance(obj, dict):
            return Dropped("not_an_object", f"{key}.json is a JSON {type(obj).__name__}", path, line)
        meta = obj
    caption_ext = next((e for e in CAPTION_EXTENSIONS if e in parts), None)
    caption = meta.get("caption")
    if caption_ext is not None:
        try:
            caption = parts[caption_ext].decode("utf-8")
        except UnicodeDecodeError as e:
            return Dropped("invalid_utf8", f"{key}.{caption_ext}: byte {e.start}: {e.reason}", path, line)
    return _pair(path, line, key, caption, parts[image_ext], None, _meta(key, "webdataset", meta))


def read_webdataset(path: str, f: BinaryIO, options: SourceOptions) -> Iterator[dict | Dropped]:
    """Pairs of one webdataset tar, streamed member by member (members of a key are adjacent)."""
    line = 0
    key: str | None = None
    parts: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=f, mode="r|*") as tar:
            for m in tar:
                if m.isdir():
                    continue
                refused = None
                if unsafe_member_name(m.name):
                    refused = Dropped("unsafe_path", f"member {m.name!r} is absolute or leaves the folder", path)
                elif not m.isfile():
                    refused = Dropped("not_a_file", f"member {m.name!r} is a link or device, not a file", path)
                k, ext = split_member(m.name)
                if refused is not None or k != key:
                    if key is not None and _TOO_LARGE not in parts:
                        yield _tar_sample(path, line, key, parts)
                    key, parts, line = k, {}, line + 1
                if refused is not None:  # a refused member is a sample (line) of its own
                    yield Dropped(refused.reason, refused.detail, path, line)
                    key = None
                    continue
                if m.size > options.max_image_bytes:
                    if _TOO_LARGE not in parts:  # the sample is reported once, here
                        detail = f"member {m.name!r} has {m.size} bytes, more than {options.max_image_bytes}"
                        yield Dropped("too_large", detail, path, line)
                    parts[_TOO_LARGE] = b""
                    continue
                if ext and ext not in parts:
                    parts[ext] = tar.extractfile(m).read()
            if key is not None and _TOO_LARGE not in parts:
                yield _tar_sample(path, line, key, parts)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        detail = f"after {max(line - 1, 0)} complete samples: {type(e).__name__}: {e}"
        yield Dropped("corrupt_tar", detail, path, max(line, 1))


# --- parquet -------------------------------------------------------------------------------------


def _pick(names: list[str], wanted: str | None, candidates: tuple[str, ...]) -> str | None:
    if wanted is not None:
        return wanted if wanted in names else None
    return next((c for c in candidates if c in names), None)


def _image_value(value: Any) -> bytes | None:
    if isinstance(value, dict):  # Hugging Face `Image` feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    return value if isinstance(value, bytes) and value else None


def read_parquet(path: str, f: BinaryIO, options: SourceOptions) -> Iterator[dict | Dropped]:
    """Pairs of one parquet file: image bytes + caption, or url + caption."""
    pf = yield from parquet_file(path, f)
    if pf is None:
        return
    names = pf.schema_arrow.names
    image_col = _pick(names, options.image_column, IMAGE_COLUMNS)
    url_col = _pick(names, options.url_column, URL_COLUMNS)
    caption_col = _pick(names, options.caption_column, CAPTION_COLUMNS)
    if image_col is None and url_col is None:
        yield Dropped("no_image_column", f"no image or url column among {names}", path, 0)
        return
    extra = [c for c in ("key", "license", "LICENSE") if c in names]
    columns = [c for c in (image_col, url_col, caption_col) if c is not None] + extra
    source = "parquet" if image_col is not None else "parquet-url"
    base = posixpath.basename(path)
    row = 0
    try:
        for batch in pf.iter_batches(columns=list(dict.fromkeys(columns)), batch_size=64):
            cols = {c: batch.column(batch.schema.get_field_index(c)).to_pylist() for c in dict.fromkeys(columns)}
            for i in range(batch.num_rows):
                row += 1
                key = str(cols["key"][i]) if "key" in cols and cols["key"][i] is not None else f"{base}:{row}"
                url = cols[url_col][i] if url_col else None
                license_ = next((cols[c][i] for c in ("license", "LICENSE") if c in cols), None)
                caption = cols[caption_col][i] if caption_col else None
                if isinstance(caption, bytes):
                    caption = utf8_text(caption, path, row, f"{caption_col!r}: ")
                    if isinstance(caption, Dropped):
                        yield caption
                        continue
                image = None
                if image_col is not None:
                    image = _image_value(cols[image_col][i])
                    if image is None:
                        yield Dropped("missing_image", f"{image_col!r} holds no image bytes", path, row)
                        continue
                    if len(image) > options.max_image_bytes:
                        detail = f"{len(image)} bytes, more than {options.max_image_bytes}"
                        yield Dropped("too_large", detail, path, row)
                        continue
                elif not url:
                    yield Dropped("missing_image", f"{url_col!r} is empty", path, row)
                    continue
                meta = _meta(key, source, {"url": url, "license": license_})
                yield _pair(path, row, key, caption, image, url if image is None else None, meta)
    except Exception as e:  # a corrupt page mid-file; rows before it are kept
        yield Dropped("parquet_error", f"after row {row}: {e}", path, row + 1)


# --- a folder of images with captions.jsonl -------------------------------------------------------

# A captions.jsonl line names one image and its caption: longer than this, it is `line_too_long`.
MAX_CAPTION_LINE_BYTES = 16 << 20


def _folder_row(path: str, line: int, raw: bytes, options: SourceOptions) -> dict | Dropped:
    obj = parse_object(raw, path, line)
    if isinstance(obj, Dropped):
        return obj
    file_key = options.image_column if options.image_column in obj else next((k for k in FILE_KEYS if k in obj), None)
    name = obj.get(file_key) if file_key else None
    if not isinstance(name, str) or not name:
        return Dropped("missing_image", f"no image file name (keys {sorted(obj)})", path, line)
    if unsafe_member_name(name):
        return Dropped("unsafe_path", f"{name!r} is absolute or leaves the folder", path, line)
    caption_key = options.caption_column or next((k for k in CAPTION_COLUMNS if k in obj), "caption")
    folder = posixpath.dirname(path) if "://" in path else os.path.dirname(path)
    image_path = f"{folder}/{name}" if "://" in path else os.path.join(folder, name)
    try:
        with open_input(image_path) as f:
            image = f.read(options.max_image_bytes + 1)
    except Exception as e:  # missing file, permission, remote error
        return Dropped("missing_file", f"{name}: {e}", path, line)
    if len(image) > options.max_image_bytes:
        return Dropped("too_large", f"{name} has more than {options.max_image_bytes} bytes", path, line)
    return _pair(path, line, name, obj.get(caption_key), image, None, _meta(name, "folder", obj))


def read_folder(path: str, f: BinaryIO, options: SourceOptions) -> Iterator[dict | Dropped]:
    """Pairs listed by a captions.jsonl; image files are read relative to its folder."""
    for line, raw in split_lines(file_chunks(f), MAX_CAPTION_LINE_BYTES):
        if isinstance(raw, int):
            yield too_long(path, line, raw, MAX_CAPTION_LINE_BYTES)
        else:
            yield guard_record(lambda: _folder_row(path, line, raw, options), path, line)


def read_pairs(path: str, options: SourceOptions = SourceOptions()) -> Iterator[dict | Dropped]:
    """Yields the image-text pairs of one input file, and a `Dropped` per unreadable record.

    Args:
      path: a local or Beam filesystem path (see `source_kind`).
      options: column names and the image size cap.
    """
    read = {"webdataset": read_webdataset, "parquet": read_parquet, "folder": read_folder}[source_kind(path)]
    yield from read_records(path, lambda f: read(path, f, options))


def expand_input(pattern: str) -> str:
    """A local folder stands for its captions.jsonl; anything else is a glob as given."""
    if "://" not in pattern and os.path.isdir(pattern):
        return os.path.join(pattern, "captions.jsonl")
    return pattern
