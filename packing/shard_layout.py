"""The on-disk layout of an ArrayRecord shard, and the index of where each record's bytes lie.

lwmkit's shards are always written the same way (`packing/shards.py`: `group_size:1,uncompressed`),
so every record is the whole value of one uncompressed Riegeli "simple" chunk and lies in the file
verbatim, interrupted only by the 24-byte header that starts every 64 KiB block. `index_records`
finds each record's position once; `packing/shard_reader.py` reads records at those positions.

The layout (Riegeli records format, `doc/riegeli_records_file_format.md` of google/riegeli, and
ArrayRecord's `cpp/layout.proto` and `cpp/array_record_writer.cc` of google/array_record):

    file     = 64 KiB blocks; each starts with a block header (header_hash, previous_chunk,
               next_chunk: 3 x u64) that interrupts whatever chunk runs across it
    chunk    = header (header_hash, data_size, data_hash: u64; chunk_type: u8, num_records: u56;
               decoded_data_size: u64) + data + padding
    simple   = chunk_type 'r', data = compression_type u8 (0 = none) + varint sizes_size +
               sizes (one varint per record) + the record values, concatenated
    footer   = a simple chunk: RiegeliFooterMetadata {array_record_metadata {version, num_chunks,
               num_records}}, then one ArrayRecordFooter {chunk_offset, decoded_data_size,
               num_records} per data chunk
    end      = the last 64 KiB block holds the postscript, a simple chunk of 3 copies of
               RiegeliPostscript {footer_offset, magic}

Example, a shard of two records of 5 and 70,000 bytes (positions in the file):
    0      block header, file signature chunk          64     chunk 0 header
    104    0x00 (none), sizes_size 1, size 5           107    record 0 (5 bytes)
    112    chunk 1 header; 152: 0x00, 3, size 70000    157    record 1, bytes 0..65378
    65536  block header                                65560  record 1, bytes 65379..69999
    ...    footer chunk, padding; last 64 KiB: block header, postscript chunk
"""

from __future__ import annotations

import mmap
import struct
from typing import Any, NamedTuple

import numpy as np

BLOCK = 1 << 16
BLOCK_HEADER = 24
USABLE = BLOCK - BLOCK_HEADER  # chunk bytes per block
_CHUNK_HEADER = 40
# The first 64 bytes of every Riegeli/records file: a block header and the file signature chunk.
_SIGNATURE = bytes.fromhex(
    "83af70d10d884a3f"
    "0000000000000000"
    "4000000000000000"
    "91bac23c9287e1a9"
    "0000000000000000"
    "e19f13c0e9b1c372"
    "7300000000000000"
    "0000000000000000"
)
_SIMPLE_CHUNK = 0x72  # 'r'
_TRANSPOSED_CHUNK = 0x74  # 't': valid, but only ArrayRecord decodes it
_NO_COMPRESSION = 0
_COMPRESSIONS = {0x62: "brotli", 0x7A: "zstd", 0x73: "snappy"}  # valid, decoded by ArrayRecord
_ARRAY_RECORD_MAGIC = 0x71930E704FDAE05E
_ARRAY_RECORD_VERSION = 1
_CHUNK_HEADER_FIELDS = struct.Struct("<QQQQQ")


class ShardIndex(NamedTuple):
    """Where everything lies in one shard (file positions): see `index_shard`."""

    starts: list[int]  # each record's first byte
    sizes: list[int]  # each record's size
    chunks: list[int]  # each record's chunk
    footer: int  # the footer chunk (the end of the last record's chunk)
    size: int  # the file's size


class CorruptShard(Exception):
    """The file breaks the format: truncated, damaged, or not an ArrayRecord file."""


class UnsupportedLayout(Exception):
    """A valid ArrayRecord file laid out otherwise than lwmkit writes (compressed, grouped, ...)."""


