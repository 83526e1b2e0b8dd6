"""The video-text job: lists of videos with captions or chat turns -> LWM video-text examples in shards.

The job is a flat list of named stages:
    read -> text -> dedup -> download -> decode -> [frames] -> [VQGAN RunInference] encode -> gather
         -> example -> plan -> write shards -> finalize

    read      one list (parquet, CSV, JSONL) -> videos (see `video_sources`)
    text      captions and turns normalized; missing_caption / empty_caption / empty_turn (checked
              before anything is downloaded)
    dedup     rows with the same video, clip range and text keep the first by (file, line)
    download  yt-dlp into the work directory, with a cache (see `video_download`); local paths and
              allowed file:// URLs are read in place
    near_dedup  with `near_dedup` only: re-encoded, re-uploaded or trimmed copies of one clip, by a
              pHash per frame sampled every 0.5 s and the clip rule (share of aligned frames at or
              above `near_threshold`, see docs/near-dedup.md), before any decode or VQGAN time is
              spent on them; the sketch is made here from the downloaded file (the row's clip range
              only) and rests in the work store with the example, so a resumed run never
              recomputes it
    decode    worker processes sample and decode frames (see `video_frames`, `video_workers`); each
              frame leaves as its own element, so frames stream to the VQGAN and are batched
              across videos; `frames` counts them
    encode    Beam RunInference with the image job's `JaxModelHandler(LoadEncoder)`; one element per
              frame; its count is checked against `frames`
    gather    each video's codes, joined with its decode summary by CoGroupByKey (frames of a video
              that failed part-way through decoding are left out here: metric gather.orphan_frames)
    example   understanding, generation or chat, with atomic spans at frame boundaries (see
              `video_examples`)

Failure reasons, by stage:
    read      unreadable_file, parquet_error, csv_error, invalid_utf8, invalid_json, not_an_object,
              missing_video, unsafe_path, bad_time, bad_turns
    text      missing_caption, empty_caption, empty_turn
    dedup     duplicate;  near_dedup: dedup:near_duplicate (naming the kept twin and the similarity)
    download  unavailable, private, geo_blocked, bot_check, login_required, rate_limited, timeout,
              too_large, unsupported, http_<code>, connection_error, invalid_url, unsupported_scheme,
              missing_file, download_error
    decode    missing_file, broken_container, no_video_stream, zero_frames, too_many_pixels, too_small,
              truncated_video, corrupt_video, empty_clip, decoder_crashed, timeout, worker_memory, decode_error
    encode    bad_codes;  gather: missing_frames;  pack-<n>: atomic_span_too_long, too_long
Output layout is the books and image jobs' (`documents/`, `packed-<seq_len>/`, `failures.jsonl`,
`manifest.json`, with `vqgan` and the random-init warning); downloads stay in the work directory
(default `<output>/video-cache`) for the next run.

Memory: a video is never held whole. Per Beam worker process the frames in memory are at most
2 x `chunk_frames` (the chunk being received) + 3 x `batch_size` (the batch being filled, stacked
and handed to JAX), 196,608 bytes each, plus 1-2 KB of codes per frame until the gather: for an
hour at 1 fps (3,600 frames) with the defaults, about 37 MB of frames and 7 MB of codes, where
holding the decoded video would take 675 MiB (tests/pipelines/test_video_workers.py measures it).
Each decode worker process adds its decoder and up to 2 x `chunk_frames` frames.

Run it:
    lwm-pack videos --input 'webvid/*.csv' --tokenizer tokenizer.model --vqgan vqgan.safetensors \
        --num-frames 32 --seq-len 32768 --output out/
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from lwmkit.pipelines.dedup.stored import near_dedup_stage
from lwmkit.pipelines.dedup.videos import VideoClip
from lwmkit.pipelines.engine import inputs
from lwmkit.pipelines.engine.dataflow import register_dry_run
from lwmkit.pipelines.engine.lifecycle import PreparedJob, launch
from lwmkit.pipelines.engine.resume import skip_stored, stored_documents
from lwmkit.pipelines.engine.stages import StageList, stage_links
from lwmkit.pipelines.engine.vqgan import prepare_vqgan_job
from lwmkit.pipelines.videos.download import DownloadVideo
from lwmkit.pipelines.videos.options import (
    STAGES,
    VideosOptions,
    check_time_ranges,
    videos_summary_words,
)
from lwmkit.pipelines.videos.sources import read_videos, source_kind
from lwmkit.pipelines.videos.stages import (
    check_text,
    content_id,
    decode_to_examples,
    keep_first,
)
from lwmkit.pipelines.writing.finalize import StageChain
from lwmkit.pipelines.writing.tail import write_job_datasets

CHAIN = StageChain(STAGES, stage_links(STAGES, ("read", "frames"), {"gather": "decode"}), last="example",
                   grouped=("dedup", "gather"))
NEAR_CHAIN = CHAIN.with_stage("near_dedup", after="download")
# Stages a stored video skips before near dedup (it takes part there with its stored sketch) and after.
BEFORE_NEAR, AFTER_NEAR = STAGES[1:4], STAGES[4:]


class NoValidVideosError(ValueError):
    """The job read its inputs but no video gave an example."""


def match_inputs(patterns: Sequence[str]) -> list[str]:
    """Expands globs into a sorted list of video lists (see `engine.inputs.match_inputs`)."""
    return inputs.match_inputs(patterns, source_kind)


def frames_of(ref: dict) -> dict[str, int]:
    """How often a stored video counts in the stages that count frames (for resumed counts)."""
    frames = int(json.loads(ref["meta"])["frames"])
    return {"frames": frames, "encode": frames}


def video_clip(video: dict) -> VideoClip:
    """What near dedup hashes of a downloaded video: its file, only the row's clip range unless the
    download already cut it."""
    if video.get("clip_cut"):
        return VideoClip(video["video_path"])
    return VideoClip(video["video_path"], video.get("start"), video.get("end"))


def build_pipeline(p: beam.Pipeline, options: VideosOptions, files: list[str], tokenizer, vqgan_sha256: str,
                   job: dict, receipts: Sequence[str] = (), retried: Sequence[dict] | None = None):
    """Adds the video job's stages to pipeline `p`; videos already in the work store are skipped."""
    stage = StageList.for_job(options)
    near = options.near()
    stored, done = stored_documents(p, receipts, frames_of)
    videos = stage.read(p, files, read_videos, options.sources)
    videos, skipped = skip_stored(videos, done, STAGES[1:] if near is None else BEFORE_NEAR)
    stage.counts.append(skipped)
    videos = videos | "spread videos" >> beam.Reshuffle()
    videos = stage(videos, "text", check_text)
    keyed = videos | "key by content" >> beam.Map(lambda v: (content_id(v), v))
    groups = keyed | "group by content" >> beam.GroupByKey()
    videos = stage(groups, "dedup", keep_first)
    download = dataclasses.replace(options.download, work_dir=options.work_dir)
    videos = stage(videos, "download", DownloadVideo(download))
    videos, stored = near_dedup_stage(stage, videos, stored, near, content=video_clip, later=AFTER_NEAR,
                                      weigh=frames_of)
    videos = videos | "spread downloads" >> beam.Reshuffle()  # decodes run where workers are free
    examples = decode_to_examples(stage, videos, options, tokenizer, vqgan_sha256, options.seed,
                                  options.generation_fraction, options.decode_task, options.decode_python_path)
    return write_job_datasets(p, examples, stage.failures, stage.counts, options, job=job, stored=stored,
                              chain=CHAIN if near is None else NEAR_CHAIN, retried=retried,
                              manifest_entries=stage.entries)


