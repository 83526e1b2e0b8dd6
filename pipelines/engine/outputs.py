"""Writing job outputs atomically to local disk or any Beam filesystem (`gs://`, `s3://`, ...).

ArrayRecord writes only local files, so a shard bound for object storage is written to local
scratch and then copied to a temporary name at the destination and renamed: no destination file
appears until it is complete. Local destinations are written in place under a temporary name and
renamed (`os.replace`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from typing import BinaryIO

from lwmkit.packing.shards import ShardInfo, write_bytes_atomic, write_shard


def is_local(path: str) -> bool:
    return "://" not in path


def join(base: str, *parts: str) -> str:
    if is_local(base):
        return os.path.join(base, *parts)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(base, *parts)


def _publish(local_path: str, dest: str) -> None:
    # FileSystems.copy works only within one filesystem, so the bytes are streamed across.
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
    if os.path.getsize(local_path) == 0 and dest.startswith("s3://"):
        _put_empty_s3_object(dest)  # a one-request PUT is atomic by itself
        return
    with open(local_path, "rb") as src, FileSystems.create(
        tmp, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED
    ) as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    if FileSystems.exists(dest):
        FileSystems.delete([dest])
    FileSystems.rename([tmp], [dest])


def _put_empty_s3_object(dest: str) -> None:
    # Beam's S3 uploader always completes a multipart upload, and S3 refuses one with no parts
    # (MalformedXML): an empty failures.jsonl would fail the job. Put the object in one request.
    from apache_beam.io.aws import s3io
    from apache_beam.io.filesystems import FileSystems

    bucket, key = s3io.parse_s3_path(dest)
    options = FileSystems.get_filesystem(dest)._options
    s3io.S3IO(options=options).client.client.put_object(Bucket=bucket, Key=key, Body=b"")


def write_output_shard(dest: str, records: Iterable[bytes]) -> ShardInfo:
    """Writes an ArrayRecord shard to `dest` (local or remote), atomically."""
    if is_local(dest):
        return write_shard(dest, records)
    with tempfile.TemporaryDirectory(prefix="lwmkit-shard-") as scratch:
        local = os.path.join(scratch, os.path.basename(dest))
        info = write_shard(local, records)
        _publish(local, dest)
        return info


def write_output_bytes(dest: str, data: bytes) -> None:
    """Writes a small file to `dest` (local or remote), atomically."""
    if is_local(dest):
        write_bytes_atomic(dest, data)
        return
    with tempfile.TemporaryDirectory(prefix="lwmkit-out-") as scratch:
        local = os.path.join(scratch, os.path.basename(dest))
        with open(local, "wb") as f:
            f.write(data)
        _publish(local, dest)


def open_input(path: str) -> BinaryIO:
    """Opens a local or remote file (any Beam filesystem) for reading its bytes as they are.

    Raises:
      Whatever the filesystem raises for a missing or unreadable file.
    """
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def read_output_bytes(path: str) -> bytes | None:
    """The bytes of an output file, or None if it does not exist."""
    if is_local(path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(path):
        return None
    from apache_beam.io.filesystem import CompressionTypes

    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def delete_outputs(paths: list[str]) -> None:
    """Deletes the given output files where they exist (local or remote)."""
    from apache_beam.io.filesystems import FileSystems

    for path in paths:
        if is_local(path):
            if os.path.exists(path):
                os.remove(path)
        elif FileSystems.exists(path):
            FileSystems.delete([path])


def list_outputs(pattern: str) -> list[str]:
    """Paths matching a glob (local or remote); empty if none."""
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
