"""`manifest.json`: what a dataset directory holds, and the check that it holds what it says.

Every lwmkit output directory has one. Its content is deterministic for the same inputs and
options, except the single field `timestamps`. `verify_directory` re-counts and re-hashes the shards
and is what `lwm-pack inspect` runs.
"""

from __future__ import annotations

import json
import os
from typing import Any

from lwmkit.packing.records import FORMAT_VERSION
from lwmkit.packing.shards import count_records, file_sha256

MANIFEST_NAME = "manifest.json"
TIMESTAMP_FIELD = "timestamps"


class ManifestError(ValueError):
    """A manifest is missing, unreadable or of an unknown version."""


def load_manifest(directory: str) -> dict[str, Any]:
    """Reads `directory/manifest.json`.

    Raises:
      ManifestError: naming the file and what is wrong with it.
    """
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError as e:
        raise ManifestError(f"{path}: no manifest; is {directory!r} an lwmkit output directory?") from e
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: unreadable manifest: {e}") from e
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(f"{path}: format_version {version!r}, this lwmkit reads {FORMAT_VERSION}")
    return manifest


def shard_paths(directory: str, manifest: dict[str, Any] | None = None) -> list[str]:
    """Paths of the shards listed in the manifest, in order."""
    manifest = manifest if manifest is not None else load_manifest(directory)
    return [os.path.join(directory, s["file"]) for s in manifest["shards"]]


def verify_directory(directory: str, checksums: bool = True) -> list[str]:
    """Checks a dataset directory against its manifest; returns the problems found (empty if none).

    Checks that every listed shard exists, has the listed record count (and SHA-256, if
    `checksums`), that no unlisted shard of the dataset lies beside them, and that the totals add up.
    """
    manifest = load_manifest(directory)
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
    prefix = f"{manifest['dataset_name']}-"
    for name in sorted(os.listdir(directory)):
        if name.startswith(prefix) and ".array_record-" in name and name not in listed:
            problems.append(f"{os.path.join(directory, name)}: shard not listed in the manifest")
    if total != manifest["records"] and not any_missing:
        problems.append(f"shards hold {total} records, manifest says {manifest['records']}")
    return problems
