"""`manifest.json`: what a dataset directory holds, and the check that it holds what it says.

Every lwmkit output directory has one. Its content is deterministic for the same inputs and
options, except the single field `timestamps`. `verify_directory` re-counts and re-hashes the shards
and is what `lwm-pack inspect` runs; `add_checksums` gives a dataset written before lwmkit recorded
checksum tables its tables (`packing/integrity.py`).

A manifest may come from anywhere (a downloaded dataset, object storage), so `load_manifest` reads
at most `MAX_MANIFEST_BYTES`, refuses JSON nested too deeply, and checks the type of every field a
reader uses (a shard's `file` must be a plain file name inside the directory) before returning it.
"""

from __future__ import annotations

import os
import re
from typing import Any

from lwmkit.packing.integrity import ShardChecksums, file_checksums, has_table, table_of
from lwmkit.packing.json_input import parse_json, read_json
from lwmkit.packing.records import READABLE_VERSIONS
from lwmkit.packing.shard_layout import CorruptShard, UnsupportedLayout
from lwmkit.packing.shards import count_records, describe_shard, file_sha256, write_json_atomic

MANIFEST_NAME = "manifest.json"
TIMESTAMP_FIELD = "timestamps"
# A checksum table costs ~10.7 bytes of JSON per 64 KiB of shards: 256 MiB holds petabytes of them.
MAX_MANIFEST_BYTES = 256 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A manifest is missing, unreadable, malformed or of an unknown version."""


def load_manifest(directory: str) -> dict[str, Any]:
    """Reads and checks `directory/manifest.json` (see `check_manifest`).

    Raises:
      ManifestError: naming the file and what is wrong with it.
    """
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        manifest = read_json(path, ManifestError, MAX_MANIFEST_BYTES)
    except FileNotFoundError as e:
        raise ManifestError(f"{path}: no manifest; is {directory!r} an lwmkit output directory?") from e
    return check_manifest(manifest, path)


def parse_manifest(data: bytes, path: str) -> dict[str, Any]:
    """A manifest from its bytes (e.g. read from object storage), checked as `load_manifest` does."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: larger than {MAX_MANIFEST_BYTES:,} bytes, the most this reader accepts")
    return check_manifest(parse_json(data, path, ManifestError), path)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_manifest(manifest: Any, path: str) -> dict[str, Any]:
    """Checks the fields readers rely on; returns the manifest.

    Checked: `format_version`; `kind` and `seq_len`, `records` where present; each entry of
    `shards` (a plain file name, non-negative `records` and `bytes`, a hex `sha256`, a valid
    checksum table if present).

    Raises:
      ManifestError: naming `path`, the field and what is wrong with it.
    """
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: a manifest is a JSON object, not a {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ManifestError(f"{path}: format_version {version!r}, this lwmkit reads {list(READABLE_VERSIONS)}")
    if "kind" in manifest and not isinstance(manifest["kind"], str):
        raise ManifestError(f"{path}: kind {manifest['kind']!r} is not a string")
    seq_len = manifest.get("seq_len")
    if seq_len is not None and (not _is_count(seq_len) or seq_len < 1):
        raise ManifestError(f"{path}: seq_len {seq_len!r} is not a positive integer")
    if "records" in manifest and not _is_count(manifest["records"]):
        raise ManifestError(f"{path}: records {manifest['records']!r} is not a count")
    shards = manifest.get("shards", [])
    if not isinstance(shards, list):
        raise ManifestError(f"{path}: shards must be a list, got {type(shards).__name__}")
    for i, shard in enumerate(shards):
        _check_shard(shard, f"{path}: shards[{i}]")
    return manifest


def _check_shard(shard: Any, where: str) -> None:
    if not isinstance(shard, dict):
        raise ManifestError(f"{where} must be an object, got {type(shard).__name__}")
    name = shard.get("file")
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or name != os.path.basename(name)
        or "\\" in name
        or "\0" in name
    ):
        raise ManifestError(f"{where}: file {name!r} is not a plain file name inside the directory")
    for key in ("records", "bytes"):
        if not _is_count(shard.get(key)):
            raise ManifestError(f"{where} ({name}): {key} {shard.get(key)!r} is not a count")
    if not isinstance(shard.get("sha256"), str) or not _SHA256.match(shard["sha256"]):
        raise ManifestError(f"{where} ({name}): sha256 {shard.get('sha256')!r} is not 64 hex digits")
    if has_table(shard):
        try:
            table_of(shard)
        except ValueError as e:
            raise ManifestError(f"{where} ({name}): {e}") from None


