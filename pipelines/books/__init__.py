"""The books job (`lwm-pack books`): Books3-style text documents to token shards.

    options.py   BooksOptions and the job record they make, without Beam (the quick no-op answer)
    job.py       the stages (read -> normalize -> filter -> tokenize -> dedup),
                 build_pipeline, prepare_books, run_books
    sources.py   reading .jsonl / .jsonl.zst / .txt / .parquet inputs into records, one Dropped per bad record
"""
