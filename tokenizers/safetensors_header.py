"""The header of a safetensors file, read without trusting it (weights come from anywhere).

A safetensors file is `u64 little-endian header length N`, `N` bytes of a UTF-8 JSON object, then
the tensor bytes. The JSON maps each tensor name to `{"dtype", "shape", "data_offsets"}` and may
hold `"__metadata__"`, an object of string values. `read_header` refuses, with a `ValueError`
naming the file and the reason, anything else: a file shorter than 8 bytes, a length past the end
of the file or over `MAX_HEADER_BYTES`, bytes that are not UTF-8, JSON nested too deeply to parse
(`json.loads` raises `RecursionError` there, which no `except ValueError` catches), a top level
that is not an object, metadata that is not an object of strings, a tensor entry that is not an
object. The safetensors library checks the tensor entries' offsets when it reads the tensors.

Example:
    >>> read_header("vqgan.safetensors", WeightsError)
    ({"format": "lwmkit-vqgan", "config": "{...}"}, ["decoder/Conv_0/bias", ...])
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


def parse_json_text(text: str | bytes, where: str, error: type[ValueError] = ValueError) -> Any:
    """`json.loads` whose every failure (bad UTF-8, bad JSON, too deep) is `error` naming `where`."""
    try:
        return json.loads(text)
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply to parse (RecursionError)") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise error(f"{where}: not valid JSON: {e}") from None


def read_header(
    path: str, error: type[ValueError] = ValueError
) -> tuple[dict[str, str], list[str]]:
    """The metadata and tensor names of the safetensors file at `path`, checked as above.

    Raises:
      error: naming `path` and what is wrong with the header.
      OSError: the file cannot be read.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise error(f"{path}: {size} bytes, too short for a safetensors header length")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise error(
                f"{path}: safetensors header length {n:,} exceeds the file ({size:,} bytes) "
                f"or the {MAX_HEADER_BYTES:,}-byte limit"
            )
        header = parse_json_text(f.read(n), f"{path}: safetensors header", error)
    if not isinstance(header, dict):
        raise error(f"{path}: safetensors header is a {type(header).__name__}, not a JSON object")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise error(f"{path}: safetensors __metadata__ must be an object of strings")
    keys = [k for k in header if k != "__metadata__"]
    bad = [k for k in keys if not isinstance(header[k], dict)]
    if bad:
        raise error(f"{path}: safetensors tensor entries that are not objects: {bad[:5]}")
    return metadata, keys