def prepare_videos(options: VideosOptions) -> PreparedJob:
    """`engine.vqgan.prepare_vqgan_job` over the matched video lists; raises what `run_videos`
    raises before anything runs (an unsupported suffix, a missing input, tokenizer or VQGAN file)."""
    return prepare_vqgan_job(options, match_inputs(options.inputs), build_pipeline, STAGES,
                             *videos_summary_words(options))


def run_videos(options: VideosOptions) -> dict[str, Any]:
    """Runs the video-text job and waits for it.

    Returns:
      The job manifest (also written to `<output>/manifest.json`).

    Raises:
      ValueError: time_ranges without ffmpeg, or an unsupported input suffix.
      FileNotFoundError: an input pattern matches nothing, or the tokenizer or VQGAN file is missing,
        or retry_failures finds no earlier run.
      TokenizerError: the tokenizer file is not a SentencePiece model.
      NoValidVideosError: no video gave an example (see failures.jsonl for why).
      CountMismatchError (via the runner): records were lost between stages.
    """
    check_time_ranges(options)
    return launch(options, prepare_videos, NoValidVideosError, "no valid videos in")


def _dry_run_graph(options: VideosOptions) -> PreparedJob:
    """The graph a dry run checks: "frames" is counted by the decode stage (its second output), not
    a transform of its own."""
    prepared = prepare_videos(options)
    return dataclasses.replace(prepared, stages=tuple(s for s in prepared.stages if s != "frames"))


register_dry_run(VideosOptions, "videos", _dry_run_graph)
