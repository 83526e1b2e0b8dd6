"""Benchmark: the whole `lwm-pack books` job against raw SentencePiece encoding (the limit).

Side by side in one run, on the same text: raw single-process SentencePiece encoding of the
normalized books, and the full job (read jsonl.zst, normalize, dedup, tokenize, write document
shards, pack, write packed shards and manifests) on the DirectRunner. Reports tokens/s (wall) and
CPU-seconds per million tokens; the job's CPU includes every worker process.

Corpus: the public-domain text in ../shared/data/text cut into ~100K-token books, repeated
`--copies` times with a distinct heading per copy (so dedup keeps them), as Books3-style jsonl.zst.
The tokenizer is a 32,000-piece BPE model trained on the same text (LLaMA-2's vocabulary size).

Run (the command recorded in docs/benchmarks.md):
    python bench/text_pipeline.py --copies 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "text")
FILES = ("kjv_bible.txt", "jargon_file.txt", "devils_dictionary.txt")
BOOK_CHARS = 400_000  # about 100K tokens, a typical Books3 book


def _books(text: str) -> list[str]:
    books, start = [], 0
    while start < len(text):
        end = text.find("\n", start + BOOK_CHARS)
        end = len(text) if end < 0 else end
        books.append(text[start:end].strip("\n"))
        start = end
    return [b for b in books if b]


def build_corpus(work: str, copies: int) -> tuple[list[str], list[str], str]:
    """Writes the jsonl.zst inputs and the tokenizer; returns (input paths, book texts, model path)."""
    import zstandard
    from lwmkit.tokenizers import train_bpe

    texts = []
    for name in FILES:
        with open(os.path.join(DATA, name), encoding="utf-8") as f:
            texts.append(f.read())
    base = [b for t in texts for b in _books(t)]
    model = os.path.join(work, "tokenizer-32k.model")
    if not os.path.exists(model):
        lines = [line for t in texts for line in t.split("\n") if line]
        with open(model, "wb") as f:
            f.write(train_bpe(lines, 32000, input_sentence_size=400_000))
    paths, books = [], []
    for c in range(copies):
        path = os.path.join(work, f"books-{c:03d}.jsonl.zst")
        mine = [f"Copy {c}, book {i}\n\n{b}" for i, b in enumerate(base)]
        books += mine
        if not os.path.exists(path):
            data = "".join(json.dumps({"text": b, "meta": {"copy": c}}) + "\n" for b in mine).encode()
            with open(path, "wb") as f:
                f.write(zstandard.ZstdCompressor(level=3).compress(data))
        paths.append(path)
    return paths, books, model


def raw_encode(books: list[str], model: str) -> dict:
    import sentencepiece as spm
    from lwmkit.pipelines.engine.normalize import normalize_text

    sp = spm.SentencePieceProcessor(model_file=model)
    normalized = [normalize_text(b) for b in books]
    c0, w0 = time.process_time(), time.perf_counter()
    tokens = sum(len(sp.encode(b)) + 2 for b in normalized)  # + BOS/EOS, as the job counts
    return {"tokens": tokens, "wall": time.perf_counter() - w0, "cpu": time.process_time() - c0}


def run_job(paths: list[str], model: str, out: str, mode: str, workers: int, seq_lens: str) -> dict:
    cmd = [
        sys.executable, "-m", "lwmkit.pipelines.cli", "books", "--tokenizer", model, "--output", out,
        "--seq-len", seq_lens, "--direct-running-mode", mode, "--quiet", "--force",
    ]
    cmd += ["--direct-num-workers", str(workers)] if workers else []
    for p in paths:
        cmd += ["--input", p]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - w0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"job failed:\n{proc.stderr[-4000:]}")
    with open(os.path.join(out, "documents", "manifest.json")) as f:
        tokens = json.load(f)["tokens"]["total"]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"tokens": tokens, "wall": wall, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=8, help="times the sample text is repeated")
    ap.add_argument("--seq-len", default="32768", help="packed lengths for the job")
    ap.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    if not os.path.isdir(DATA):
        sys.exit(f"needs the sample text in {os.path.abspath(DATA)}")
    work = args.work or tempfile.mkdtemp(prefix="lwmkit-bench-")
    os.makedirs(work, exist_ok=True)
    paths, books, model = build_corpus(work, args.copies)
    rows = [("raw SentencePiece encode, 1 process (limit)", raw_encode(books, model))]
    rows.append(
        ("lwm-pack books, multi_processing, 2 workers",
         run_job(paths, model, os.path.join(work, "out-mp"), "multi_processing", 2, args.seq_len))
    )
    rows.append(
        ("lwm-pack books, in_memory",
         run_job(paths, model, os.path.join(work, "out-mem"), "in_memory", 0, args.seq_len))
    )
    # Start-up cost: the same multi_processing job on one short book (Beam, workers, imports).
    tiny = os.path.join(work, "one-book.jsonl")
    with open(tiny, "w") as f:
        f.write(json.dumps({"text": books[-1][:20_000]}) + "\n")
    startup = run_job([tiny], model, os.path.join(work, "out-tiny"), "multi_processing", 2, args.seq_len)
    limit = rows[0][1]["cpu"] / rows[0][1]["tokens"]
    print(f"corpus: {len(books)} books, {rows[0][1]['tokens']:,} tokens; packed to seq_len {args.seq_len}; "
          f"{os.cpu_count()} CPUs")
    print(f"| {'what':46} | {'tokens':>10} | {'wall s':>7} | {'CPU s':>7} | {'tokens/s (wall)':>15} | "
          f"{'CPU-s per M tokens':>18} | {'CPU vs limit':>12} | {'after start-up':>14} |")
    print(f"|{'-' * 48}|{'-' * 12}|{'-' * 9}|{'-' * 9}|{'-' * 17}|{'-' * 20}|{'-' * 14}|{'-' * 16}|")
    for i, (name, r) in enumerate(rows):
        per_m = r["cpu"] / r["tokens"] * 1e6
        marginal = f"{(r['cpu'] - startup['cpu']) / r['tokens'] / limit:>13.2f}x" if i == 1 else f"{'':>14}"
        print(f"| {name:46} | {r['tokens']:>10,} | {r['wall']:>7.1f} | {r['cpu']:>7.1f} | "
              f"{r['tokens'] / r['wall']:>15,.0f} | {per_m:>18.2f} | {r['cpu'] / r['tokens'] / limit:>11.2f}x | {marginal} |")
    print(f"start-up (same multi_processing job on one short book, {startup['tokens']:,} tokens): "
          f"{startup['wall']:.1f} s wall, {startup['cpu']:.1f} CPU-s; 'after start-up' subtracts it")


if __name__ == "__main__":
    main()
