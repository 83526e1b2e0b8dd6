"""Benchmark: lwmkit's near-dedup stages against datatrove's MinHash dedup pipeline, on one corpus.

Side by side in one run, on the same documents: lwmkit (`TextSketches` -> `NearDuplicates` on the
Beam DirectRunner, in_memory) and datatrove's four MinHash steps (signatures, buckets, clusters,
filter; `LocalPipelineExecutor`, one task, in this process), each at its defaults (5-gram shingles;
lwmkit 128 permutations in 14 bands x 9 rows, verified at estimated Jaccard >= 0.8; datatrove 14
buckets x 8 hashes, no verification). Reports wall time, CPU-seconds (this process and its
children), CPU-s per million tokens, and precision/recall of the removed documents against the
planted truth.

Corpus: ../shared/data/text cut into books (the KJV by its books, the Jargon File and the Devil's
Dictionary into ~10K-word parts), plus `--per-edit` planted copies per edit (a few words changed,
re-flowed lines and punctuation, the last 8% cut; `pipelines/dedup/planted.py`). Tokens are
counted as words x 1.34 (the LLaMA-tokenizer ratio measured on this text, see
../shared/data/README.md).

Scoring: each original and its planted copies form a cluster from which size - 1 documents must
go (any of them: which one survives is each tool's rule). A removed document is correct when it
is in a planted cluster and the cluster keeps at least one member; anything else removed is a
false positive.

`--libraries` also compares the two MinHash libraries (rensa, datasketch) on the planted pairs:
signature CPU time and the error of the estimated Jaccard against the exact one.

datatrove and datasketch are installed in the bench's environment only (not lwmkit's deps):
    python3 -m venv /tmp/bench-venv  (+ lwmkit's deps) && pip install datatrove==0.10.1 orjson "xxhash<4" datasketch
Run (the command recorded in docs/benchmarks.md):
    python bench/near_dedup.py --per-edit 8 --libraries
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "text"
TOKENS_PER_WORD = 1.34


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def corpus(per_edit: int, seed: int) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    from lwmkit.pipelines.dedup.planted import chunked_books, kjv_books, plant_copies

    books = kjv_books(DATA / "kjv_bible.txt")
    books.update(chunked_books(DATA / "jargon_file.txt", "jargon", 10_000))
    books.update(chunked_books(DATA / "devils_dictionary.txt", "devils", 10_000))
    return plant_copies(books, per_edit=per_edit, seed=seed)


def score(removed: set[str], truth: list[tuple[str, str, str]]) -> tuple[float, float]:
    clusters: dict[str, set[str]] = {}
    for copy, original, _ in truth:
        clusters.setdefault(original, {original}).add(copy)
    expected = sum(len(c) - 1 for c in clusters.values())
    correct = sum(min(len(c & removed), len(c) - 1) for c in clusters.values())
    precision = correct / len(removed) if removed else 1.0
    return precision, correct / expected


def run_lwmkit(docs: dict[str, str], work: Path) -> set[str]:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from lwmkit.pipelines.dedup import MinHashConfig, NearDuplicates, TextMatcher, TextSketches

    out = work / "lwmkit-removed.txt"
    matcher = TextMatcher(MinHashConfig())
    with beam.Pipeline(options=PipelineOptions(["--direct_running_mode=in_memory"])) as p:
        (p | beam.Create(sorted(docs.items()))
         | TextSketches(matcher.config)
         | NearDuplicates(matcher)
         | beam.Map(lambda d: d.key)
         | beam.io.WriteToText(str(out), shard_name_template="", num_shards=1))
    return set(out.read_text().split())


def run_datatrove(docs: dict[str, str], work: Path) -> set[str]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from loguru import logger

    logger.remove()  # datatrove logs every step to stderr; the table is the output here
    src = work / "dt-input"
    src.mkdir()
    with open(src / "docs.jsonl", "w") as f:
        for key, text in sorted(docs.items()):
            f.write(json.dumps({"id": key, "text": text}) + "\n")
    cfg = MinhashConfig()
    steps = [
        [JsonlReader(str(src)), MinhashDedupSignature(output_folder=str(work / "dt-sigs"), config=cfg)],
        [MinhashDedupBuckets(input_folder=str(work / "dt-sigs"), output_folder=str(work / "dt-buckets"), config=cfg)],
        [MinhashDedupCluster(input_folder=str(work / "dt-buckets"), output_folder=str(work / "dt-ids"), config=cfg)],
        [JsonlReader(str(src)), MinhashDedupFilter(input_folder=str(work / "dt-ids"),
                                                   exclusion_writer=JsonlWriter(str(work / "dt-removed"),
                                                                                compression=None))],
    ]
    for i, pipeline in enumerate(steps):
        tasks = cfg.num_buckets if i == 1 else 1
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(work / f"dt-logs-{i}"),
                              skip_completed=False).run()
    removed = set()
    for path in (work / "dt-removed").glob("*.jsonl"):
        removed |= {json.loads(line)["id"] for line in path.read_text().splitlines() if line}
    return removed


def compare_libraries(docs: dict[str, str], truth: list[tuple[str, str, str]]) -> list[tuple]:
    import datasketch
    import numpy as np
    import rensa
    from lwmkit.pipelines.dedup.text import _grams, exact_jaccard, shingle_hashes, words

    grams = {k: _grams(words(docs[k]), 5) for pair in truth for k in pair[:2]}
    exact = {(c, o): exact_jaccard(shingle_hashes(docs[c]), shingle_hashes(docs[o])) for c, o, _ in truth}

    def rensa_sig(g):
        m = rensa.RMinHash(num_perm=128, seed=1)
        m.update(g)
        return np.asarray(m.digest())

    def datasketch_sig(g):
        m = datasketch.MinHash(num_perm=128, seed=1)
        m.update_batch([s.encode() for s in g])
        return m.hashvalues

    rows = []
    for name, fn in (("rensa", rensa_sig), ("datasketch", datasketch_sig)):
        c0 = _cpu()
        sigs = {k: fn(g) for k, g in grams.items()}
        cpu = _cpu() - c0
        errors = [abs(float(np.mean(sigs[c] == sigs[o])) - exact[(c, o)]) for c, o, _ in truth]
        n_grams = sum(len(g) for g in grams.values())
        rows.append((name, cpu, cpu / n_grams * 1e6, max(errors), float(np.mean(errors))))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-edit", type=int, default=8, help="planted copies per edit (3 edits)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--libraries", action="store_true", help="also compare rensa and datasketch")
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"sample text not found at {DATA} (the shared data folder beside the checkout)")
    docs, truth = corpus(args.per_edit, args.seed)
    n_words = sum(len(t.split()) for t in docs.values())
    mtok = n_words * TOKENS_PER_WORD / 1e6
    print(f"corpus: {len(docs)} documents ({len(truth)} planted copies), {n_words:,} words, ~{mtok:.2f}M tokens; "
          f"{os.cpu_count()} CPUs")
    print(f"| {'tool':<28} | wall s | CPU s | CPU s / M tokens | removed | precision | recall |")
    print(f"|{'-' * 30}|-------:|------:|-----------------:|--------:|----------:|-------:|")
    for name, fn in (("lwmkit (Beam DirectRunner)", run_lwmkit), ("datatrove 0.10.1 (local)", run_datatrove)):
        with tempfile.TemporaryDirectory(prefix="near-dedup-") as tmp:
            w0, c0 = time.perf_counter(), _cpu()
            removed = fn(docs, Path(tmp))
            wall, cpu = time.perf_counter() - w0, _cpu() - c0
        p, r = score(removed, truth)
        print(f"| {name:<28} | {wall:6.2f} | {cpu:5.2f} | {cpu / mtok:16.2f} | {len(removed):7d} | {p:9.3f} | {r:6.3f} |")
    if args.libraries:
        print()
        print("| MinHash library (128 perm) | CPU s | CPU s / M shingles | max abs error vs exact | mean abs error |")
        print("|---|---:|---:|---:|---:|")
        for name, cpu, per, worst, mean in compare_libraries(docs, truth):
            print(f"| {name} | {cpu:.3f} | {per:.2f} | {worst:.4f} | {mean:.4f} |")


if __name__ == "__main__":
    main()
