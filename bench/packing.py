"""Benchmark: lwmkit's packer against Grain's best-fit and first-fit packers and concat-then-split.

Side by side in one run, on the same documents in the same (seeded, shuffled) order:
  - lwmkit `pack_records` (cut at allowed points, global best-fit decreasing, packed numpy arrays:
    the headline row) and `plan_packing` alone (the plan, no arrays);
  - Grain `BestFitPackIterDataset` and `FirstFitPackIterDataset` with 8, 64 and 512 bins;
  - Grain `ConcatThenSplitIterDataset` (concatenate everything, chop into seq_len records);
  - the limits: ceil(tokens / seq_len) records (only the last one partly empty) and, for the
    mixture, the fewest records that keep every frame whole (seq_len // 257 frames per record).
Every packer gets tokens, vision_mask and loss_weights and must output all three packed.

A second table (`--tables policies`) packs each mixture with lwmkit's `pack_records` under each
long-example policy (`split`, the default `by_kind`, `by_kind:understanding=drop`, `drop`) and counts
from the records: segments that train nothing, generation pieces whose frames have no caption before
them, frames dropped by keep_tail, condition tokens repeated, examples dropped, fill and speed.
Mixture documents carry LWM's loss layouts (generation: the vision field trained; understanding: the
caption) and their kind, prefix and per-frame spans with the tags on the first and last frame.

Grain's packers raise on an element longer than seq_len ("must be truncated to max length"), so
documents longer than seq_len reach them pre-cut into seq_len chunks (`--grain-long chunk`, every
token kept, frames cut wherever a chunk boundary falls) or truncated to seq_len (`truncate`).
Concat-then-split takes whole documents. Fill, cuts and frames cut are counted from what each
packer outputs: its segment ids give the pieces of every record, and each piece is traced back to
its document (Grain's bin packers carry the document and offset as meta features).

Distributions (built here, nothing downloaded):
  text         real book lengths from ../shared/data/text: the 66 books of the KJV Bible, the
               entries of the Jargon File and of the Devil's Dictionary, and the three whole files
               as three long books; lengths from a 32,000-piece BPE model trained on the same
               text (cached in --work), + BOS/EOS. No atomic spans.
  video-heavy  seeded synthetic: 70% image-text pairs (caption 8-60 tokens, before or after a
               vision field of 3 tag + 257 (one frame: 256 codes + eof) + 4 tag tokens, atomic as a
               whole) and 30% video-text (caption + a field of 4..64 frames; the field is atomic when
               it fits in seq_len, otherwise each frame is). Videos are ~92% of the tokens.
  image-heavy  the same generator with 10% video-text documents of 4..16 frames, closer to what a
               4K-8K vision-language stage holds (images and short clips).

Timings are per pass: after one warm-up pass (its CPU-seconds are shown apart, as "first-pass"),
the mean of the passes run (at least --min-cpu CPU-seconds per row); examples per CPU-second
counts input documents.

Run (the command recorded in docs/benchmarks.md):
    python bench/packing.py
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "text")
BIBLE, JARGON, DEVILS = "kjv_bible.txt", "jargon_file.txt", "devils_dictionary.txt"
FRAME = 257  # 256 VQGAN codes + an end-of-frame token
OPEN_TAG, CLOSE_TAG = 3, 4  # tokens of `<vision>` and `</vision>`
FIELDS = ("tokens", "vision_mask", "loss_weights")
BIN_COUNTS = (8, 64, 512)
OURS, LIMIT = "lwmkit pack_records (arrays)", "limit: ceil(tokens / seq_len) records"
Pieces = list[list[tuple[int, int, int]]]  # per record: (doc, offset, length) in record order


@dataclass
class Corpus:
    """One distribution at one seq_len: documents in packing order, their spans and frames."""

    name: str
    seq_len: int
    docs: list[dict[str, Any]]  # lwmkit document records (doc_id = index)
    lengths: list[int]
    spans: list[list[tuple[int, int]]]
    frames: list[np.ndarray]  # per document, [k, 2] frame ranges (empty for text)

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


# ---------------------------------------------------------------------------------------- corpora


def _bible_books(text: str) -> list[str]:
    books: dict[str, list[str]] = {}
    for line in text.split("\n"):
        m = re.match(r"(\d?[A-Za-z]+)\d+:\d+ ", line)
        if m:
            books.setdefault(m.group(1), []).append(line)
    return ["\n".join(lines) for lines in books.values()]


def _entries(text: str, is_headword: Callable[[str], bool]) -> list[str]:
    """Splits a dictd dump at headword lines that follow a blank line (front matter kept)."""
    lines = text.split("\n")
    starts = [0] + [i for i in range(1, len(lines)) if not lines[i - 1].strip() and is_headword(lines[i])]
    bounds = zip(starts, starts[1:] + [len(lines)], strict=True)
    return [e for e in ("\n".join(lines[a:b]).strip("\n") for a, b in bounds) if e.strip()]


def text_documents() -> list[str]:
    texts = {}
    for name in (BIBLE, JARGON, DEVILS):
        with open(os.path.join(DATA, name), encoding="utf-8") as f:
            texts[name] = f.read()
    devils_head = re.compile(r"[A-Z][A-Z0-9'.-]+[ ,?(]|[A-Z] \(")
    return (
        _bible_books(texts[BIBLE])
        + _entries(texts[JARGON], lambda s: bool(s) and not s[0].isspace())  # body lines are indented
        + _entries(texts[DEVILS], lambda s: devils_head.match(s) is not None)  # "ABASEMENT, n.  ..."
        + list(texts.values())
    )


def text_token_ids(work: str, documents: list[str]) -> list[np.ndarray]:
    import sentencepiece as spm
    from lwmkit.tokenizers import train_bpe

    model = os.path.join(work, "tokenizer-32k.model")
    if not os.path.exists(model):
        lines = [line for d in documents[-3:] for line in d.split("\n") if line]  # the three files
        with open(model, "wb") as f:
            f.write(train_bpe(lines, 32000, input_sentence_size=300_000))
    sp = spm.SentencePieceProcessor(model_file=model)
    return [np.array([sp.bos_id(), *ids, sp.eos_id()], dtype=np.int32) for ids in sp.encode(documents)]


def text_corpus(ids: list[np.ndarray], seq_len: int, order: np.ndarray) -> Corpus:
    docs, lengths = [], []
    for i in order:
        t = ids[i]
        docs.append({"tokens": t, "vision_mask": np.zeros(len(t), bool), "loss_weights": np.ones(len(t), np.float32),
                     "doc_id": len(docs), "atomic_spans": np.zeros((0, 2), np.int64)})
        lengths.append(len(t))
    return Corpus("text", seq_len, docs, lengths, [[] for _ in docs], [np.zeros((0, 2), np.int64)] * len(docs))


@dataclass(frozen=True)
class MixtureDoc:
    tokens: np.ndarray  # [n] int32
    vision_mask: np.ndarray  # [n] bool
    field: tuple[int, int]  # the vision field [start, end)
    frames: np.ndarray  # [k, 2] frame ranges
    kind: str  # generation (caption first, the field trained) or understanding (the caption trained)


def mixture_documents(images: int, video_share: float, seed: int, max_frames: int = 64) -> list[MixtureDoc]:
    """Image-text and video-text documents in a seeded random order."""
    rng = np.random.default_rng(seed)
    videos = round(images * video_share / (1 - video_share))
    kinds = rng.permutation(np.r_[np.zeros(images, bool), np.ones(videos, bool)])
    out = []
    for is_video in kinds:
        k = int(rng.integers(4, max_frames + 1)) if is_video else 1
        caption = rng.integers(3, 32000, int(rng.integers(8, 61)), dtype=np.int32)
        codes = rng.integers(32100, 40292, (k, FRAME), dtype=np.int32)
        codes[:, -1] = 32003  # end of frame
        field = np.concatenate([np.full(OPEN_TAG, 32001, np.int32), codes.ravel(), np.full(CLOSE_TAG, 32002, np.int32)])
        caption_first = bool(rng.integers(2))
        parts = [caption, field] if caption_first else [field, caption]
        tokens = np.concatenate(parts)
        start = len(caption) if caption_first else 0
        mask = np.zeros(len(tokens), bool)
        mask[start + OPEN_TAG : start + OPEN_TAG + k * FRAME] = True
        first = start + OPEN_TAG + FRAME * np.arange(k, dtype=np.int64)
        out.append(MixtureDoc(tokens, mask, (start, start + len(field)), np.stack([first, first + FRAME], axis=1),
                              "generation" if caption_first else "understanding"))
    return out


def mixture_corpus(docs: list[MixtureDoc], seq_len: int, name: str) -> Corpus:
    records, spans = [], []
    for i, d in enumerate(docs):
        a, b = d.field
        s = [(a, b)] if b - a <= seq_len else [tuple(map(int, f)) for f in d.frames]  # frame by frame
        if len(s) > 1:  # the tags travel with the first and last frames, as the videos job lays them out
            s[0], s[-1] = (a, s[0][1]), (s[-1][0], b)
        spans.append(s)
        weights = np.zeros(len(d.tokens), np.float32)  # LWM's layouts: the field or the caption trained
        if d.kind == "generation":
            weights[a:b] = 1.0
        else:
            weights[b:] = 1.0
        records.append({"tokens": d.tokens, "vision_mask": d.vision_mask, "loss_weights": weights, "doc_id": i,
                        "atomic_spans": np.array(s, np.int64).reshape(-1, 2), "example_kind": d.kind,
                        "prefix_length": a + OPEN_TAG})
    return Corpus(name, seq_len, records, [len(d.tokens) for d in docs], spans, [d.frames for d in docs])


# --------------------------------------------------------------------------------------- packers


# Each packer is (run, decode): `run()` is the timed pass and returns the packer's own output,
# `decode(output)` (not timed) lists the pieces of every record from it.
Packer = tuple[Callable[[], Any], Callable[[Any], Pieces]]


def lwmkit_full(c: Corpus) -> Packer:
    from lwmkit.packing.online import pack_records

    def decode(records: list[dict[str, np.ndarray]]) -> Pieces:
        fields = ("segment_doc_ids", "segment_offsets", "segment_lengths")
        return [list(zip(*(r[f].tolist() for f in fields), strict=True)) for r in records]

    return lambda: pack_records(c.docs, c.seq_len, policy="split"), decode


def lwmkit_plan(c: Corpus) -> Packer:
    from lwmkit.packing.bins import plan_packing

    def run():
        return plan_packing(c.lengths, c.seq_len, policy="split", spans=c.spans, window=None, top_up_below=None,
                            seed=None)

    return run, lambda plan: [[(p.doc, p.offset, p.length) for p in b] for b in plan.bins]


def _grain_elements(c: Corpus, long: str) -> list[dict[str, Any]]:
    """Grain's packers need every element to fit: long documents cut into seq_len chunks (or truncated)."""
    out = []
    for i, d in enumerate(c.docs):
        for o in range(0, c.lengths[i] if long == "chunk" else 1, c.seq_len):
            out.append({f: d[f][o : o + c.seq_len] for f in FIELDS} | {"doc": i, "offset": o})
    return out


