"""What a job reads before its pipeline starts: its matched inputs and its tokenizer.

Every job matches its `--input` globs the same way (Beam's FileSystems, so any filesystem Beam
knows) and checks each matched file with its own kind function, so a wrong suffix is refused by
the launcher, before anything runs; and every job reads its SentencePiece model from a local path
or any Beam filesystem.

The kind functions are `kind_by_suffix` over each job's table of suffixes.

Commands answer a no-op rerun before Beam loads, so `local_matches` and `local_inputs` find what
Beam's local match would, without it.

Example:
    match_inputs(["books/*.jsonl.zst"], input_kind)   # -> sorted paths; ValueError on a .csv
    kind_by_suffix("a.CSV", ((".parquet", "parquet"), (".csv", "csv")), "expected .parquet or .csv")  # "csv"
    read_tokenizer("gs://bucket/tokenizer.model")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from lwmkit.pipelines.engine.outputs import is_local, read_output_bytes
from lwmkit.tokenizers.text import SentencePieceTokenizer


def kind_by_suffix(path: str, kinds: Sequence[tuple[str | tuple[str, ...], str]], expected: str) -> str:
    """The kind of the first (suffixes, kind) of `kinds` whose suffix ends `path` (any case).

    Raises:
      ValueError: "<path>: <expected>" when none does.
    """
    lower = path.lower()
    for suffixes, kind in kinds:
        if lower.endswith(suffixes):
            return kind
    raise ValueError(f"{path}: {expected}")


def match_inputs(
    patterns: Sequence[str],
    kind: Callable[[str], Any],
    expand: Callable[[str], str] | None = None,
) -> list[str]:
    """Expands globs into a sorted list of files, each accepted by `kind`.

    Args:
      patterns: the `--input` values.
      kind: the job's suffix check (e.g. `books.sources.input_kind`); raises ValueError for an
        unsupported file.
      expand: turns a pattern into the glob to match (e.g. a folder into its files); None keeps it.

    Raises:
      FileNotFoundError: if a pattern matches nothing.
      ValueError: if a matched file has an unsupported suffix (what `kind` raises).
    """
    from apache_beam.io.filesystems import FileSystems

    files: set[str] = set()
    for pattern in patterns:
        expanded = expand(pattern) if expand else pattern
        matched = [m.path for r in FileSystems.match([expanded]) for m in r.metadata_list]
        if not matched:
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
        for path in matched:
            kind(path)  # raises on an unsupported suffix
        files.update(matched)
    return sorted(files)


def local_matches(patterns: Sequence[str]) -> list[str] | None:
    """What Beam's `FileSystems.match` finds for local `patterns` (sorted, deduplicated), without
    Beam; None when it cannot say for sure (a remote pattern, a `[...]` class, a missing file).

    It follows Beam's local match step by step: a pattern ending in `/` gets `*`; a pattern with no
    `*` or `?` is itself if it is a file; otherwise the folder before the first glob character is
    walked (`os.walk`, files only, hidden ones too) and each path is matched with `*` as
    `[^/\\]*`, `**` as `.*` and `?` as any character (`FileSystem.translate_pattern`).

    Example:
        local_matches(["books/*.jsonl"])   # -> ["books/a.jsonl", "books/b.jsonl"]
    """
    import re

    found: set[str] = set()
    for pattern in patterns:
        if not is_local(pattern) or "[" in pattern:
            return None
        if pattern.endswith(("/", "\\")):
            pattern += "*"
        prefix = re.match(r"^[^[*?]*", pattern).group(0)
        if prefix == pattern:
            if not os.path.isfile(pattern):
                return None
            found.add(pattern)
            continue
        regex = "".join(
            ".*" if part == "**" else r"[^/\\]*" if part == "*" else "." if part == "?" else re.escape(part)
            for part in re.findall(r"\*\*|\*|\?|[^*?]+", pattern)
        )
        match = re.compile(r"(?ms)" + regex + r"\Z").match
        root = os.path.dirname(prefix)
        if not os.path.exists(root):
            continue
        found.update(p for d, _, names in os.walk(root) for n in names if match(p := os.path.join(d, n)))
    return sorted(found)


def local_inputs(
    patterns: Sequence[str],
    kind: Callable[[str], Any],
    expand: Callable[[str], str] | None = None,
) -> list[str] | None:
    """What `match_inputs(patterns, kind, expand)` returns, found without Beam (`local_matches`);
    None where it cannot be sure or would raise: a remote pattern, a `[...]` class, a pattern that
    matches nothing, a file `kind` refuses. A job's quick no-op answer lists its inputs with it.

    Example:
        local_inputs(["books/*.jsonl.zst"], input_kind)   # -> sorted paths; None on a .csv
    """
    files: set[str] = set()
    for pattern in patterns:
        matched = local_matches([expand(pattern) if expand else pattern])
        if not matched:
            return None
        try:
            for path in matched:
                kind(path)
        except ValueError:
            return None
        files.update(matched)
    return sorted(files)


def input_stats(files: Sequence[str]) -> list[list]:
    """`[path, size, modified]` per input: what says an input is still the one work was made from.

    Local files give their size and modification time in nanoseconds (`os.stat`); other Beam
    filesystems give what `FileSystems.match` reports, the object's size and last-update time
    (on GCS and S3 a rewrite under the same name is a new object with a new update time).
    An entry that names no file (the pack job identifies its inputs as `shard:sha256`, already
    their contents) is kept as `[entry, None, None]`.
    """
    local = [f for f in files if is_local(f)]
    stats = {}
    for f in local:
        try:
            st = os.stat(f)
        except FileNotFoundError:  # an identity that is not a path (pack's "shard:sha256"): itself
            continue
        stats[f] = [f, st.st_size, st.st_mtime_ns]
    remote = [f for f in files if not is_local(f)]
    if remote:
        from apache_beam.io.filesystems import FileSystems

        for result in FileSystems.match(remote):
            for m in result.metadata_list:
                stats[m.path] = [m.path, m.size_in_bytes, m.last_updated_in_seconds]
    return [stats.get(f, [f, None, None]) for f in files]


def read_tokenizer(path: str) -> SentencePieceTokenizer:
    """The SentencePiece model at `path` (local or any Beam filesystem).

    Raises:
      FileNotFoundError: `--tokenizer PATH: no such file`.
      TokenizerError: the file is not a SentencePiece model.
    """
    if is_local(path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"--tokenizer {path}: no such file")
        return SentencePieceTokenizer.from_file(path)
    data = read_output_bytes(path)
    if data is None:
        raise FileNotFoundError(f"--tokenizer {path}: no such file")
    return SentencePieceTokenizer(data, name=path)
