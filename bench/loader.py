"""Benchmark: the Grain training loader against raw sequential reads + decode of the same shards.

Side by side in one run, on the same packed shards, at seq_len 32,768 and 1,048,576:
- the issue's limit: one process reads every record in file order with `ArrayRecordReader` and
  decodes it with lwmkit's zero-copy decoder;
- the harder limit: the same loop through lwmkit's mmap reader (`packing/shard_reader.py`), which
  `make_loader` itself reads with, unchecked; then the same loop checking every record against the
  shard's XXH3-64 table (`packing/integrity.py`), as `make_loader` does by default, and against a
  CRC32C table (what lwmkit wrote before, still read), side by side;
- `make_loader` with 0 and 2 worker processes (global shuffle, targets shifted within segments,
  batches stacked), with the checksum check (the default) and with `verify_checksums=False`.
Reports tokens/s (wall), CPU-seconds per million tokens (worker processes' CPU included), each
row's rate as a share of both limits, and for each checked row its extra CPU per token over the
same row unchecked (the issue's bound: under 10%).

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


def shard_tables(directory: str, algorithm: str) -> list:
    """Each shard's checksum table: the manifest's (XXH3-64), or one computed with CRC32C."""
    from lwmkit.packing.integrity import HASHES, file_checksums
    from lwmkit.packing.manifest import load_manifest, shard_checksums, shard_paths

    manifest = load_manifest(directory)
    if algorithm == "xxh3_64":
        return shard_checksums(manifest)
    return [file_checksums(p, hash=HASHES[algorithm]) for p in shard_paths(directory, manifest)]


def mmap_read(directory: str, tables: list | None) -> int:
    """Every record in file order through lwmkit's mmap reader, decoded (each checked against its
    range of `tables` unless None); returns the tokens read."""
    from lwmkit.packing import decode_record
    from lwmkit.packing.manifest import shard_paths
    from lwmkit.packing.shard_reader import ShardFile

    tokens = 0
    paths = shard_paths(directory)
    for path, table in zip(paths, tables or [None] * len(paths), strict=True):
        shard = ShardFile(path, checksums=table, verify=tables is not None).open()
        assert shard.mode == "mmap", shard
        for i in range(len(shard)):
            rec = decode_record(shard[i])
            tokens += int(rec["tokens"].shape[0])
        shard.close()
    return tokens


def loader_read(
    directory: str, workers: int, batch_size: int, verify: bool
) -> tuple[int, float, float, float]:
    """(tokens after start-up, their wall s, their CPU s, seconds to the first batch)."""
    from lwmkit.packing import make_loader

    w0 = time.perf_counter()
    it = make_loader(
        directory, batch_size, seed=0, worker_count=workers, num_epochs=2, verify_checksums=verify
    )
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
    ap.add_argument(
        "--repeats", type=int, default=3, help="runs of each row, checked and unchecked alternating"
    )
    args = ap.parse_args()
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lwmkit-loader-") as work:
        for seq_len, batch in ((32768, 8), (1 << 20, 1)):
            d = os.path.join(work, f"packed-{seq_len}")
            write_packed_dataset(d, seq_len, args.tokens // seq_len)
            raw_read(d)  # warm the page cache so every row reads from memory
            # The raw reads alternate too, `repeats` times each, keeping each one's least-CPU run.
            tables = {a: shard_tables(d, a) for a in ("xxh3_64", "crc32c")}
            reads = {
                "ArrayRecord": lambda d=d: raw_read(d),
                "mmap": lambda d=d: mmap_read(d, None),
                **{a: (lambda d=d, t=t: mmap_read(d, t)) for a, t in tables.items()},
            }
            raw_runs = {k: [] for k in reads}
            for _ in range(args.repeats):
                for k, fn in reads.items():
                    raw_runs[k].append(measure(fn))
            best = {k: min(v, key=lambda r: r[2] / r[0]) for k, v in raw_runs.items()}
            limits = (best["ArrayRecord"], best["mmap"])
            rows.append(
                (seq_len, "raw ArrayRecord read + decode, 1 process (limit)", limits[0], limits, None)
            )
            rows.append(
                (seq_len, "raw mmap read + decode, 1 process (new limit)", limits[1], limits, None)
            )
            for algorithm, label in (("xxh3_64", "XXH3-64"), ("crc32c", "CRC32C (before)")):
                rows.append((seq_len, f"raw mmap read + {label} check + decode", best[algorithm], limits, limits[1]))
            for workers in (0, 2):
                name = f"make_loader, {workers} workers, batch {batch}"
                # Checked and unchecked alternate, `repeats` times each; each keeps its run of
                # least CPU per token (on a shared machine, the one least disturbed by others).
                runs = {False: [], True: []}
                for _ in range(args.repeats):
                    for verify in (False, True):
                        runs[verify].append(loader_read(d, workers, batch, verify))
                unchecked, checked = (min(runs[v], key=lambda r: r[2] / r[0]) for v in (False, True))
                rows.append((seq_len, f"{name}, unchecked", unchecked, limits, None))
                rows.append((seq_len, f"{name}, checked", checked, limits, unchecked))
    print(
        f"{os.cpu_count()} CPUs (load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after); "
        f"{args.tokens:,} tokens per dataset; page cache warm; the loaders run two epochs and are "
        "timed from once every worker has delivered a batch (the time to the first batch is its "
        "own column)"
    )
    print(
        f"| {'seq_len':>9} | {'what':48} | {'tokens/s (wall)':>15} | {'CPU-s per M tokens':>18} | "
        f"{'vs ArrayRecord':>14} | {'vs mmap':>7} | {'first batch s':>13} | {'check CPU':>9} |"
    )
    print(f"|{'-' * 11}|{'-' * 50}|{'-' * 17}|{'-' * 20}|{'-' * 16}|{'-' * 9}|{'-' * 15}|{'-' * 11}|")
    for seq_len, name, (tokens, wall, cpu, first), limits, base in rows:
        rate = tokens / wall
        shares = [rate / (lt / lw) for lt, lw, _, _ in limits]
        # The check's cost: CPU per token over the same reads unchecked.
        extra = "" if base is None else f"{(cpu / tokens) / (base[2] / base[0]) - 1:+.1%}"
        print(
            f"| {seq_len:>9,} | {name:48} | {rate:>15,.0f} | {cpu / tokens * 1e6:>18.4f} | "
            f"{shares[0]:>13.0%} | {shares[1]:>6.0%} | {first:>13.2f} | {extra:>9} |"
        )


if __name__ == "__main__":
    main()
