"""The write tail every job ends with: from tokenized documents to shards, indexes and manifests.

    tail.py      `write_datasets`: spill -> plan -> (pack windows) -> route -> write shards -> finalize
    plan.py      the packing plan from lengths alone (`PackOptions`, best-fit decreasing, windows)
    payload.py   the compact payload of a tokenized document, as jobs make it and shards read it
    shards.py    routing every piece to its shard, writing each shard once (receipts for resume)
    finalize.py  reconciling stage counts, then manifests, `documents.parquet`, TFDS metadata, failures

It may import only `engine/` (see the dependency rule in `pipelines/__init__.py`).
"""
