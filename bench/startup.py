"""Benchmark: how fast `lwm-pack` gives its quick answers (issue 23, "the first hour with lwmkit").

Each row runs the installed `lwm-pack` console script as a fresh subprocess, the way a user types
it, and reports its wall time and CPU-seconds (the child's user + system time from
`getrusage(RUSAGE_CHILDREN)`, Beam and decode worker processes included), the median of
`--repeats` runs:

    --help                      the top-level help (imports no Beam, no JAX)
    books: argument error       `--seq-len abc`, refused by argparse (exit 2)
    books: missing input        an --input glob that matches nothing (exit 1, before Beam loads)
    <job>: no-op rerun          each job command again over its complete output (exit 0): books,
                                images, videos, video-qa, qa and pack
    inspect --render, 1st       one record of a small video dataset decoded to PNGs with an empty
                                JAX compile cache (a fresh LWMKIT_JAX_CACHE folder per run)
    inspect --render, 2nd       the same with the cache the first run filled (JAX loads the
                                compiled decoder instead of compiling it)

Setup, not timed: the built-in sample books and a 1,000-piece tokenizer, one run of every job
command: `books` (seq_len 2048), `images` (a webdataset tar of four generated pictures), `videos`
(the built-in sample clips), `video-qa` (a generated 20 s video with known cuts, offline captions and
questions), all three with the tiny random VQGAN; `qa` (the sample books, extractive generator, the
tiny preset) and `pack` (the books output's documents, schedule 1024,2048).

Run (the command recorded in docs/benchmarks.md):
    python bench/startup.py --repeats 3
    python bench/startup.py --repeats 3 --lwm-pack ../before/venv/bin/lwm-pack   # another checkout
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

LWM_PACK = os.path.join(os.path.dirname(sys.executable), "lwm-pack")


def timed(argv: list[str], env: dict[str, str], expect: int) -> tuple[float, float]:
    """(wall s, CPU s) of one `lwm-pack` run; its exit status must be `expect`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([LWM_PACK, *argv], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != expect:
        raise SystemExit(f"lwm-pack {' '.join(argv)}: exit {result.returncode}, expected {expect}\n{result.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def write_image_tar(path: str, count: int = 4) -> str:
    """A webdataset tar of `count` generated 64x64 pictures with captions."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    with tarfile.open(path, "w") as tar:
        for i in range(count):
            png = io.BytesIO()
            Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(png, format="PNG")
            for name, data in ((f"{i:04d}.png", png.getvalue()), (f"{i:04d}.txt", f"picture {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def setup(work: str, env: dict[str, str]) -> tuple[dict[str, list[str]], str]:
    """Makes the inputs and outputs the rows read; returns ({job: its command}, the video dataset)."""
    from lwmkit.pipelines.tools.sample_corpus import write_sample_corpus
    from lwmkit.pipelines.tools.sample_videos import write_cut_video, write_sample_videos

    books = write_sample_corpus(os.path.join(work, "raw"), books=4, seed=0)
    model = os.path.join(work, "tokenizer.model")
    inputs = [a for p in books for a in ("--input", p)]
    timed(["train-tokenizer", *inputs, "--vocab-size", "1000", "--output", model], env, 0)
    tiny = ["--tokenizer", model, "--vqgan-preset", "tiny", "--quiet"]
    listing = write_sample_videos(os.path.join(work, "videos"), clips=2)
    os.makedirs(os.path.join(work, "long-videos"))
    commands = {
        "books": ["books", *inputs, "--tokenizer", model, "--seq-len", "2048", "--output",
                  os.path.join(work, "books-out"), "--quiet"],
        "images": ["images", "--input", write_image_tar(os.path.join(work, "images.tar")), *tiny, "--seq-len", "2048",
                   "--output", os.path.join(work, "images-out")],
        "videos": ["videos", "--input", listing, *tiny, "--num-frames", "3", "--seq-len", "4096", "--output",
                   os.path.join(work, "video-out")],
        "video-qa": ["video-qa", "--input", write_cut_video(os.path.join(work, "long-videos", "shots.mp4")), *tiny,
                     "--offline", "--min-clip", "1", "--max-clip", "5", "--max-frames", "4", "--batch-size", "4",
                     "--seq-len", "2048", "--output", os.path.join(work, "video-qa-out")],
        "qa": ["qa", *inputs, "--tokenizer", model, "--preset", "tiny", "--generator", "extractive", "--output",
               os.path.join(work, "qa-out"), "--quiet"],
        "pack": ["pack", "--documents", os.path.join(work, "books-out", "documents"), "--schedule", "1024,2048",
                 "--output", os.path.join(work, "stages-out"), "--quiet"],
    }
    for command in commands.values():  # books first: pack reads its documents
        timed(command, env, 0)
    return commands, os.path.join(work, "video-out", "packed-4096")


def main() -> None:
    global LWM_PACK
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the median is shown")
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    parser.add_argument("--lwm-pack", default=LWM_PACK,
                        help="the lwm-pack to time, e.g. another checkout's venv/bin/lwm-pack (default: this venv's)")
    args = parser.parse_args()
    LWM_PACK = args.lwm_pack
    work = args.work or tempfile.mkdtemp(prefix="lwm-startup-")
    caches = os.path.join(work, "jax-caches")
    env = {**os.environ, "LWMKIT_JAX_CACHE": os.path.join(caches, "setup")}
    commands, videos = setup(work, env)
    books = commands["books"]
    tokenizer = books[books.index("--tokenizer") + 1]
    miss = ["books", "--input", os.path.join(work, "nothing-*.jsonl"), "--tokenizer", tokenizer,
            "--output", os.path.join(work, "never-written"), "--quiet"]
    bad = [*books, "--seq-len", "abc"]
    render = ["inspect", videos, "--record", "0", "--no-checksums", "--render"]
    rows: dict[str, list[tuple[float, float]]] = {}

    def row(name: str, argv: list[str], expect: int = 0, cache: str = "setup") -> None:
        rows.setdefault(name, []).append(timed(argv, {**env, "LWMKIT_JAX_CACHE": os.path.join(caches, cache)}, expect))

    for r in range(args.repeats):
        row("lwm-pack --help", ["--help"])
        row("lwm-pack books: argument error (--seq-len abc)", bad, expect=2)
        row("lwm-pack books: missing input", miss, expect=1)
        for job, command in commands.items():
            row(f"lwm-pack {job}: no-op rerun of a complete output", command)
        png = os.path.join(work, f"png-{r}")
        row("lwm-pack inspect --render, 1st (empty JAX cache)", [*render, png + "a"], cache=f"fresh-{r}")
        row("lwm-pack inspect --render, 2nd (cache from the 1st)", [*render, png + "b"], cache=f"fresh-{r}")
    print(f"lwm-pack startup, median of {args.repeats} runs each (python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}); {LWM_PACK}; work folder {work}")
    print(f"| {'command':52} | {'wall s':>7} | {'CPU s':>7} |")
    print(f"|{'-' * 54}|{'-' * 9}|{'-' * 9}|")
    for name, runs in rows.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"| {name:52} | {wall:>7.2f} | {cpu:>7.2f} |")
    kept = [len(os.listdir(d)) if os.path.isdir(d := os.path.join(caches, f"fresh-{r}")) else 0
            for r in range(args.repeats)]  # no folder: an lwm-pack without the compile cache (LWMKIT_JAX_CACHE)
    print(f"JAX compile cache after the two inspect runs: {min(kept)}-{max(kept)} entries per fresh folder "
          "(0 means the 2nd run compiled again: is filelock installed?)")


if __name__ == "__main__":
    main()