def grain_bins(c: Corpus, kind: str, bins: int, long: str) -> Packer:
    import grain

    cls = {"best-fit": grain.experimental.BestFitPackIterDataset,
           "first-fit": grain.experimental.FirstFitPackIterDataset}[kind]

    def run():
        parent = grain.MapDataset.source(_grain_elements(c, long)).to_iter_dataset(grain.ReadOptions(num_threads=0))
        ds = cls(parent, length_struct=dict.fromkeys(FIELDS, c.seq_len), num_packing_bins=bins, seed=0,
                 meta_features=("doc", "offset"))
        return [(r["tokens_segment_ids"], r["doc"], r["offset"]) for r in ds]

    def decode(records: list[tuple[np.ndarray, list[int], list[int]]]) -> Pieces:
        # A row's k-th element added has segment id k and is the k-th entry of its meta lists.
        pieces = []
        for seg, docs, offsets in records:
            lengths = np.bincount(seg, minlength=len(docs) + 1)[1:].tolist()
            pieces.append(list(zip(docs, offsets, lengths, strict=True)))
        return pieces

    return run, decode


def grain_concat_split(c: Corpus) -> Packer:
    import grain

    def run():
        elements = [{f: d[f] for f in FIELDS} for d in c.docs]
        parent = grain.MapDataset.source(elements).to_iter_dataset(grain.ReadOptions(num_threads=0))
        ds = grain.experimental.ConcatThenSplitIterDataset(parent, length_struct=dict.fromkeys(FIELDS, c.seq_len))
        return [r["tokens_segment_ids"] for r in ds]

    def decode(records: list[np.ndarray]) -> Pieces:
        # Segments come in input order; a split document's remainder opens the next record.
        pieces, doc, offset = [], 0, 0
        for seg in records:
            rec = []
            for n in np.bincount(seg)[1:].tolist():
                rec.append((doc, offset, n))
                offset += n
                if offset == c.lengths[doc]:
                    doc, offset = doc + 1, 0
            pieces.append(rec)
        assert doc == len(c.docs), "concat-then-split output does not cover the input"
        return pieces

    return run, decode


