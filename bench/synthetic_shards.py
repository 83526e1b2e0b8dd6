"""A packed dataset directory of random tokens, for the read benchmarks (not a benchmark itself).

Each record holds four documents of seq_len / 4 tokens; the directory has the files a job writes
(one shard, features.json, dataset_info.json, manifest.json), so every reader opens it.
"""

from __future__ import annotations

import os

import numpy as np


def write_packed_dataset(directory: str, seq_len: int, records: int) -> None:
    from lwmkit.packing.assemble import Segment, assemble_packed
    from lwmkit.packing.records import encode_packed, tfds_features_json
    from lwmkit.packing.shards import dataset_info_json, shard_name, write_json_atomic, write_shard

    rng = np.random.default_rng(0)
    n = seq_len // 4

    def recs():
        for r in range(records):
            segs = [
                Segment(1000 * r + i, 0, rng.integers(3, 32000, n, dtype=np.int32), np.zeros(n, bool),
                        np.ones(n, np.float32))
                for i in range(4)
            ]
            yield encode_packed(assemble_packed(segs, seq_len), seq_len)

    info = write_shard(os.path.join(directory, shard_name("packed", 0, 1)), recs())
    write_json_atomic(os.path.join(directory, "features.json"), tfds_features_json("packed", seq_len))
    write_json_atomic(os.path.join(directory, "dataset_info.json"), dataset_info_json("packed", [info], "bench"))
    write_json_atomic(
        os.path.join(directory, "manifest.json"),
        {"format_version": 1, "kind": "packed", "dataset_name": "packed", "seq_len": seq_len,
         "records": records, "documents": 4 * records, "shards": [info.to_json()]},
    )
