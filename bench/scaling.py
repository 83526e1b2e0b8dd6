"""Benchmark: the books job on 1x, 4x and 16x the same input: wall, CPU-seconds, peak resident memory.

Each size runs `lwm-pack books` in its own process (DirectRunner), so its peak memory is its own:
the job process's and, with `multi_processing`, the largest worker's. CPU-seconds should grow
linearly with the input; the table shows CPU per million tokens to make that easy to read.

Run (the command recorded in docs/benchmarks.md):
    python bench/scaling.py --scales 1,4,16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from text_pipeline import build_corpus  # noqa: E402

MEASURE = """
import resource, sys, runpy
sys.argv = ["lwm-pack"] + sys.argv[1:]
try:
    from lwmkit.pipelines.cli import main
    code = main(sys.argv[1:])
finally:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print("MAXRSS", me.ru_maxrss, kids.ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def run(paths: list[str], model: str, out: str, mode: str, workers: int, unit_mb: float) -> dict:
    cmd = [sys.executable, "-c", MEASURE, "books", "--tokenizer", model, "--output", out, "--seq-len", "32768",
           "--direct-running-mode", mode, "--quiet", "--force", "--work-unit-mb", str(unit_mb)]
    cmd += ["--direct-num-workers", str(workers)] if workers else []
    for p in paths:
        cmd += ["--input", p]
    t0 = os.times()
    w0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - w0
    t1 = os.times()
    if proc.returncode:
        sys.exit(f"job failed:\n{proc.stderr[-4000:]}")
    line = [x for x in proc.stderr.splitlines() if x.startswith("MAXRSS")][-1].split()
    with open(os.path.join(out, "documents", "manifest.json")) as f:
        tokens = json.load(f)["tokens"]["total"]
    cpu = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
    return {"tokens": tokens, "wall": wall, "cpu": cpu, "rss_main": int(line[1]) / 1024, "rss_worker": int(line[2]) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", default="1,4,16")
    ap.add_argument("--mode", default="in_memory", choices=["in_memory", "multi_processing"])
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--work", help="keep inputs here between runs (default: a temporary folder)")
    ap.add_argument("--work-unit-mb", type=float, default=16.0,
                    help="the job's work-store unit size (peak memory includes one unit; default 16)")
    args = ap.parse_args()
    scales = [int(x) for x in args.scales.split(",")]
    with tempfile.TemporaryDirectory(prefix="lwmkit-scaling-") as tmp:
        work = args.work or tmp
        os.makedirs(work, exist_ok=True)
        paths, _, model = build_corpus(work, max(scales))
        rows = []
        for s in scales:
            rows.append((s, run(paths[:s], model, os.path.join(work, f"out-{s}"), args.mode, args.workers,
                                args.work_unit_mb)))
    # Linear in the input: CPU = start-up + per-token cost, fitted by least squares over every row.
    xs = [r["tokens"] / 1e6 for _, r in rows]
    ys = [r["cpu"] for _, r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
    start = my - slope * mx
    base_rss = rows[0][1]["rss_main"]
    print(f"{os.cpu_count()} CPUs; lwm-pack books, DirectRunner {args.mode}"
          + (f" with {args.workers} workers" if args.workers else "")
          + f"; seq_len 32768; work unit {args.work_unit_mb:g} MiB")
    print(f"fitted CPU line: {start:.1f} CPU-s start-up + {slope:.2f} CPU-s per M tokens")
    print("| input | tokens | wall s | CPU s | CPU-s per M tokens | CPU vs fitted line | peak RSS job MiB "
          "| vs 1x | peak RSS workers MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s, r in rows:
        fitted = start + slope * r["tokens"] / 1e6
        print(f"| {s}x | {r['tokens']:,} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['cpu'] / r['tokens'] * 1e6:.2f} | "
              f"{r['cpu'] / fitted:.0%} | {r['rss_main']:.0f} | {r['rss_main'] / base_rss:.0%} | {r['rss_worker']:.0f} |")


if __name__ == "__main__":
    main()