# --------------------------------------------------------------------------------------- scoring


@dataclass
class Score:
    records: int
    fill: float
    split: int
    truncated: int
    tokens_dropped: int
    frames_cut: int
    used: np.ndarray  # [records] tokens in each record


def score(c: Corpus, pieces: Pieces) -> Score:
    """Counts what the packer did, checking that each document's pieces tile a prefix of it."""
    by_doc: dict[int, list[tuple[int, int]]] = {}
    used = np.array([sum(n for _, _, n in rec) for rec in pieces], dtype=np.int64)
    assert used.max() <= c.seq_len, f"a record holds {used.max()} > {c.seq_len} tokens"
    placed = int(used.sum())
    for rec in pieces:
        for d, o, n in rec:
            by_doc.setdefault(int(d), []).append((int(o), int(n)))
    split = truncated = frames_cut = 0
    for d, ps in by_doc.items():
        ps.sort()
        end = 0
        for o, n in ps:
            assert o == end and n > 0, f"document {d}: pieces {ps} do not tile it"
            end += n
        cuts = [o for o, _ in ps[1:]] + ([end] if end < c.lengths[d] else [])
        split += len(ps) > 1
        truncated += end < c.lengths[d]
        f = c.frames[d]
        if cuts and len(f):
            cut = np.asarray(cuts)
            j = np.searchsorted(f[:, 0], cut, side="right") - 1
            inside = (j >= 0) & (cut > f[np.maximum(j, 0), 0]) & (cut < f[np.maximum(j, 0), 1])
            frames_cut += len(set(j[inside].tolist()))
    return Score(len(pieces), placed / (len(pieces) * c.seq_len), split, truncated, c.tokens - placed,
                 frames_cut, used)


