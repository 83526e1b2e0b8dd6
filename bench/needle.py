"""Benchmark: building exact-length 1M-token needle cases, lwmkit vs the naive length search.

Side by side in one run, on the same haystack, tokenizer and target:
  lwmkit  `build_case`: unit counts cached per haystack, a block model of the prompt's count, a
          search over the partial unit's cut on short strings, one whole-prompt verification.
  naive   what LWM's and RULER's scripts do in spirit: binary search over the haystack cut,
          re-tokenizing the whole context (template + haystack + needle + question) every step.
Reports per case the tokenizer calls, tokens encoded, wall and CPU seconds, and whether the count
is exact (checked again outside the timing). The first lwmkit case pays for counting the haystack's
units once; the later ones reuse the cache. Target: under 10 s per 1M-token case on one core.

The tokenizer is `--tokenizer` (e.g. LLaMA-2's tokenizer.model), or an 8K-piece BPE trained on the
haystack at startup. The haystack is ../shared/data/text/*.txt when present, else generated prose.

Run (the command recorded in docs/benchmarks.md):
    python bench/needle.py --length 1000000 --cases 3 --pin-core
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import tempfile
import time

SHARED_TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "text")


def _haystack_paths(tmp: str, min_chars: int) -> list[str]:
    paths = sorted(glob.glob(os.path.join(SHARED_TEXT, "*.txt")))
    if paths:
        return paths
    from lwmkit.pipelines.tools.sample_corpus import sample_book

    rng, text = random.Random(0), []
    while sum(map(len, text)) < min_chars:
        text.append(sample_book(rng, 200))
    path = os.path.join(tmp, "generated.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join(text))
    return [path]


def _tokenizer(path: str | None, haystack: list[str]):
    from lwmkit.tokenizers.text import SentencePieceTokenizer, train_bpe

    if path:
        return SentencePieceTokenizer.from_file(path), path
    lines = [ln for p in haystack for ln in open(p, encoding="utf-8").read().split("\n") if ln.strip()]
    lines = random.Random(0).sample(lines, min(len(lines), 30000))
    return SentencePieceTokenizer(train_bpe(lines, vocab_size=8000, seed=0)), "8K BPE trained on the haystack"


def naive_case(hay, counter, prefix: str, suffix: str, needle: str, depth: float, target: int, start: int):
    """Binary search over the haystack's character cut, counting the whole prompt at every step."""
    units = [hay.units[(start + k) % len(hay.units)] for k in range(len(hay.units))]
    text = " ".join(units)
    ends = [0]
    for u in units:  # sentence boundaries (character offsets in `text`)
        ends.append(ends[-1] + len(u) + 1)

    def prompt_for(cut: int) -> str:
        body = text[:cut]
        goal = depth * len(body)
        b = min((e for e in ends if e <= cut), key=lambda e: abs(e - goal))
        return prefix + body[:b] + needle + body[b:] + suffix

    lo, hi, best = 0, len(text), None
    while lo <= hi:
        mid = (lo + hi) // 2
        n = counter.count(prompt_for(mid))
        if n == target:
            return prompt_for(mid), True
        if n < target:
            lo, best = mid + 1, mid
        else:
            hi = mid - 1
    return prompt_for(best or 0), False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=int, default=1_000_000, help="context tokens per case")
    ap.add_argument("--cases", type=int, default=3, help="lwmkit cases (depths spread over 10..90%%)")
    ap.add_argument("--naive-cases", type=int, default=1, help="naive cases (0 to skip; each takes ~20 full passes)")
    ap.add_argument("--tokenizer", help="a SentencePiece .model (default: train an 8K BPE on the haystack)")
    ap.add_argument("--pin-core", action="store_true", help="run on one CPU core (os.sched_setaffinity)")
    args = ap.parse_args()

    if args.pin_core and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from lwmkit.eval.cases import build_case
    from lwmkit.eval.fitting import TokenCounter
    from lwmkit.eval.haystack import Haystack, HaystackSpec
    from lwmkit.eval.tasks import TEMPLATES, make_needles, task_preset

    with tempfile.TemporaryDirectory(prefix="lwmkit-needle-") as tmp:
        paths = _haystack_paths(tmp, min_chars=5 * args.length)
        tok, tok_name = _tokenizer(args.tokenizer, paths)
        t0, c0 = time.perf_counter(), time.process_time()
        hay = Haystack.load(HaystackSpec(tuple(paths)))
        load = (time.perf_counter() - t0, time.process_time() - c0)
        print(f"haystack: {len(paths)} files, {len(hay.units)} units, "
              f"loaded in {load[0]:.2f}s wall / {load[1]:.2f} CPU-s")  # fmt: skip
        print(f"tokenizer: {tok_name} ({tok.vocab_size} pieces); target {args.length:,} tokens per case\n")
        task = task_preset("lwm_single")
        rows = []
        counter = TokenCounter(tok)
        depths = [10 + 80 * i / max(1, args.cases - 1) for i in range(args.cases)]
        for i, depth in enumerate(depths):
            t0, c0, calls0, toks0 = time.perf_counter(), time.process_time(), counter.calls, counter.tokens
            case = build_case(hay, counter, task, args.length, round(depth, 1), seed=i)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            exact = 1 + len(tok.encode(case["prompt"])) + case["answer_tokens"] == args.length
            label = f"lwmkit ({'cold' if i == 0 else 'warm'} unit cache)"
            rows.append((label, depth, counter.calls - calls0, counter.tokens - toks0, wall, cpu, exact))
        for i in range(args.naive_cases):
            rng = random.Random(f"naive{i}")
            ns = make_needles(task, rng, 0.5)
            prefix, suffix = TEMPLATES[task.template].split(ns.question)
            naive = TokenCounter(tok)
            t0, c0 = time.perf_counter(), time.process_time()
            target = args.length - task.answer_tokens - 1
            start = rng.randrange(len(hay.units))
            prompt, hit = naive_case(hay, naive, prefix, suffix, ns.needles[0].text, 0.5, target, start)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            exact = hit and len(tok.encode(prompt)) == target
            rows.append(("naive (whole context per step)", 50.0, naive.calls, naive.tokens, wall, cpu, exact))

    print("| method | depth % | tokenizer calls | tokens encoded | wall s | CPU s | exact length |")
    print("|---|---:|---:|---:|---:|---:|:---:|")
    for name, depth, calls, toks, wall, cpu, exact in rows:
        print(f"| {name} | {depth:.0f} | {calls} | {toks:,} | {wall:.2f} | {cpu:.2f} | {'yes' if exact else 'no'} |")


if __name__ == "__main__":
    main()
