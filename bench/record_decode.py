"""Benchmark: decoding one packed record of 1M tokens, lwmkit vs TFDS vs a plain memcpy.

Side by side in one run on the same shard: a memcpy of the record's bytes (the physical limit of
any decoder that copies), lwmkit's `ShardDataSource` (ArrayRecord read + zero-copy decode), the
decode alone (`decode_record` on bytes already in memory), and TFDS's
`builder_from_directory(dir).as_data_source()` on the same directory. Reports microseconds per
record (median of `--repeat` reads) and CPU-seconds per million tokens.

Run (the command recorded in docs/benchmarks.md):
    python bench/record_decode.py --seq-len 1048576
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
from synthetic_shards import write_packed_dataset


def _time(fn, repeat: int) -> tuple[float, float]:
    """(median wall seconds, total CPU seconds / repeat) of fn()."""
    walls = []
    c0 = time.process_time()
    for i in range(repeat):
        w0 = time.perf_counter()
        fn(i)
        walls.append(time.perf_counter() - w0)
    return statistics.median(walls), (time.process_time() - c0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq-len", type=int, default=1 << 20)
    ap.add_argument("--records", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=40)
    args = ap.parse_args()

    import tensorflow_datasets as tfds
    from lwmkit.packing import ShardDataSource, decode_record

    with tempfile.TemporaryDirectory(prefix="lwmkit-decode-") as d:
        write_packed_dataset(d, args.seq_len, args.records)
        ours = ShardDataSource(d)
        theirs = tfds.builder_from_directory(d).as_data_source()["train"]
        raw = [ours._source[i] for i in range(args.records)]
        nbytes = len(raw[0])
        buf = bytearray(nbytes)

        def memcpy(i):
            buf[:] = raw[i % args.records]

        def decode_only(i):
            rec = decode_record(raw[i % args.records])
            assert rec["tokens"].shape[0] == args.seq_len

        def lwmkit_read(i):
            rec = ours[i % args.records]
            assert rec["tokens"].shape[0] == args.seq_len

        def tfds_read(i):
            rec = theirs[i % args.records]
            assert rec["tokens"].shape[0] == args.seq_len

        # Same content from both readers before timing anything.
        a, b = ours[0], theirs[0]
        assert all(np.array_equal(a[k], b[k]) for k in ("tokens", "tokens_segment_ids", "loss_weights"))
        rows = [
            ("memcpy of the record bytes (limit)", _time(memcpy, args.repeat)),
            ("lwmkit decode_record (bytes in memory)", _time(decode_only, args.repeat)),
            ("lwmkit ShardDataSource[i] (read + decode)", _time(lwmkit_read, args.repeat)),
            ("TFDS as_data_source()[i] (read + decode)", _time(tfds_read, args.repeat)),
        ]
    print(f"one packed record: seq_len {args.seq_len:,}, {nbytes / 2**20:.1f} MiB; median of {args.repeat} reads")
    print(f"| {'what':42} | {'wall us/record':>14} | {'CPU us/record':>13} | {'CPU-s per M tokens':>18} |")
    print(f"|{'-' * 44}|{'-' * 16}|{'-' * 15}|{'-' * 20}|")
    for name, (wall, cpu) in rows:
        print(f"| {name:42} | {wall * 1e6:>14,.1f} | {cpu * 1e6:>13,.1f} | {cpu / args.seq_len * 1e6:>18.5f} |")


if __name__ == "__main__":
    main()