def measure(run: Callable[[], Any], min_cpu: float) -> tuple[Any, float, float, int, float]:
    """(output of the last pass, wall s per pass, CPU s per pass, passes, CPU s of the warm-up pass).

    A warm-up pass comes first and is reported apart: a packer's first pass in a fresh process also
    pays for imports and for growing the heap to hold its output (pack_records over the 4,096-token
    mixture holds 1.4 GB of records; its first pass has cost 2-4x the CPU of the next ones, nearly
    all of it page faults). Then passes run until min_cpu is spent.
    """
    c0 = time.process_time()
    out = run()
    cold = time.process_time() - c0
    wall = cpu = 0.0
    passes = 0
    while passes == 0 or (cpu < min_cpu and passes < 50):
        out = None  # free the previous pass's output first
        c0, w0 = time.process_time(), time.perf_counter()
        out = run()
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
        passes += 1
    return out, wall / passes, cpu / passes, passes, cold


# ------------------------------------------------------------------------------------------ main


@dataclass
class Row:
    packer: str
    corpus: Corpus
    score: Score
    wall: float | None = None
    cpu: float | None = None
    passes: int = 0
    cold: float | None = None  # CPU s of the warm-up pass


def bench_corpus(c: Corpus, min_cpu: float, grain_long: str) -> list[Row]:
    makers: list[tuple[str, Callable[[Corpus], Packer]]] = [
        (OURS, lwmkit_full),
        ("lwmkit plan_packing (plan only)", lwmkit_plan),
    ]
    for kind in ("best-fit", "first-fit"):
        makers += [(f"grain {kind}, {b} bins", functools.partial(grain_bins, kind=kind, bins=b, long=grain_long))
                   for b in BIN_COUNTS]
    makers.append(("grain concat-then-split", grain_concat_split))
    rows = []
    for name, make in makers:
        run, decode = make(c)
        out, wall, cpu, passes, cold = measure(run, min_cpu)
        rows.append(Row(name, c, score(c, decode(out)), wall, cpu, passes, cold))
        del out
    for name, n in limits(c):
        rows.append(Row(name, c, Score(n, c.tokens / (n * c.seq_len), 0, 0, 0, 0, np.zeros(0, np.int64))))
    return rows


