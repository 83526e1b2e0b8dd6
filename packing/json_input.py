"""JSON from files lwmkit may not have written (manifests, model configs): bounded, with clear errors.

`json.loads` alone has three ways to fail badly on a hostile or damaged file: a file of any size is
read whole into memory; 100,000 nested `[` raise `RecursionError` (not a `ValueError`, so it
escapes handlers written for bad JSON); a valid document of the wrong shape (a list where an
object belongs) fails later as an `AttributeError` or `TypeError` far from the file. `read_json`
and `parse_json` refuse a file over a size limit before reading it, turn every parse failure into
the caller's `ValueError` subclass naming the file and the reason, and check the top-level type.

Example:
    >>> parse_json(b"[" * 100_000, "x.json", ValueError)
    Traceback (most recent call last):
    ValueError: x.json: JSON nested too deeply to parse (RecursionError)
"""

from __future__ import annotations

import json
import os
from typing import Any

DEFAULT_MAX_BYTES = 64 << 20


def parse_json(
    data: bytes | str, where: str, error: type[ValueError] = ValueError, expect: type = dict
) -> Any:
    """Parses JSON text from an untrusted source.

    Args:
      data: the text (UTF-8 bytes, or str).
      where: what to name in an error (the file).
      error: the ValueError subclass to raise.
      expect: the type the top level must have (`object` for any).

    Raises:
      error: `where: <reason>` for bytes that are not UTF-8, not JSON, nested too deeply to parse,
        or of another top-level type than `expect`.
    """
    try:
        # Bytes are UTF-8 or refused: json.loads would also guess UTF-16/32 from the first bytes.
        value = json.loads(data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data)
    except UnicodeDecodeError as e:
        raise error(f"{where}: not UTF-8 text: {e}") from None
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON: {e}") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply to parse (RecursionError)") from None
    if not isinstance(value, expect):
        raise error(
            f"{where}: the JSON holds a {type(value).__name__} where a "
            f"{_JSON_NAMES.get(expect, expect.__name__)} belongs"
        )
    return value


_JSON_NAMES = {dict: "JSON object", list: "JSON array", str: "JSON string"}


def read_json(
    path: str | os.PathLike,
    error: type[ValueError] = ValueError,
    max_bytes: int = DEFAULT_MAX_BYTES,
    expect: type = dict,
) -> Any:
    """Reads and parses a JSON file of at most `max_bytes` (see `parse_json`).

    Raises:
      error: naming the file: unreadable (OSError), larger than `max_bytes`, or as `parse_json`.
        A missing file raises `FileNotFoundError` itself, for callers that explain it.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # never more, whatever the file says its size is
    except FileNotFoundError:
        raise
    except OSError as e:
        raise error(f"{path}: cannot read it: {e}") from e
    if len(data) > max_bytes:
        raise error(f"{path}: larger than {max_bytes:,} bytes, the most this reader accepts")
    return parse_json(data, str(path), error, expect)
