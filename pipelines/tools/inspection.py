"""`lwm-pack inspect`: check an output directory against its manifest and show a record as text.

For a job directory it checks every dataset directory the job manifest lists. A record is shown
segment by segment, each headed by its document, source and token range, so packing boundaries
are visible.

Example output (abridged):
    packed-2048: OK, 78 records, 9 documents, fill 99.41%, 2 shards
    record 0 (seq_len 2048, 2 segments, 0 padding)
    ── segment 1: doc 6425434439365526 books.jsonl.zst:1, tokens [0, 1530), positions 0..1529
    <s> The Devil's Dictionary ...

With `render=OUT_DIR` the shown record's vision frames are decoded with the VQGAN the dataset was
tokenized with (its manifest's `vqgan` fingerprint; a randomly initialised one is rebuilt from
preset and seed, with a warning) and written as one PNG per frame:
    OUT_DIR/record0-segment1-vision1-frame1.png   (record / packed segment / vision field / frame)
"""

from __future__ import annotations

import os
from typing import Any, TextIO

import numpy as np
from lwmkit.packing.manifest import load_manifest, verify_directory
from lwmkit.packing.source import ShardDataSource
from lwmkit.pipelines.tools.progress_bar import progress_bar
from lwmkit.tokenizers.text import SentencePieceTokenizer
from lwmkit.tokenizers.vision import VisionFieldError, run_frames, vision_runs


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


def _text(tok: SentencePieceTokenizer | None, ids, max_tokens: int, vision_mask=None) -> str:
    if vision_mask is not None and np.any(vision_mask):
        # Vision ids live in their own id space: show each field as a placeholder, never as text.
        parts, pos = [], 0
        for s, e in vision_runs(vision_mask):
            if pos < s:
                parts.append(_text(tok, ids[pos:s], max_tokens))
            frames = f"{(e - s) // 257} frames" if (e - s) % 257 == 0 else "not whole frames"
            parts.append(f"[vision: {e - s} tokens, {frames}]")
            pos = e
        if pos < len(ids):
            parts.append(_text(tok, ids[pos:], max_tokens))
        return " ".join(parts)
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
        out.write(_text(tok, rec["tokens"], max_tokens, rec["vision_mask"]) + "\n")
        return
    seq_len = rec["tokens"].shape[0]
    lengths = rec["segment_lengths"]
    used = int(lengths.sum())
    out.write(f"record {index} (seq_len {seq_len}, {len(lengths)} segments, {seq_len - used} padding)\n")
    start = 0
    prefixes = rec["segment_prefix_lengths"]
    for j, (doc, offset, n, pre) in enumerate(zip(rec["segment_doc_ids"], rec["segment_offsets"], lengths, prefixes,
                                                  strict=True)):
        n, pre = int(n), int(pre)
        pos = rec["tokens_positions"][start : start + n]
        where = f"tokens [0, {pre}) + [{int(offset)}, {int(offset) + n - pre})" if pre else f"tokens [{int(offset)}, {int(offset) + n})"
        loss = float(rec["loss_weights"][start : start + n].sum())
        out.write(
            f"── segment {j + 1}: doc {int(doc)} {sources.get(int(doc), '')}, {where}, positions "
            f"{int(pos[0])}..{int(pos[-1])}, loss weight {loss:g}{' (trains nothing)' if loss == 0 else ''}\n"
        )
        part = slice(start, start + n)
        out.write(_text(tok, rec["tokens"][part], max_tokens, rec["vision_mask"][part]) + "\n")
        start += n
    if used < seq_len:
        out.write(f"── padding: {seq_len - used} tokens\n")


def cut_summary(m: dict[str, Any]) -> str:
    """One line of what packing did to long examples and how many segments train nothing."""
    c, z = m.get("cuts") or {}, m.get("zero_loss") or {}
    parts = [f"{k.replace('_', ' ')} {c[k]}" for k in ("documents_split", "documents_tail_kept", "frames_dropped",
             "documents_condition_repeated", "condition_tokens_repeated", "documents_truncated", "documents_dropped")
             if c.get(k)]
    zero = f"zero-loss segments {z.get('segments', 0)}, records {z.get('records', 0)}" if z else "zero-loss: not counted (older manifest)"
    return f"packing {(m.get('packing') or {}).get('policy', '?')}: {', '.join(parts) or 'nothing cut'}; {zero}"


