"""`lwm-pack demo OUT`: the whole text path on a built-in sample, with no download.

Steps: write the sample corpus (`sample_corpus.py`), train a BPE tokenizer on it (unless one is
given), run the books job on the DirectRunner, check the output against its manifests, and read a
batch back through the Grain loader.

Run it:
    lwm-pack demo /tmp/lwm-demo
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from lwmkit.pipelines.books import BooksOptions, run_books
from lwmkit.pipelines.inspection import inspect
from lwmkit.pipelines.sample_corpus import sample_training_lines, write_sample_corpus
from lwmkit.tokenizers.text import train_bpe

DEMO_SEQ_LENS = (2048, 8192)


def run_demo(
    output: str,
    tokenizer: str | None = None,
    books: int = 24,
    seed: int = 0,
    vocab_size: int = 1000,
    out: TextIO | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Builds the demo corpus under `output` and reads it back.

    Returns:
      The job manifest.
    """
    out = out if out is not None else sys.stdout
    raw = os.path.join(output, "raw")
    files = write_sample_corpus(raw, books=books, seed=seed)
    out.write(f"sample corpus: {', '.join(files)}\n")
    if tokenizer is None:
        tokenizer = os.path.join(output, "tokenizer.model")
        model = train_bpe(sample_training_lines(files), vocab_size=vocab_size, seed=seed)
        with open(tokenizer, "wb") as f:
            f.write(model)
        out.write(f"trained a {vocab_size}-piece BPE tokenizer: {tokenizer}\n")
    manifest = run_books(
        BooksOptions(
            inputs=tuple(files),
            output=os.path.join(output, "shards"),
            tokenizer=tokenizer,
            seq_lens=DEMO_SEQ_LENS,
            progress=progress,
        )
    )
    out.write("\n")
    inspect(os.path.join(output, "shards"), out, record=0, max_tokens=60)
    from lwmkit.packing.loader import make_loader

    packed = os.path.join(output, "shards", f"packed-{DEMO_SEQ_LENS[0]}")
    batch = next(make_loader(packed, batch_size=4, seed=seed))
    segs = [int(row.max()) for row in batch["tokens_segment_ids"]]
    out.write(
        f"\nGrain read-back from {packed}: batch of {batch['tokens'].shape[0]} x {batch['tokens'].shape[1]} "
        f"tokens, segments per record {segs}, loss-weighted tokens {int(batch['loss_weights'].sum())}\n"
    )
    out.write(f"failures (with reasons): {os.path.join(output, 'shards', 'failures.jsonl')}\n")
    return manifest
