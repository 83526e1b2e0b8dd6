"""Benchmark: the Grain training loader against raw sequential reads + decode of the same shards.

Side by side in one run, on the same packed shards, at seq_len 32,768 and 1,048,576:
- the issue's limit: one process reads every record in file order with `ArrayRecordReader` and
  decodes it with lwmkit's zero-copy decoder;
- the harder limit: the same loop through lwmkit's mmap reader (`packing/shard_reader.py`), which
  `make_loader` itself reads with;
- `make_loader` with 0 and 2 worker processes (global shuffle, targets shifted within segments,
  batches stacked).
Reports tokens/s (wall), CPU-seconds per million tokens (worker processes' CPU included) and each
loader's rate as a share of both limits.

Run (the command recorded in docs/benchmarks.md):
    python bench/loader.py
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

from synthetic_shards import write_packed_dataset


def _live_children_cpu() -> float:
    """CPU seconds of this process's live child processes (Grain workers), from /proc."""
    import multiprocessing

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for child in multiprocessing.active_children():
        try:
            with open(f"/proc/{child.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _cpu() -> float:
    """CPU seconds of this process and its children, live (Grain workers) or ended."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + _live_children_cpu()


def raw_read(directory: str) -> int:
    """Every record in file order through ArrayRecordReader, decoded; returns the tokens read."""
    from array_record.python.array_record_module import ArrayRecordReader
    from lwmkit.packing import decode_record
    from lwmkit.packing.manifest import shard_paths

    tokens = 0
    for path in shard_paths(directory):
        reader = ArrayRecordReader(path)
        for i in range(reader.num_records()):
            rec = decode_record(reader.read([i])[0])
            tokens += int(rec["tokens"].shape[0])
        reader.close()
    return tokens


def mmap_read(directory: str) -> int:
    """Every record in file order through lwmkit's mmap reader, decoded; returns the tokens read."""
    from lwmkit.packing import decode_record
    from lwmkit.packing.manifest import shard_paths
    from lwmkit.packing.shard_reader import ShardFile

    tokens = 0
    for path in shard_paths(directory):
        shard = ShardFile(path).open()
        assert shard.mode == "mmap", shard
        for i in range(len(shard)):
            rec = decode_record(shard[i])
            tokens += int(rec["tokens"].shape[0])
        shard.close()
    return tokens


def loader_read(directory: str, workers: int, batch_size: int) -> tuple[int, float, float, float]:
    """(tokens after start-up, their wall s, their CPU s, seconds to the first batch)."""
    from lwmkit.packing import make_loader

    w0 = time.perf_counter()
    it = make_loader(directory, batch_size, seed=0, worker_count=workers, num_epochs=2)
    next(it)
    first = time.perf_counter() - w0
    # Start-up (worker processes importing Grain and JAX) is reported apart from the steady rate:
    # the clock starts once every worker has delivered a batch.
    for _ in range(2 * workers):
        next(it)
    c1, w1 = _cpu(), time.perf_counter()
    tokens = sum(int(batch["tokens"].size) for batch in it)
    return tokens, time.perf_counter() - w1, _cpu() - c1, first


def measure(fn) -> tuple[int, float, float, float]:
    c0, w0 = _cpu(), time.perf_counter()
    tokens = fn()
    return tokens, time.perf_counter() - w0, _cpu() - c0, 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tokens",
        type=int,
        default=1 << 27,
        help="tokens per dataset (default 134M: 4,096 x 32K or 128 x 1M)",
    )
    args = ap.parse_args()
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lwmkit-loader-") as work:
        for seq_len, batch in ((32768, 8), (1 << 20, 1)):
            d = os.path.join(work, f"packed-{seq_len}")
            write_packed_dataset(d, seq_len, args.tokens // seq_len)
            raw_read(d)  # warm the page cache so every row reads from memory
            limits = (measure(lambda d=d: raw_read(d)), measure(lambda d=d: mmap_read(d)))
            rows.append(
                (seq_len, "raw ArrayRecord read + decode, 1 process (limit)", limits[0], limits)
            )
            rows.append(
                (seq_len, "raw mmap read + decode, 1 process (new limit)", limits[1], limits)
            )
            for workers in (0, 2):
                r = loader_read(d, workers, batch)
                rows.append((seq_len, f"make_loader, {workers} workers, batch {batch}", r, limits))
    print(
        f"{os.cpu_count()} CPUs (load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after); "
        f"{args.tokens:,} tokens per dataset; page cache warm; the loaders run two epochs and are "
        "timed from once every worker has delivered a batch (the time to the first batch is its "
        "own column)"
    )
    print(
        f"| {'seq_len':>9} | {'what':48} | {'tokens/s (wall)':>15} | {'CPU-s per M tokens':>18} | "
        f"{'vs ArrayRecord':>14} | {'vs mmap':>7} | {'first batch s':>13} |"
    )
    print(f"|{'-' * 11}|{'-' * 50}|{'-' * 17}|{'-' * 20}|{'-' * 16}|{'-' * 9}|{'-' * 15}|")
    for seq_len, name, (tokens, wall, cpu, first), limits in rows:
        rate = tokens / wall
        shares = [rate / (lt / lw) for lt, lw, _, _ in limits]
        print(
            f"| {seq_len:>9,} | {name:48} | {rate:>15,.0f} | {cpu / tokens * 1e6:>18.4f} | "
            f"{shares[0]:>13.0%} | {shares[1]:>6.0%} | {first:>13.2f} |"
        )


if __name__ == "__main__":
    main()