def inspect(
    directory: str,
    out: TextIO,
    record: int | None = 0,
    tokenizer: str | None = None,
    checksums: bool = True,
    max_tokens: int = 200,
    render: str | None = None,
    vqgan: str | None = None,
    progress: bool = False,
) -> None:
    """Checks every dataset under `directory`, prints a summary, then shows one record.

    Args:
      render: a folder to decode the shown record's vision frames into, one PNG each (see
        `render_record`); their paths are printed.
      vqgan: weights for `render`, overriding the manifest's VQGAN.
      progress: show a bar of frames rendered on stderr when it is a terminal.

    Raises:
      InspectError: listing every problem found, after printing the summary; or if `render` is
        asked for and the VQGAN cannot be found or rebuilt.
    """
    problems: list[str] = []
    dirs = _dataset_dirs(directory)
    failures: list[str] = []  # every dataset of a job repeats the job's failures: print each once
    for d in dirs:
        m = load_manifest(d)
        found = verify_directory(d, checksums=checksums)
        problems += found
        fill = f", fill {m['fill']:.2%}" if m.get("fill") is not None else ""
        out.write(
            f"{os.path.basename(os.path.normpath(d))}: {'OK' if not found else 'PROBLEMS'}, {m['records']} records, "
            f"{m['documents']} documents, {m['tokens']['total']} tokens{fill}, {len(m['shards'])} shards\n"
        )
        if m.get("kind") == "packed":
            out.write(f"  {cut_summary(m)}\n")
        if m.get("failures", {}).get("total"):
            by_reason = ", ".join(f"{k} x{v}" for k, v in sorted(m["failures"]["by_reason"].items()))
            line = f"failures: {m['failures']['total']} dropped records ({by_reason})"
            if line not in failures:
                failures.append(line)
    for line in failures:
        out.write(f"{line}\n")
    for p in problems:
        out.write(f"  problem: {p}\n")
    if record is not None and dirs:
        packed = [d for d in dirs if load_manifest(d)["kind"] == "packed"]
        target = packed[0] if packed else dirs[0]
        out.write("\n")
        show_record(target, record, out, tokenizer, max_tokens)
        if render is not None:
            for path in render_record(target, record, render, out, vqgan, progress=progress):
                out.write(f"{path}\n")
    if problems:
        raise InspectError(f"{directory}: {len(problems)} problems found")


def _segments(rec: dict[str, Any]) -> list[tuple[int, int]]:
    """(start, end) of each segment of a record; a document record is one segment."""
    if rec["format"].startswith("lwmkit.document"):
        return [(0, int(rec["tokens"].shape[0]))]
    ends = np.cumsum(rec["segment_lengths"]).tolist()
    return list(zip([0, *ends[:-1]], ends, strict=True))


def recorded_vqgan(directory: str) -> dict[str, Any] | None:
    """The `vqgan` fingerprint in a dataset's manifest or, failing that, its job's manifest."""
    found = load_manifest(directory).get("vqgan")
    parent = os.path.dirname(os.path.normpath(directory))
    if found is None and os.path.exists(os.path.join(parent, "manifest.json")):
        found = load_manifest(parent).get("vqgan")
    return found


