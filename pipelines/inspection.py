"""`lwm-pack inspect`: check an output directory against its manifest and show a record as text.

For a job directory it checks every dataset directory the job manifest lists. A record is shown
segment by segment, each headed by its document, source and token range, so packing boundaries
are visible.

Example output (abridged):
    packed-2048: OK, 78 records, 9 documents, fill 99.41%, 2 shards
    record 0 (seq_len 2048, 2 segments, 0 padding)
    ── segment 1: doc 6425434439365526 books.jsonl.zst:1, tokens [0, 1530), positions 0..1529
    <s> The Devil's Dictionary ...
"""

from __future__ import annotations

import os
from typing import Any, TextIO

from lwmkit.packing.manifest import load_manifest, verify_directory
from lwmkit.packing.source import ShardDataSource
from lwmkit.tokenizers.text import SentencePieceTokenizer


class InspectError(ValueError):
    """The directory failed its checks."""


def _dataset_dirs(directory: str) -> list[str]:
    manifest = load_manifest(directory)
    if manifest["kind"] in ("job", "stages"):
        return [os.path.join(directory, name) for name in manifest["datasets"]]
    return [directory]


def _tokenizer_for(manifest: dict[str, Any], path: str | None) -> SentencePieceTokenizer | None:
    candidate = path or manifest.get("tokenizer", {}).get("path")
    if not candidate or not os.path.exists(candidate):
        return None
    tok = SentencePieceTokenizer.from_file(candidate)
    if tok.fingerprint()["sha256"] != manifest.get("tokenizer", {}).get("sha256") and path is None:
        return None  # the file at the recorded path changed since the job ran
    return tok


def _sources(directory: str) -> dict[int, str]:
    path = os.path.join(directory, "documents.parquet")
    if not os.path.exists(path):
        return {}
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["doc_id", "source_file", "source_line"]).to_pydict()
    return {d: f"{f}:{n}" for d, f, n in zip(t["doc_id"], t["source_file"], t["source_line"], strict=True)}


def _text(tok: SentencePieceTokenizer | None, ids, max_tokens: int) -> str:
    ids = [int(i) for i in ids]

    def render(part: list[int]) -> str:
        if tok is None:
            return " ".join(map(str, part))
        out = []
        for i in part:  # keep special ids visible; decode() would drop them
            out.append(tok.id_to_piece(i) if i in (tok.bos_id, tok.eos_id) else None)
        text, run = [], []
        for i, special in zip(part, out, strict=True):
            if special is None:
                run.append(i)
            else:
                if run:
                    text.append(tok.decode(run))
                    run = []
                text.append(special)
        if run:
            text.append(tok.decode(run))
        return " ".join(t for t in text if t)

    if len(ids) <= max_tokens:
        return render(ids)
    half = max_tokens // 2
    return f"{render(ids[:half])} … [{len(ids) - 2 * half} tokens] … {render(ids[-half:])}"


def show_record(directory: str, index: int, out: TextIO, tokenizer: str | None = None, max_tokens: int = 200) -> None:
    """Writes record `index` of a dataset directory as readable text, segment by segment."""
    src = ShardDataSource(directory)
    rec = src[index]
    tok = _tokenizer_for(src.manifest, tokenizer)
    sources = _sources(directory)
    if rec["format"].startswith("lwmkit.document"):
        n = rec["tokens"].shape[0]
        out.write(f"record {index}: doc {rec['doc_id']} {rec['source_file']}:{rec['source_line']}, {n} tokens\n")
        out.write(_text(tok, rec["tokens"], max_tokens) + "\n")
        return
    seq_len = rec["tokens"].shape[0]
    lengths = rec["segment_lengths"]
    used = int(lengths.sum())
    out.write(f"record {index} (seq_len {seq_len}, {len(lengths)} segments, {seq_len - used} padding)\n")
    start = 0
    for j, (doc, offset, n) in enumerate(zip(rec["segment_doc_ids"], rec["segment_offsets"], lengths, strict=True)):
        n = int(n)
        pos = rec["tokens_positions"][start : start + n]
        out.write(
            f"── segment {j + 1}: doc {int(doc)} {sources.get(int(doc), '')}, tokens [{int(offset)}, "
            f"{int(offset) + n}), positions {int(pos[0])}..{int(pos[-1])}\n"
        )
        out.write(_text(tok, rec["tokens"][start : start + n], max_tokens) + "\n")
        start += n
    if used < seq_len:
        out.write(f"── padding: {seq_len - used} tokens\n")


def inspect(
    directory: str,
    out: TextIO,
    record: int | None = 0,
    tokenizer: str | None = None,
    checksums: bool = True,
    max_tokens: int = 200,
) -> None:
    """Checks every dataset under `directory`, prints a summary, then shows one record.

    Raises:
      InspectError: listing every problem found, after printing the summary.
    """
    problems: list[str] = []
    dirs = _dataset_dirs(directory)
    for d in dirs:
        m = load_manifest(d)
        found = verify_directory(d, checksums=checksums)
        problems += found
        fill = f", fill {m['fill']:.2%}" if m.get("fill") is not None else ""
        out.write(
            f"{os.path.basename(os.path.normpath(d))}: {'OK' if not found else 'PROBLEMS'}, {m['records']} records, "
            f"{m['documents']} documents, {m['tokens']['total']} tokens{fill}, {len(m['shards'])} shards\n"
        )
        if m.get("failures", {}).get("total"):
            out.write(f"  failures: {m['failures']['by_reason']}\n")
    for p in problems:
        out.write(f"  problem: {p}\n")
    if record is not None and dirs:
        packed = [d for d in dirs if load_manifest(d)["kind"] == "packed"]
        target = packed[0] if packed else dirs[0]
        out.write("\n")
        show_record(target, record, out, tokenizer, max_tokens)
    if problems:
        raise InspectError(f"{directory}: {len(problems)} problems found")