def shard_checksums(manifest: dict[str, Any]) -> list[ShardChecksums | None]:
    """Each listed shard's checksum table (None for a shard listed without one)."""
    return [table_of(s) for s in manifest["shards"]]


def shard_paths(directory: str, manifest: dict[str, Any] | None = None) -> list[str]:
    """Paths of the shards listed in the manifest, in order."""
    manifest = manifest if manifest is not None else load_manifest(directory)
    return [os.path.join(directory, s["file"]) for s in manifest["shards"]]


def verify_directory(directory: str, checksums: bool = True) -> list[str]:
    """Checks a dataset directory against its manifest; returns the problems found (empty if none).

    Checks that every listed shard exists, has the listed record count (and SHA-256, if
    `checksums`, and then its checksum table where it has one), that no unlisted shard of the
    dataset lies beside them, and that the totals add up.

    Raises:
      ManifestError: the manifest is unreadable or not a dataset directory's.
    """
    manifest = load_manifest(directory)
    missing = [k for k in ("shards", "dataset_name", "records") if k not in manifest]
    if missing or not isinstance(manifest["dataset_name"], str):
        raise ManifestError(
            f"{os.path.join(directory, MANIFEST_NAME)}: not a dataset manifest "
            f"(missing {missing}, or dataset_name is not a string)"
        )
    problems: list[str] = []
    listed = {s["file"] for s in manifest["shards"]}
    total = 0
    any_missing = False
    for shard in manifest["shards"]:
        path = os.path.join(directory, shard["file"])
        if not os.path.exists(path):
            problems.append(f"{path}: listed in the manifest but missing")
            any_missing = True
            continue
        try:
            n = count_records(path)
        except Exception as e:  # ArrayRecord raises RuntimeError for a damaged file
            problems.append(f"{path}: unreadable ArrayRecord file: {e}")
            continue
        total += n
        if n != shard["records"]:
            problems.append(f"{path}: {n} records, manifest says {shard['records']}")
        if checksums and file_sha256(path) != shard["sha256"]:
            problems.append(f"{path}: SHA-256 differs from the manifest")
        elif checksums and has_table(shard):
            problems += _table_problems(path, shard)
    prefix = f"{manifest['dataset_name']}-"
    for name in sorted(os.listdir(directory)):
        if name.startswith(prefix) and ".array_record-" in name and name not in listed:
            problems.append(f"{os.path.join(directory, name)}: shard not listed in the manifest")
    if total != manifest["records"] and not any_missing:
        problems.append(f"shards hold {total} records, manifest says {manifest['records']}")
    return problems


def _table_problems(path: str, shard: dict[str, Any]) -> list[str]:
    """A shard's checksum table against its bytes (its SHA-256 already matched)."""
    listed = table_of(shard)
    label = listed.hash.label
    try:
        found = file_checksums(path, listed.range_bytes, listed.hash)
    except (CorruptShard, UnsupportedLayout) as e:  # the table cannot describe this file
        return [f"{path}: the manifest lists a {label} table, but the shard is not lwmkit's layout: {e}"]
    return [] if found == listed else [f"{path}: its {label} table differs from the manifest's"]


def add_checksums(directory: str) -> int:
    """Records a checksum table (XXH3-64) for every shard of a local dataset directory listed without one.

    For datasets written before lwmkit recorded tables (they are read through ArrayRecord until
    then; see `packing/shard_reader.py`). Each such shard's SHA-256 is checked against the
    manifest first, so a table never blesses damaged bytes; the manifest is then rewritten
    atomically with the tables added and nothing else changed.

    Returns:
      How many shards got a table (0 when every shard already had one).

    Raises:
      ManifestError: the manifest is unreadable, or a shard's bytes differ from its SHA-256.
      OSError: a shard cannot be read.
    """
    manifest = load_manifest(directory)
    added = 0
    for shard in manifest.get("shards", []):
        if has_table(shard):
            continue
        path = os.path.join(directory, shard["file"])
        try:
            info = describe_shard(path, shard["file"])
        except (CorruptShard, UnsupportedLayout) as e:
            raise ManifestError(f"{path}: not a shard lwmkit can checksum: {e}") from None
        if (info.sha256, info.records, info.bytes) != (shard["sha256"], shard["records"], shard["bytes"]):
            raise ManifestError(
                f"{path}: differs from the manifest (SHA-256, record count or size); not adding "
                "a checksum table for damaged bytes"
            )
        shard[info.checksums.key] = info.checksums.to_json()
        added += 1
    if added:
        write_json_atomic(os.path.join(directory, MANIFEST_NAME), manifest)
    return added