def load_vqgan(recorded: dict[str, Any] | None, weights: str | None, out: TextIO):
    """The VQGAN a dataset was tokenized with: `weights` if given, else rebuilt or loaded from `recorded`.

    Raises:
      InspectError: if there is nothing to load, or the weights found are not the recorded ones.
    """
    from lwmkit.packing.compile_cache import enable_compile_cache
    from lwmkit.tokenizers.vqgan import ImageTokenizer

    enable_compile_cache()  # the decoder compiles once per machine, not once per --render

    preset = (recorded or {}).get("preset") or "lwm"
    want = (recorded or {}).get("sha256")
    if weights is not None:
        tok = ImageTokenizer.from_weights(weights, preset=preset)
        if want and tok.fingerprint()["sha256"] != want:
            out.write(
                f"WARNING: --vqgan {weights} is not the VQGAN this dataset was tokenized with "
                f"(sha256 {tok.fingerprint()['sha256'][:12]}…, manifest {want[:12]}…); the images will be wrong\n"
            )
        return tok
    if recorded is None:
        raise InspectError("the manifest records no VQGAN; pass --vqgan WEIGHTS")
    if recorded.get("random_init"):
        tok = ImageTokenizer.random(preset, seed=int(recorded.get("seed") or 0))
        out.write(
            f"WARNING: this dataset was tokenized with a RANDOMLY INITIALISED VQGAN (preset {preset!r}, seed "
            f"{recorded.get('seed')}), rebuilt here; its codes carry no picture, the PNGs show only what "
            "those random weights decode them to\n"
        )
    else:
        path = recorded.get("path")
        if not path or not os.path.exists(path):
            raise InspectError(
                f"the dataset's VQGAN ({recorded.get('source')}, sha256 {str(want)[:12]}…) is not at a "
                "recorded path; pass --vqgan WEIGHTS"
            )
        tok = ImageTokenizer.from_weights(path, preset=preset)
    if want and tok.fingerprint()["sha256"] != want:
        raise InspectError(
            f"the VQGAN found ({tok.source}) has sha256 {tok.fingerprint()['sha256'][:12]}…, the dataset "
            f"recorded {want[:12]}…; pass --vqgan WEIGHTS"
        )
    return tok


def render_record(
    directory: str,
    index: int,
    out_dir: str,
    out: TextIO,
    vqgan: str | None = None,
    image_tokenizer: Any = None,
    progress: bool = False,
) -> list[str]:
    """Decodes every frame of every vision field of record `index` into PNGs in `out_dir`.

    Files are named `record{index}-segment{j}-vision{k}-frame{f}.png` (1-based j, k, f; a document
    record is segment 1).

    Args:
      vqgan: weights to decode with instead of the manifest's (see `load_vqgan`).
      image_tokenizer: an already loaded VQGAN (anything with `decode`), used as given.
      progress: show a bar of frames rendered on stderr when it is a terminal (`progress_bar`).

    Returns:
      The paths written, in token order.

    Raises:
      InspectError: if the VQGAN cannot be loaded, or a vision run is not well-formed frames.
    """
    from PIL import Image

    rec = ShardDataSource(directory)[index]
    tokens, mask = rec["tokens"], rec["vision_mask"]
    names, frames = [], []
    for j, (lo, hi) in enumerate(_segments(rec), start=1):
        for k, (s, e) in enumerate(vision_runs(mask[lo:hi]), start=1):
            try:
                codes = run_frames(tokens, lo + s, lo + e)  # [F, 16, 16]
            except VisionFieldError as err:
                raise InspectError(f"{directory}: record {index}, segment {j}: {err}") from err
            names += [f"record{index}-segment{j}-vision{k}-frame{f}.png" for f in range(1, len(codes) + 1)]
            frames.append(codes)
    if not frames:
        out.write(f"record {index} has no vision tokens; nothing to render\n")
        return []
    tok = image_tokenizer if image_tokenizer is not None else load_vqgan(recorded_vqgan(directory), vqgan, out)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    with progress_bar(f"rendering {len(names)} frames", len(names), progress) as advance:
        pixels = tok.decode(np.concatenate(frames))  # uint8 [F_total, 256, 256, 3], one batched call
        for name, image in zip(names, pixels, strict=True):
            path = os.path.join(out_dir, name)
            Image.fromarray(image).save(path, format="PNG")
            paths.append(path)
            advance()
    out.write(f"rendered {len(paths)} frames with VQGAN {getattr(tok, 'source', tok)}\n")
    return paths