def _logical(pos: int) -> int:
    """Physical file position -> position in the stream of chunk bytes (block headers removed)."""
    return (pos // BLOCK) * USABLE + max(pos % BLOCK - BLOCK_HEADER, 0)


def _physical(logical: int) -> int:
    """Position in the chunk byte stream -> physical position of that byte (after any block header)."""
    return (logical // USABLE) * BLOCK + BLOCK_HEADER + logical % USABLE


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at buf[pos]."""
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CorruptShard("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _proto_fields(buf: bytes) -> dict[int, list[Any]]:
    """The fields of a protobuf message: number -> values (ints for varints, bytes otherwise)."""
    out: dict[int, list[Any]] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + n], pos + n
        else:
            raise CorruptShard(f"protobuf wire type {wire} in a footer message")
        if pos > len(buf):
            raise CorruptShard("truncated footer message")
        out.setdefault(number, []).append(value)
    return out


def _check_compression(first_byte: bytes, what: str) -> None:
    if first_byte == bytes([_NO_COMPRESSION]):
        return
    if first_byte and first_byte[0] in _COMPRESSIONS:
        raise UnsupportedLayout(f"{what} is compressed with {_COMPRESSIONS[first_byte[0]]}")
    raise CorruptShard(f"{what}: unknown compression type {first_byte.hex() or 'missing'}")


class _Layout:
    """Reads the chunk structure of one mapped file (used once, at open)."""

    def __init__(self, mm: mmap.mmap):
        self.mm = mm
        self.size = len(mm)

    def read(self, logical: int, n: int) -> bytes:
        """n bytes of the chunk stream from `logical`, block headers skipped."""
        out = bytearray()
        while n > 0:
            start = _physical(logical)
            take = min(n, BLOCK - start % BLOCK)
            if start + take > self.size:
                raise CorruptShard(
                    f"data runs past the end of the file (byte {start + take} of {self.size})"
                )
            out += self.mm[start : start + take]
            logical, n = logical + take, n - take
        return bytes(out)

    def chunk(self, offset: int) -> tuple[int, int, int, int, int]:
        """(logical start of its data, data_size, chunk_type, num_records, decoded_data_size)."""
        if (0 < offset % BLOCK < BLOCK_HEADER) or offset >= self.size:
            raise CorruptShard(
                f"a chunk offset {offset} points into a block header or past the end"
            )
        begin = _logical(offset)
        _, data_size, _, type_and_count, decoded = _CHUNK_HEADER_FIELDS.unpack(
            self.read(begin, _CHUNK_HEADER)
        )
        return begin + _CHUNK_HEADER, data_size, type_and_count & 0xFF, type_and_count >> 8, decoded

    def simple_records(self, offset: int, limit: int, what: str) -> list[bytes]:
        """The records of the simple uncompressed chunk at `offset` (footer, postscript)."""
        data, data_size, chunk_type, count, decoded = self.chunk(offset)
        if chunk_type != _SIMPLE_CHUNK:
            raise CorruptShard(f"{what} is not a simple chunk (type {chunk_type:#x})")
        if data + data_size > limit:
            raise CorruptShard(f"{what} chunk claims {data_size} bytes, more than the file holds")
        buf = self.read(data, data_size)
        _check_compression(buf[:1], what)
        sizes_size, pos = _varint(buf, 1)
        end_sizes = pos + sizes_size
        sizes = []
        while pos < end_sizes:
            size, pos = _varint(buf, pos)
            sizes.append(size)
        if (
            len(sizes) != count
            or pos != end_sizes
            or sum(sizes) != decoded
            or end_sizes + decoded != data_size
        ):
            raise CorruptShard(f"{what} chunk's record sizes disagree with its header")
        bounds = np.cumsum([end_sizes, *sizes]).tolist()
        return [buf[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def index(self) -> ShardIndex:
        """See `index_shard`."""
        if self.size < BLOCK or self.mm[: len(_SIGNATURE)] != _SIGNATURE:
            raise CorruptShard(
                "not a Riegeli/ArrayRecord file (no file signature) or shorter than 64 KiB"
            )
        try:
            postscript = self.simple_records(self.size - BLOCK, _logical(self.size), "postscript")
            ps = _proto_fields(postscript[0]) if postscript else {}
        except (CorruptShard, UnsupportedLayout) as e:
            raise CorruptShard(
                f"no ArrayRecord postscript in the last 64 KiB (truncated?): {e}"
            ) from e
        if ps.get(2, [None])[0] != _ARRAY_RECORD_MAGIC or 1 not in ps:
            raise CorruptShard("no ArrayRecord postscript in the last 64 KiB (truncated?)")
        footer_offset = ps[1][0]
        footer = self.simple_records(footer_offset, _logical(self.size - BLOCK), "footer")
        meta = _proto_fields(footer[0]) if footer else {}
        if 1 not in meta:
            raise UnsupportedLayout("footer metadata is not ArrayRecord's")
        meta = _proto_fields(meta[1][0])
        version, num_chunks, num_records = (meta.get(k, [0])[0] for k in (1, 2, 3))
        if version != _ARRAY_RECORD_VERSION:
            raise UnsupportedLayout(f"ArrayRecord footer version {version}")
        if num_chunks != len(footer) - 1:
            raise CorruptShard(
                f"footer lists {len(footer) - 1} chunks, its metadata says {num_chunks}"
            )
        chunks = [_proto_fields(f) for f in footer[1:]]
        offsets = [c.get(1, [0])[0] for c in chunks] + [footer_offset]
        starts, sizes = [], []
        for i, c in enumerate(chunks):
            count, decoded = c.get(3, [0])[0], c.get(2, [0])[0]
            if count > 1:
                raise UnsupportedLayout(f"chunk {i} holds {count} records (group_size > 1)")
            if count < 1:
                raise CorruptShard(f"record {i}: the footer lists its chunk with no records")
            if offsets[i + 1] <= offsets[i]:
                raise CorruptShard(f"record {i}: chunk offsets out of order in the footer")
            data, data_size, chunk_type, n, dds = self.chunk(offsets[i])
            if chunk_type == _TRANSPOSED_CHUNK:
                raise UnsupportedLayout(f"chunk {i} is a transposed chunk")
            if chunk_type != _SIMPLE_CHUNK:
                raise CorruptShard(f"record {i}: chunk type {chunk_type:#x} is not a record chunk")
            if (n, dds) != (count, decoded):
                raise CorruptShard(
                    f"record {i}: its chunk header says {n} records of {dds} bytes, "
                    f"the footer {count} of {decoded}"
                )
            if data + data_size > _logical(offsets[i + 1]):
                raise CorruptShard(
                    f"record {i}: its chunk claims {data_size} bytes, past the next chunk"
                )
            head = self.read(data, min(data_size, 21))
            _check_compression(head[:1], f"record {i}: its chunk")
            sizes_size, pos = _varint(head, 1)
            size, value = _varint(head, pos)
            if size != decoded or value - pos != sizes_size or value + size != data_size:
                raise CorruptShard(f"record {i}: chunk data layout disagrees with its header")
            starts.append(_physical(data + value))
            sizes.append(size)
        if len(starts) != num_records:
            raise CorruptShard(
                f"footer metadata says {num_records} records, its chunks hold {len(starts)}"
            )
        return ShardIndex(starts, sizes, offsets[:-1], footer_offset, self.size)


def index_shard(mm: mmap.mmap) -> ShardIndex:
    """`index_records` plus the footer's position and the file size (what checksums cover).

    Raises:
      UnsupportedLayout, CorruptShard: as `index_records`.
    """
    return _Layout(mm).index()


def index_records(mm: mmap.mmap) -> tuple[list[int], list[int], list[int]]:
    """Where each record of a mapped ArrayRecord file lies.

    Args:
      mm: the whole file, mapped.

    Returns:
      Per record, in order: the file position of its first byte, its size in bytes, and the file
      position of its chunk (what the `previous_chunk` field of a block header inside it counts
      back to). A record's bytes continue past each block header it meets.

    Raises:
      UnsupportedLayout: a valid ArrayRecord file that is not laid out as lwmkit writes shards.
      CorruptShard: the file breaks the format (the message names the record where there is one).
    """
    index = _Layout(mm).index()
    return index.starts, index.sizes, index.chunks