def limits(c: Corpus) -> list[tuple[str, int]]:
    """Fewest records any packer can use: (what bounds it, records).

    Without cutting a frame, a record holds at most seq_len // 257 frames (15 at 4,096: 15 * 257 =
    3,855 and 16 * 257 > 4,096), so frames / 15 records are needed however well the rest fits.
    """
    out = [(LIMIT, math.ceil(c.tokens / c.seq_len))]
    frames = sum(len(f) for f in c.frames)
    if frames:
        per = c.seq_len // FRAME
        out.append((f"limit, no frame cut: {per} frames/record", max(out[0][1], math.ceil(frames / per))))
    return out


def print_table(rows: Sequence[Row]) -> None:
    head = ("packer", "distribution", "seq_len", "records", "fill %", "docs cut (split/trunc)", "frames cut",
            "tokens dropped", "examples per CPU-s", "wall s", "CPU s", "passes", "first-pass CPU s")
    widths = (37, 12, 7, 7, 7, 22, 10, 14, 18, 7, 7, 6, 16)

    def line(cells: Sequence[str]) -> str:  # the first two columns are text, the rest numbers
        padded = (x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(cells, widths, strict=True)))
        return "| " + " | ".join(padded) + " |"

    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        s, c = r.score, r.corpus
        frames = f"{s.frames_cut:,}" if c.name != "text" else "-"
        timed = r.cpu is not None
        cells = (r.packer, c.name, f"{c.seq_len:,}", f"{s.records:,}", f"{100 * s.fill:.2f}",
                 f"{s.split:,}/{s.truncated:,}", frames, f"{s.tokens_dropped:,}",
                 f"{len(c.docs) / r.cpu:,.0f}" if timed else "-", f"{r.wall:.3f}" if timed else "-",
                 f"{r.cpu:.3f}" if timed else "-", str(r.passes) if timed else "-",
                 f"{r.cold:.3f}" if timed else "-")
        print(line(cells))


def _find(rows: Sequence[Row], packer: str, c: Corpus) -> Row:
    return next(r for r in rows if r.packer == packer and r.corpus is c)


