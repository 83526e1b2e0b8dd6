"""The image-text job's per-record stages (see `job.py` for the job; the VQGAN step is `engine/vqgan.py`).

Stages are small picklable functions or classes run by `stages.StageDoFn`; the VQGAN runs in Beam
RunInference with `inference.JaxModelHandler`, JAX imported only inside the worker's `load()`.

Example, one pair through decode -> encode -> example:
    {"key": "0001", "caption": "a red bus", "image": b"\\x89PNG..."}
      -> ({"key": "0001", ...}, uint8 [256, 256, 3])            decode
      -> {"key": "0001", ..., "codes": int32 [16, 16]}           encode (RunInference, then join_codes)
      -> (doc_id, {"tokens": b"...", "vision_mask": b"...", "loss_weights": b"...",
                   "atomic_spans": [[1, 262]], "meta": '{"kind": "understanding", ...}', ...})   example
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
from lwmkit.pipelines.engine.drops import DropRecord, KeepFirst
from lwmkit.pipelines.engine.normalize import normalize_text
from lwmkit.pipelines.examples.vision_text import ExampleBuilder, choose_kind
from lwmkit.pipelines.writing.payload import example_payload
from lwmkit.tokenizers.vision import (
    ImageError,
    ImageOptions,
    load_image,
)

# --- stage functions (small, picklable, per record) ---------------------------------------------


def check_caption(pair: dict) -> Iterator[dict]:
    """Drops pairs without a usable caption; the caption is normalized like book text and stripped."""
    caption = pair["caption"]
    if caption is None:
        raise DropRecord("missing_caption", "no caption")
    if not isinstance(caption, str):
        raise DropRecord("missing_caption", f"the caption is a {type(caption).__name__}, not text")
    caption = normalize_text(caption).strip()
    if not caption:
        raise DropRecord("empty_caption", "the caption is empty or whitespace")
    yield {**pair, "caption": caption}


def content_id(image: bytes, caption: str) -> int:
    """A stable 63-bit id of a pair: BLAKE2b-8 of the image's SHA-256 and the caption."""
    h = hashlib.blake2b(digest_size=8)
    h.update(hashlib.sha256(image).digest())
    h.update(caption.encode("utf-8"))
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


# Exact dedup: of pairs with the same image bytes and caption, keep the first by (file, line, key).
keep_first = KeepFirst("image and caption", by_key=True, with_doc_id=True)


class Decode:
    """`load_image` as a stage: the pair leaves with `pixels` (uint8 [256, 256, 3]) instead of bytes."""

    def __init__(self, options: ImageOptions):
        self.options = options

    def __call__(self, pair: dict) -> Iterator[tuple[dict, np.ndarray]]:
        try:
            pixels = load_image(pair["image"], self.options, name=f"{pair['file']}:{pair['key']}")
        except ImageError as e:
            raise DropRecord(e.reason, e.detail) from e
        rest = {k: v for k, v in pair.items() if k != "image"}
        yield rest, pixels


class ExampleStage:
    """What an example stage (images, videos) holds: its example builder, the seed and share of the
    understanding/generation choice, and the payload's token dtype."""

    def __init__(self, builder: Any, seed: int, generation_fraction: float, token_dtype: str):
        self.builder = builder
        self.seed = seed
        self.generation_fraction = generation_fraction
        self.token_dtype = token_dtype


class MakeExample(ExampleStage):
    """The example stage: (doc_id, payload) as `writing.payload.doc_arrays` reads it."""

    builder: ExampleBuilder

    def __call__(self, pair: dict) -> Iterator[tuple[int, dict]]:
        kind = choose_kind(pair["key"], self.seed, self.generation_fraction)
        ex = self.builder.build(kind, pair["caption"], pair["codes"])
        meta = {**json.loads(pair["meta"]), "kind": kind}
        yield pair["doc_id"], example_payload(
            pair, len(pair["caption"]), meta, ex.tokens, self.token_dtype, ex.vision_mask, ex.loss_weights,
            ex.atomic_spans, kind=kind,
        )
