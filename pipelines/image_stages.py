"""The image-text job's per-record stages and its VQGAN step (see `image_text` for the job).

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
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from lwmkit.pipelines.image_examples import ExampleBuilder, choose_kind
from lwmkit.pipelines.image_sources import SourceOptions, read_pairs
from lwmkit.pipelines.normalize import normalize_text
from lwmkit.pipelines.shard_writing import example_payload
from lwmkit.pipelines.stages import Dropped, DropRecord
from lwmkit.tokenizers.vision import (
    CODE_GRID,
    IMAGE_SIZE,
    NUM_CODES,
    ImageError,
    ImageOptions,
    load_image,
)

# --- stage functions (small, picklable, per record) ---------------------------------------------


class ReadPairs:
    def __init__(self, sources: SourceOptions):
        self.sources = sources

    def __call__(self, path: str) -> Iterator[dict | Dropped]:
        yield from read_pairs(path, self.sources)


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


def keep_first(element: tuple[int, Iterable[dict]]) -> Iterator[dict | Dropped]:
    """Exact dedup: of pairs with the same image bytes and caption, keep the first by (file, line)."""
    doc_id, pairs = element
    ordered = sorted(pairs, key=lambda d: (d["file"], d["line"], d["key"]))
    first = ordered[0]
    yield {**first, "doc_id": doc_id}
    for d in ordered[1:]:
        yield Dropped("duplicate", f"same image and caption as {first['file']}:{first['line']}", d["file"], d["line"])


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


def join_codes(element: tuple[dict, Any]) -> Iterator[dict | Dropped]:
    """RunInference's (pair, PredictionResult) -> the pair with its VQGAN codes, checked."""
    pair, result = element
    codes = np.asarray(result.inference)
    if codes.shape != (CODE_GRID, CODE_GRID) or not np.issubdtype(codes.dtype, np.integer):
        yield Dropped("bad_codes", f"the VQGAN gave {codes.dtype} {codes.shape}", pair["file"], pair["line"])
    elif codes.min() < 0 or codes.max() >= NUM_CODES:
        detail = f"codes {codes.min()}..{codes.max()} outside 0..{NUM_CODES - 1}"
        yield Dropped("bad_codes", detail, pair["file"], pair["line"])
    else:
        yield {**pair, "codes": codes.astype(np.int32)}


class MakeExample:
    """The example stage: (doc_id, payload) as `shard_writing.doc_arrays` reads it."""

    def __init__(self, builder: ExampleBuilder, seed: int, generation_fraction: float, token_dtype: str):
        self.builder = builder
        self.seed = seed
        self.generation_fraction = generation_fraction
        self.token_dtype = token_dtype

    def __call__(self, pair: dict) -> Iterator[tuple[int, dict]]:
        kind = choose_kind(pair["key"], self.seed, self.generation_fraction)
        ex = self.builder.build(kind, pair["caption"], pair["codes"])
        meta = {**json.loads(pair["meta"]), "kind": kind}
        yield pair["doc_id"], example_payload(
            pair, len(pair["caption"]), meta, ex.tokens, self.token_dtype, ex.vision_mask, ex.loss_weights,
            ex.atomic_spans,
        )


# --- the VQGAN ------------------------------------------------------------------------------------


def load_image_tokenizer(vqgan: str | None, preset: str, seed: int, dtype: str = "float32"):
    """`ImageTokenizer.from_weights(vqgan, preset)`, or a random one of `preset` when vqgan is None."""
    from lwmkit.packing.compile_cache import enable_compile_cache
    from lwmkit.tokenizers.vqgan import ImageTokenizer

    enable_compile_cache()  # here, in the driver and in every worker: the VQGAN compiles once per machine

    if vqgan is None:
        return ImageTokenizer.random(preset, seed=seed, dtype=dtype)
    return ImageTokenizer.from_weights(vqgan, preset=preset, dtype=dtype)


class LoadEncoder:
    """RunInference's `load()`: builds the VQGAN in the worker and checks it is the driver's.

    Its apply takes uint8 pixels [B, 256, 256, 3] and scales them on the device (x / 127.5 - 1, as
    `tokenizers.vision.to_model_input`), so a batch crosses to the device at a quarter of the size.
    """

    def __init__(self, vqgan: str | None, preset: str, seed: int, dtype: str, sha256: str):
        self.vqgan = vqgan
        self.preset = preset
        self.seed = seed
        self.dtype = dtype
        self.sha256 = sha256

    def __call__(self):
        import jax.numpy as jnp
        from lwmkit.tokenizers.vqgan import jit_for_backend

        tokenizer = load_image_tokenizer(self.vqgan, self.preset, self.seed, self.dtype)
        got = tokenizer.fingerprint()["sha256"]
        if got != self.sha256:
            name = self.vqgan or f"random {self.preset}"
            raise RuntimeError(f"VQGAN {name}: the worker loaded sha256 {got}, the driver {self.sha256}")
        model = tokenizer.flax_model()

        def encode_pixels(p, pixels):  # [B, 256, 256, 3] uint8 -> [B, 16, 16] int32
            return model.apply({"params": p}, pixels.astype(jnp.float32) / 127.5 - 1.0, method=model.encode)

        # Compiled here, with the VQGAN's CPU compiler options; the handler runs it as it is.
        return jit_for_backend(encode_pixels), tokenizer.params


def encode_images(pairs, load: LoadEncoder, batch_size: int):
    """RunInference of the VQGAN over (pair, uint8 pixels); yields (pair, PredictionResult) in any order."""
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from lwmkit.pipelines.inference import JaxModelHandler

    handler = JaxModelHandler(
        load,
        batch_size=batch_size,
        example_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        example_dtype=np.uint8,
        name="vqgan",
        jit=False,  # LoadEncoder compiles it with the VQGAN's own compiler options
    )
    return pairs | "vqgan" >> RunInference(KeyedModelHandler(handler))