def print_targets(rows: Sequence[Row]) -> None:
    print("\nTargets (lwmkit = the pack_records row; nothing here is adjusted to meet them):")
    ours = [r for r in rows if r.packer == OURS]
    for r in ours:
        c, s = r.corpus, r.score
        if c.name != "text" and c.seq_len == 4096:
            ok = s.fill >= 0.99 and s.frames_cut == 0
            lim = next(x for x in rows if x.corpus is c and x.packer.startswith("limit, no frame cut"))
            bf = _find(rows, "grain best-fit, 512 bins", c)
            print(f"- {c.name} 4,096: fill >= 99.0% with no frame cut: {'MET' if ok else 'MISSED'}: "
                  f"{100 * s.fill:.2f}% ({100 * s.fill - 99:+.2f} points), {s.frames_cut} frames cut. No packer that "
                  f"keeps frames whole can exceed {100 * lim.score.fill:.2f}% here ({lim.packer}). "
                  f"Grain best-fit 512 bins: {100 * bf.score.fill:.2f}% with {bf.score.frames_cut:,} frames cut.")
        if c.name == "text":
            lim = _find(rows, LIMIT, c)
            rest = np.sort(s.used)[1:]
            print(f"- text {c.seq_len:,}: fill >= 99.9%: {'MET' if s.fill >= 0.999 else 'MISSED'}: {100 * s.fill:.2f}% "
                  f"({100 * s.fill - 99.9:+.2f} points); the limit for this corpus is {100 * lim.score.fill:.2f}% "
                  f"(every token kept, one partial record); lwmkit's records but the emptiest are "
                  f"{100 * rest.sum() / (len(rest) * c.seq_len):.2f}% full.")
    for r in ours:
        c = r.corpus
        best = min((b for b in rows if b.packer.startswith("grain best-fit") and b.corpus is c), key=lambda b: b.cpu)
        ratio = best.cpu / r.cpu
        cold = min(b.cold for b in rows if b.packer.startswith("grain best-fit") and b.corpus is c)
        print(f"- {c.name} {c.seq_len:,}: more examples per CPU-second than grain best-fit: "
              f"{'MET' if ratio > 1 else 'MISSED'}: {len(c.docs) / r.cpu:,.0f} vs {len(c.docs) / best.cpu:,.0f} "
              f"(the fastest best-fit row, {best.packer.split(', ')[1]}), {ratio:.2f}x; first passes: "
              f"{len(c.docs) / r.cold:,.0f} vs {len(c.docs) / cold:,.0f}, {cold / r.cold:.2f}x.")


POLICIES = (
    ("split", "split (pre-v2: plain pieces)"),
    ("by_kind", "by_kind (default)"),
    ("by_kind:understanding=drop", "by_kind, understanding=drop"),
    ("drop", "drop every long example"),
)


def policy_rows(c: Corpus, min_cpu: float) -> list[tuple]:
    """pack_records under each long-example policy on one mixture, counted from the records it returns."""
    from lwmkit.packing.online import pack_records
    from lwmkit.packing.records import zero_loss_segments

    rows = []
    for spec, label in POLICIES:
        records, wall, cpu, passes, _ = measure(functools.partial(pack_records, c.docs, c.seq_len, policy=spec), min_cpu)
        used = sum(int(r["segment_lengths"].sum()) for r in records)
        zero = sum(zero_loss_segments(r) for r in records)
        unconditioned = repeated = tail_frames = 0
        placed = set()
        for r in records:
            for doc, off, n, pre in zip(r["segment_doc_ids"].tolist(), r["segment_offsets"].tolist(),
                                        r["segment_lengths"].tolist(), r["segment_prefix_lengths"].tolist(), strict=True):
                placed.add(doc)
                d = c.docs[doc]
                if d["example_kind"] == "generation":
                    unconditioned += off > 0 and pre == 0  # generated frames with no caption before them
                    repeated += pre
                elif pre:
                    tail_frames += int(np.count_nonzero(c.frames[doc][:, 1] <= off))
        rows.append((label, c, len(records), used / (len(records) * c.seq_len), zero, unconditioned, tail_frames,
                     repeated, len(c.docs) - len(placed), len(c.docs) / cpu, wall, cpu))
    return rows


def print_policy_table(rows: Sequence[tuple]) -> None:
    print("\nLong examples (lwmkit pack_records by --long-document-policy; counted from the records):")
    head = ("policy", "distribution", "seq_len", "records", "fill %", "zero-loss segments", "gen. pieces w/o caption",
            "frames dropped", "condition tokens repeated", "examples dropped", "examples per CPU-s", "wall s", "CPU s")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for label, c, n, fill, zero, unc, frames, rep, dropped, eps, wall, cpu in rows:
        print(f"| {label} | {c.name} | {c.seq_len:,} | {n:,} | {100 * fill:.2f} | {zero:,} | {unc:,} | {frames:,} | "
              f"{rep:,} | {dropped:,} | {eps:,.0f} | {wall:.3f} | {cpu:.3f} |")


