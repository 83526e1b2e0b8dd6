"""Dataset directories on object storage (`gs://`, `s3://`, ...): a verified local copy to read from.

ArrayRecord reads only local files, so a remote dataset directory is copied once into a local cache
and read from there. The copy is checked against the manifest (every shard's SHA-256) while it
streams, and the manifest is written last, so a cache entry with a manifest is complete; a crash
mid-copy leaves no entry that looks complete, and the next reader copies again. The cache key is
the remote path plus the manifest's bytes, so a rebuilt dataset gets a fresh entry.

Remote paths go through Apache Beam's `FileSystems` (install `apache-beam[gcp]` or
`apache-beam[aws]` for the scheme). Credentials and endpoints come from the usual environment
(`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, Google application-default credentials) or from
`FileSystems.set_options(PipelineOptions([...]))` in your program.

Example:
    >>> local_dataset("s3://bucket/out/packed-32768")          # doctest: +SKIP
    '/home/me/.cache/lwmkit/datasets/3f1c...'
"""

from __future__ import annotations

import hashlib
import os
import uuid

from lwmkit.packing.records import RecordError

# Written beside the shards by the pipelines; copied along when present.
SIDE_FILES = ("dataset_info.json", "features.json", "documents.parquet")
CACHE_ENV = "LWMKIT_CACHE"


def is_remote(path: str) -> bool:
    """Whether `path` names a non-local filesystem (a URL scheme other than file://)."""
    return "://" in path and not path.startswith("file://")


def default_cache_dir() -> str:
    """`$LWMKIT_CACHE/datasets`, else `~/.cache/lwmkit/datasets`."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "lwmkit")
    return os.path.join(root, "datasets")


def _open(path: str):
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _join(base: str, name: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(base, name)


def _copy(src: str, dest: str, sha256: str | None) -> None:
    """Streams `src` to `dest` atomically, checking its SHA-256 if given."""
    tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
    h = hashlib.sha256()
    try:
        with _open(src) as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(1 << 22):
                h.update(chunk)
                fout.write(chunk)
        if sha256 is not None and h.hexdigest() != sha256:
            raise RecordError(f"{src}: SHA-256 {h.hexdigest()} differs from the manifest's {sha256}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def local_dataset(directory: str, cache_dir: str | None = None) -> str:
    """A local directory holding `directory`'s dataset: itself if local, else a verified cached copy.

    Raises:
      ManifestError: the remote directory has no manifest.
      RecordError: a shard's bytes differ from its manifest checksum.
    """
    if not is_remote(directory):
        return directory.removeprefix("file://")
    from apache_beam.io.filesystems import FileSystems
    from lwmkit.packing.manifest import (
        MANIFEST_NAME,
        MAX_MANIFEST_BYTES,
        ManifestError,
        parse_manifest,
    )

    manifest_path = _join(directory, MANIFEST_NAME)
    if not FileSystems.exists(manifest_path):
        raise ManifestError(f"{manifest_path}: no manifest; is {directory!r} an lwmkit output directory?")
    with _open(manifest_path) as f:
        manifest_bytes = f.read(MAX_MANIFEST_BYTES + 1)  # never more, whatever the store holds
    manifest = parse_manifest(manifest_bytes, manifest_path)  # checked before anything is copied
    key = hashlib.sha256(directory.rstrip("/").encode() + b"\0" + manifest_bytes).hexdigest()[:24]
    dest = os.path.join(cache_dir or default_cache_dir(), key)
    if os.path.exists(os.path.join(dest, MANIFEST_NAME)):
        return dest
    os.makedirs(dest, exist_ok=True)
    for shard in manifest.get("shards", []):  # plain file names: parse_manifest checked them
        _copy(_join(directory, shard["file"]), os.path.join(dest, shard["file"]), shard["sha256"])
    for name in SIDE_FILES:
        if FileSystems.exists(_join(directory, name)):
            _copy(_join(directory, name), os.path.join(dest, name), None)
    tmp = os.path.join(dest, f"{MANIFEST_NAME}.tmp-{uuid.uuid4().hex}")
    with open(tmp, "wb") as f:
        f.write(manifest_bytes)
    os.replace(tmp, os.path.join(dest, MANIFEST_NAME))  # last: the entry is complete
    return dest
