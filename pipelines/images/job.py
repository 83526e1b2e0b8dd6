"""The image-text job: image-caption pairs -> LWM vision-text examples in document and packed shards.

The job is a flat list of named stages:
    read -> caption -> download -> dedup -> decode -> [VQGAN RunInference] encode -> example
         -> plan -> write shards -> finalize

    read      one input file -> pairs (see `image_sources`: webdataset tars, parquet, folders, URLs)
    caption   missing_caption / empty_caption (checked first: no download or decoding is spent on
              a pair that would be dropped anyway)
    download  URL pairs only (see `download`); pairs with bytes pass through
    dedup     exact duplicates (same image bytes and caption) keep the first by (file, line)
    near_dedup  with `near_dedup` only: near-copies (resized, re-compressed, slightly cropped) by
              64-bit pHash within `near_threshold` bits (see docs/near-dedup.md), before any VQGAN
              time is spent on them; the sketch is made here from the image bytes and rests in the
              work store with the example, so a resumed run never recomputes it
    decode    `tokenizers.vision.load_image`; an `ImageError` is a drop with its reason
    encode    Beam RunInference with `JaxModelHandler` running the VQGAN on fixed-size batches; its
              count is taken on RunInference's output, so the link decode -> encode catches any
              element RunInference lost
    example   understanding or generation, templates, tokens, vision_mask, loss_weights and
              atomic spans (see `image_examples`)

Each stage counts seen/kept/dropped and sends dropped pairs with their reason to `failures.jsonl`:
    read      unreadable_file, corrupt_tar, unsafe_path, not_a_file, too_large, missing_image,
              missing_file, invalid_utf8, invalid_json, not_an_object, parquet_error, no_image_column
    caption   missing_caption, empty_caption
    download  http_<code>, timeout, too_large, connection_error, invalid_url, unsupported_scheme, ...
    dedup     duplicate;  near_dedup: dedup:near_duplicate (naming the kept twin and the similarity)
    decode    corrupt_image, truncated_image, too_small, too_many_pixels, animated, unsupported_mode
    encode    bad_codes (the VQGAN returned something other than [16, 16] codes in range)
    pack-<n>  atomic_span_too_long, too_long (kept out of that packed dataset only)
Output layout is the books job's (`documents/`, `packed-<seq_len>/`, `failures.jsonl`,
`manifest.json`); the job manifest also records `vqgan`, the image tokenizer's fingerprint, and
says `random_init: true` (with a warning) when no weights were given.

Run it:
    lwm-pack images --input 'shards/*.tar' --tokenizer tokenizer.model --vqgan vqgan.safetensors \
        --seq-len 8192 --output out/
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from lwmkit.pipelines.dedup.stored import near_dedup_stage
from lwmkit.pipelines.engine import inputs
from lwmkit.pipelines.engine.dataflow import register_dry_run
from lwmkit.pipelines.engine.lifecycle import PreparedJob, launch
from lwmkit.pipelines.engine.resume import skip_stored, stored_documents
from lwmkit.pipelines.engine.stages import StageList, stage_links
from lwmkit.pipelines.engine.vqgan import encode_stage, prepare_vqgan_job, token_dtype
from lwmkit.pipelines.examples.vision_text import ExampleBuilder
from lwmkit.pipelines.images.download import Download
from lwmkit.pipelines.images.options import STAGES, ImagesOptions, images_summary_words
from lwmkit.pipelines.images.sources import expand_input, read_pairs, source_kind
from lwmkit.pipelines.images.stages import (
    Decode,
    MakeExample,
    check_caption,
    content_id,
    keep_first,
)
from lwmkit.pipelines.writing.finalize import StageChain
from lwmkit.pipelines.writing.tail import write_job_datasets

CHAIN = StageChain(STAGES, stage_links(STAGES), last="example", grouped=("dedup",))
NEAR_CHAIN = CHAIN.with_stage("near_dedup", after="dedup")
# Stages a stored pair skips before near dedup (it takes part there with its stored sketch) and after.
BEFORE_NEAR, AFTER_NEAR = STAGES[1:4], STAGES[4:]


class NoValidPairsError(ValueError):
    """The job read its inputs but no pair gave an example."""


# --- the job ---------------------------------------------------------------------------------------


def match_inputs(patterns: Sequence[str]) -> list[str]:
    """Expands folders and globs into a sorted list of supported files (see `engine.inputs.match_inputs`)."""
    return inputs.match_inputs(patterns, source_kind, expand_input)


def build_pipeline(
    p: beam.Pipeline,
    options: ImagesOptions,
    files: list[str],
    tokenizer,
    vqgan_sha256: str,
    job: dict,
    receipts: Sequence[str] = (),
    retried: Sequence[dict] | None = None,
):
    """Adds the image job's stages to pipeline `p`; pairs already in the work store are skipped."""
    stage = StageList.for_job(options)
    near = options.near()
    stored, done = stored_documents(p, receipts)
    pairs = stage.read(p, files, read_pairs, options.sources)
    pairs, skipped = skip_stored(pairs, done, STAGES[1:] if near is None else BEFORE_NEAR)
    stage.counts.append(skipped)
    pairs = pairs | "spread pairs" >> beam.Reshuffle()  # one file's downloads and decodes run in parallel
    pairs = stage(pairs, "caption", check_caption)
    pairs = stage(pairs, "download", Download(options.download))
    groups = (
        pairs
        | "key by content" >> beam.Map(lambda d: (content_id(d["image"], d["caption"]), d))
        | "group by content" >> beam.GroupByKey()
    )
    pairs = stage(groups, "dedup", keep_first)
    pairs, stored = near_dedup_stage(stage, pairs, stored, near, content=image_bytes, later=AFTER_NEAR)
    decoded = stage(pairs, "decode", Decode(options.images))
    encoded = encode_stage(stage, decoded, options, vqgan_sha256)
    make = MakeExample(ExampleBuilder(tokenizer, options.templates), options.seed, options.generation_fraction,
                       token_dtype(tokenizer.vocab_size))
    examples = stage(encoded, "example", make)
    return write_job_datasets(p, examples, stage.failures, stage.counts, options, job=job, stored=stored,
                              chain=CHAIN if near is None else NEAR_CHAIN, retried=retried,
                              manifest_entries=stage.entries)


def image_bytes(pair: dict) -> bytes:
    """What near dedup hashes of a pair: its image bytes, as downloaded or read."""
    return pair["image"]


def prepare_images(options: ImagesOptions) -> PreparedJob:
    """`engine.vqgan.prepare_vqgan_job` over the matched inputs (folders stand for their captions
    file); raises what `run_images` raises before anything runs."""
    return prepare_vqgan_job(options, match_inputs(options.inputs), build_pipeline, STAGES,
                             *images_summary_words(options))


def run_images(options: ImagesOptions) -> dict[str, Any]:
    """Runs the image-text job and waits for it.

    Returns:
      The job manifest (also written to `<output>/manifest.json`).

    Raises:
      FileNotFoundError: an input pattern matches nothing, or the tokenizer or VQGAN file is missing,
        or retry_failures finds no earlier run.
      TokenizerError: the tokenizer file is not a SentencePiece model.
      NoValidPairsError: no input pair gave an example (see failures.jsonl for why).
      CountMismatchError (via the runner): records were lost between stages.
    """
    return launch(options, prepare_images, NoValidPairsError, "no valid image-text pairs in")


register_dry_run(ImagesOptions, "images", prepare_images)
