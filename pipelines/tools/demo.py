"""`lwm-pack demo OUT`: the whole text path, then the video path, on built-in samples, with no download.

Steps: write the sample corpus (`sample_corpus.py`), train a BPE tokenizer on it (unless one is
given), run the books job on the DirectRunner, check the output against its manifests, and read a
batch back through the Grain loader. Then the video part (unless `videos=0`): a few generated clips
(`sample_videos.py`) through the video job with the tiny, randomly initialised VQGAN, into
`OUT/video-shards`, with one packed batch read back.

Run it:
    lwm-pack demo /tmp/lwm-demo
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from lwmkit.pipelines.books.job import BooksOptions, run_books
from lwmkit.pipelines.tools.inspection import inspect
from lwmkit.pipelines.tools.sample_corpus import sample_training_lines, write_sample_corpus
from lwmkit.pipelines.tools.sample_videos import write_sample_videos
from lwmkit.tokenizers.text import train_bpe

DEMO_SEQ_LENS = (2048, 8192)
DEMO_VIDEO_SEQ_LEN = 2048


def run_demo(
    output: str,
    tokenizer: str | None = None,
    books: int = 24,
    seed: int = 0,
    vocab_size: int = 1000,
    out: TextIO | None = None,
    progress: bool = True,
    videos: int = 2,
) -> dict[str, Any]:
    """Builds the demo corpus under `output` and reads it back; then the video part with `videos` clips.

    Returns:
      The books job's manifest.
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
    if videos:
        _video_part(output, tokenizer, videos, seed, out, progress)
    return manifest


def _video_part(output: str, tokenizer: str, clips: int, seed: int, out: TextIO, progress: bool) -> dict[str, Any]:
    """Generated clips -> the video job (tiny random VQGAN, 3 frames a clip) -> one packed batch read back."""
    from lwmkit.packing.loader import make_loader
    from lwmkit.pipelines.videos.frames import DecodeOptions
    from lwmkit.pipelines.videos.index import FrameSampling
    from lwmkit.pipelines.videos.job import VideosOptions, run_videos

    listing = write_sample_videos(os.path.join(output, "videos"), clips=clips)
    out.write(f"\nsample videos: {listing} ({clips} clips, a chat row, an audio-only file)\n")
    shards = os.path.join(output, "video-shards")
    manifest = run_videos(
        VideosOptions(
            inputs=(listing,),
            output=shards,
            tokenizer=tokenizer,
            vqgan_preset="tiny",
            seq_lens=(DEMO_VIDEO_SEQ_LEN,),
            seed=seed,
            decode=DecodeOptions(FrameSampling("count", num_frames=3)),
            batch_size=4,
            progress=progress,
        )
    )
    packed = manifest["datasets"][f"packed-{DEMO_VIDEO_SEQ_LEN}"]
    reasons = ", ".join(f"{k} x{v}" for k, v in manifest["failures"]["by_reason"].items()) or "none"
    out.write(
        f"video job: {manifest['documents']} examples from {manifest['stages']['frames']['kept']} frames "
        f"(random tiny VQGAN: the codes are for show) -> packed-{DEMO_VIDEO_SEQ_LEN}: {packed['records']} records, "
        f"fill {packed['fill']:.1%}; failures: {reasons}\n"
    )
    batch = next(make_loader(os.path.join(shards, f"packed-{DEMO_VIDEO_SEQ_LEN}"), batch_size=1, seed=seed))
    out.write(
        f"Grain read-back from {shards}: batch of {batch['tokens'].shape[0]} x {batch['tokens'].shape[1]} tokens, "
        f"{int(batch['vision_mask'].sum())} vision tokens ({int(batch['vision_mask'].sum()) // 257} frames)\n"
    )
    return manifest
