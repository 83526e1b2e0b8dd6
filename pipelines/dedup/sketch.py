"""The sketch of one document (a MinHash signature, an image hash, a video's frame hashes), its bytes,
and the record of one near-duplicate that dedup removes.

A `Sketch` is what every near-dedup stage passes along instead of the document: a small numpy array
plus the document's key and size (the survivor rule keeps the largest). `encode_sketch` turns it into
self-describing bytes (no pickle) that a work store can keep, so a rerun reads a signature instead of
recomputing it; `decode_sketch` checks that the bytes were made with the same parameters (the
matcher's `fingerprint`) and raises `SketchMismatch` when they were not, so a changed threshold,
library version or hash size recomputes instead of mixing incompatible signatures.

Layout: b"LWMSKT1\\n", a little-endian u32 header length, a JSON header {kind, fingerprint, key,
size, dtype, shape, mask, step_ms}, then the array's bytes (C order, little-endian) and, for videos,
one byte per frame of the usable-frame mask.

Example:
    >>> s = Sketch("book-7", 120_000, np.arange(4, dtype=np.uint32))
    >>> data = encode_sketch(s, kind="text", fingerprint="ab12")
    >>> decode_sketch(data, kind="text", fingerprint="ab12").values
    array([0, 1, 2, 3], dtype=uint32)
    >>> decode_sketch(data, kind="text", fingerprint="ffff")
    Traceback (most recent call last):
    SketchMismatch: sketch of 'book-7' was made with parameters ab12, expected ffff: recompute it
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"LWMSKT1\n"
_DTYPES = {"uint8": "<u1", "uint32": "<u4", "uint64": "<u8"}


@dataclass(frozen=True, eq=False)
class Sketch:
    """One document's sketch.

    Attributes:
      key: the document's unique id (dedup reports it; the tie-break of the survivor rule).
      size: what the survivor rule maximises: words (text), pixels (images), milliseconds (videos).
      values: text [num_perm] uint32 MinHash; image [1] uint64 pHash; video [frames] uint64 pHash.
      mask: videos only: bool [frames], False for a flat frame (no content to match on).
      step_ms: videos only: the sampling interval of `values`.
    """

    key: str
    size: int
    values: np.ndarray
    mask: np.ndarray | None = None
    step_ms: int = 0

    def __post_init__(self):
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"Sketch.key must be a non-empty string, got {self.key!r}")
        if self.size < 0:
            raise ValueError(f"Sketch.size of {self.key!r} must be >= 0, got {self.size}")
        if self.values.dtype.name not in _DTYPES:
            raise ValueError(f"Sketch.values of {self.key!r} has dtype {self.values.dtype}, expected one of {sorted(_DTYPES)}")
        if self.mask is not None and self.mask.shape != self.values.shape[:1]:
            raise ValueError(f"Sketch.mask of {self.key!r} has shape {self.mask.shape}, expected {self.values.shape[:1]}")

    def same(self, other: Sketch) -> bool:
        """True when both describe the same content (used to catch one key given to two documents)."""
        return (
            self.size == other.size
            and self.step_ms == other.step_ms
            and np.array_equal(self.values, other.values)
            and (self.mask is None) == (other.mask is None)
            and (self.mask is None or np.array_equal(self.mask, other.mask))
        )


@dataclass(frozen=True)
class Duplicate:
    """One document that near-dedup removes.

    Attributes:
      key: the removed document.
      kept: its cluster's survivor (the kept twin).
      similarity: the matcher's similarity between the two, in [0, 1] (estimated Jaccard for text,
        1 - Hamming/64 for images, the share of aligned matching frames for videos).
      cluster_size: documents in the cluster, the survivor included.
    """

    key: str
    kept: str
    similarity: float
    cluster_size: int

    def detail(self) -> str:
        """The failure row's detail, e.g. 'near copy of b.jsonl:3 (similarity 0.912, cluster of 2)'."""
        return f"near copy of {self.kept} (similarity {self.similarity:.3f}, cluster of {self.cluster_size})"

    def to_json(self) -> dict:
        return {"key": self.key, "kept": self.kept, "similarity": round(self.similarity, 6),
                "cluster_size": self.cluster_size}


class SketchMismatch(ValueError):
    """Stored sketch bytes were made with other parameters (or are not a sketch): recompute."""


def encode_sketch(sketch: Sketch, kind: str, fingerprint: str) -> bytes:
    """Returns the bytes of `sketch` (see the module docstring for the layout)."""
    values = np.ascontiguousarray(sketch.values, dtype=_DTYPES[sketch.values.dtype.name])
    header = {
        "kind": kind,
        "fingerprint": fingerprint,
        "key": sketch.key,
        "size": int(sketch.size),
        "dtype": sketch.values.dtype.name,
        "shape": list(values.shape),
        "mask": sketch.mask is not None,
        "step_ms": int(sketch.step_ms),
    }
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    parts = [MAGIC, struct.pack("<I", len(head)), head, values.tobytes()]
    if sketch.mask is not None:
        parts.append(np.asarray(sketch.mask, dtype=np.uint8).tobytes())
    return b"".join(parts)


def decode_sketch(data: bytes, kind: str, fingerprint: str) -> Sketch:
    """Reads bytes written by `encode_sketch`.

    Raises:
      SketchMismatch: not sketch bytes, another kind, or made with another fingerprint.
      ValueError: the bytes are truncated or inconsistent (names the key and what is wrong).
    """
    if not data.startswith(MAGIC):
        raise SketchMismatch(f"not a sketch: starts with {bytes(data[:8])!r}, expected {MAGIC!r}")
    try:
        (n,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        header = json.loads(bytes(data[start:start + n]))
    except (struct.error, ValueError) as e:
        raise ValueError(f"sketch header is unreadable: {e}") from e
    key = header.get("key", "?")
    if header.get("kind") != kind:
        raise SketchMismatch(f"sketch of {key!r} is a {header.get('kind')!r} sketch, expected {kind!r}")
    if header.get("fingerprint") != fingerprint:
        raise SketchMismatch(
            f"sketch of {key!r} was made with parameters {header.get('fingerprint')}, expected {fingerprint}: recompute it")
    dtype = np.dtype(_DTYPES[header["dtype"]])
    shape = tuple(header["shape"])
    body = start + n
    count = int(np.prod(shape))
    end = body + count * dtype.itemsize
    frames = shape[0] if shape else 0
    expected = end + (frames if header["mask"] else 0)
    if len(data) != expected:
        raise ValueError(f"sketch of {key!r} has {len(data)} bytes, expected {expected} for shape {shape}")
    values = np.frombuffer(data, dtype=dtype, count=count, offset=body).reshape(shape).astype(header["dtype"])
    mask = np.frombuffer(data, dtype=np.uint8, offset=end).astype(bool) if header["mask"] else None
    return Sketch(key, header["size"], values, mask, header["step_ms"])


def params_digest(params: dict) -> str:
    """A short digest of JSON-ready parameters: the fingerprint a stored sketch is checked against."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def dist_version(dist: str) -> str:
    """The installed version of distribution `dist` (recorded with the parameters)."""
    from importlib.metadata import version

    return version(dist)