def print_notes(corpora: Sequence[Corpus], rows: Sequence[Row], grain_long: str) -> None:
    print("\nNotes:")
    for c in corpora:
        long = [i for i, n in enumerate(c.lengths) if n > c.seq_len]
        frames = sum(len(c.frames[i]) for i in long)
        print(f"- {c.name} at {c.seq_len:,}: {len(c.docs):,} documents, {c.tokens:,} tokens, {len(long):,} documents "
              f"longer than seq_len (these must be cut{f'; they hold {frames:,} frames' if frames else ''}).")
        if c.name != "text":
            pad = c.seq_len - _find(rows, OURS, c).score.used
            smallest = min(c.lengths)
            print(f"  lwmkit's padding per record: median {int(np.median(pad))} tokens; {np.mean(pad < FRAME):.1%} of "
                  f"records have less room left than one frame ({FRAME}), {np.mean(pad < smallest):.1%} less than the "
                  f"smallest document ({smallest}).")
    text = [c for c in corpora if c.name == "text"]
    if text:
        c = max(text, key=lambda c: c.seq_len)
        n = math.ceil(c.tokens / c.seq_len)
        print(f"- text at {c.seq_len:,}: the whole corpus is only {n} records' worth of tokens, so one partly filled "
              f"record moves fill by about {100 / n:.1f} points: too few documents to rank packers at this length; "
              "read these rows as a sanity check.")
    how = ("cut into seq_len chunks first (every token kept; chunk boundaries ignore frames)" if grain_long == "chunk"
           else "truncated to seq_len first")
    print(f"- Grain's bin packers raise on an element longer than seq_len; here such documents were {how} "
          "(--grain-long), inside the timed pass. Grain reads the in-memory list with ReadOptions(num_threads=0), its "
          "advice for data already in memory. Concat-then-split cuts every document that crosses a record boundary.")
    print(f"- {os.cpu_count()} CPUs; wall and CPU seconds are per pass (mean of `passes`, after a warm-up pass whose "
          "CPU-seconds are the last column); examples = input documents.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=20_000, help="image-text documents in the mixture")
    ap.add_argument("--video-share", type=float, default=0.3, help="share of video-text documents, video-heavy mix")
    ap.add_argument("--image-heavy-video-share", type=float, default=0.1, help="share of video-text documents, image-heavy mix")
    ap.add_argument("--image-heavy-max-frames", type=int, default=16, help="frames per video in the image-heavy mix")
    ap.add_argument("--text-seq-lens", default="32768,131072")
    ap.add_argument("--mixture-seq-lens", default="4096,8192")
    ap.add_argument("--grain-long", choices=("chunk", "truncate"), default="chunk",
                    help="what Grain's bin packers get for a document longer than seq_len")
    ap.add_argument("--min-cpu", type=float, default=0.5, help="CPU-seconds to spend per row at least (more passes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tables", default="packers,policies",
                    help="which tables: packers (vs Grain), policies (long examples), or both")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "lwmkit-bench-packing"),
                    help="work directory (caches the tokenizer)")
    args = ap.parse_args()
    if not os.path.isdir(DATA):
        sys.exit(f"needs the sample text in {os.path.abspath(DATA)}")
    os.makedirs(args.work, exist_ok=True)

    documents = text_documents()
    ids = text_token_ids(args.work, documents)
    text_order = np.random.default_rng(args.seed).permutation(len(ids))
    mixes = {
        "video-heavy": mixture_documents(args.images, args.video_share, args.seed),
        "image-heavy": mixture_documents(
            args.images, args.image_heavy_video_share, args.seed, max_frames=args.image_heavy_max_frames
        ),
    }
    corpora = [text_corpus(ids, int(n), text_order) for n in args.text_seq_lens.split(",")]
    corpora += [mixture_corpus(docs, int(n), name) for name, docs in mixes.items() for n in args.mixture_seq_lens.split(",")]

    tables = set(args.tables.split(","))
    if "packers" in tables:
        rows = []
        for c in corpora:
            rows += bench_corpus(c, args.min_cpu, args.grain_long)
        print_table(rows)
        print_targets(rows)
        print_notes(corpora, rows, args.grain_long)
    if "policies" in tables:
        print_policy_table([r for c in corpora if c.name != "text" for r in policy_rows(c, args.min_cpu)])
        print("- 'gen. pieces w/o caption': segments of a generation example that continue its vision field "
              "with no caption before them (they train unconditional generation); 'zero-loss segments' train nothing.")


if __name__ == "__main__":
    main()
