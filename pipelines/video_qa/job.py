"""The video-QA job (`lwm-pack video-qa`): long videos -> model-generated chat about the whole video.

LongVILA's recipe in LWM's format, as a flat list of Beam stages:
    read -> clips -> caption -> captions -> questions -> decode -> [frames] -> encode -> gather -> example
         -> plan -> write shards -> finalize

    clips      shot boundaries (PySceneDetect) or a stride; thumbnails for the captioner (`clips`)
    caption    every clip's thumbnails to a vision-language model (or offline), cached (`models`)
    captions   a failure row per clip without caption, with its raw replies
    questions  the timestamped caption timeline to a language model: QA pairs with evidence clips
    decode..example   the video job's stages: frames over the whole video, as many as fit seq_len
               beside the turns, one atomic span per frame, the turns in LWM's chat template, loss
               on answers only

The manifest records `captioner` and `qa_generator` (`kind`: `openai_chat` or `offline`) and a
`video_qa` section: clips, captions, calls, cache hits, token usage and the evidence-depth histogram.
The reply cache (default `<output>/generator-cache/`) makes a rerun pay for no reply twice.

    lwm-pack video-qa --input 'videos/*.mp4' --tokenizer tokenizer.model --vqgan vqgan.safetensors \
        --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2-VL-7B-Instruct --seq-len 131072 --output vqa/
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from lwmkit.packing.shards import dumps_json
from lwmkit.pipelines.engine import inputs
from lwmkit.pipelines.engine.dataflow import register_dry_run
from lwmkit.pipelines.engine.lifecycle import PreparedJob, launch
from lwmkit.pipelines.engine.outputs import (
    delete_outputs,
    join,
    read_output_bytes,
    write_output_bytes,
)
from lwmkit.pipelines.engine.stages import StageList, stage_links
from lwmkit.pipelines.engine.vqgan import prepare_vqgan_job
from lwmkit.pipelines.qa.stages import QAStatsFn
from lwmkit.pipelines.video_qa.options import (
    STAGES,
    VideoQAOptions,
    make_captioner,
    make_qa,
    source_kind,
    video_qa_steps,
    video_qa_summary_words,
)
from lwmkit.pipelines.video_qa.stages import (
    AskQuestions,
    Caption,
    FindClips,
    read_video,
    summary,
    validate_captions,
    video_stats,
)
from lwmkit.pipelines.videos.stages import decode_to_examples
from lwmkit.pipelines.writing.finalize import StageChain
from lwmkit.pipelines.writing.tail import write_job_datasets

CHAIN = StageChain(STAGES, stage_links(STAGES, ("read", "frames"), {"gather": "decode"}), last="example",
                   grouped=("gather",))
STATS_FILE = "video_qa_stats.json"


class NoValidVideoQAError(ValueError):
    """The job read its videos but made no example."""


def build_pipeline(p: beam.Pipeline, options: VideoQAOptions, files: list[str], tokenizer, vqgan_sha256: str,
                   job: dict, receipts: Sequence[str] = (), retried: Sequence[dict] | None = None):
    """Adds the video-QA job's stages to pipeline `p`."""
    stage = StageList.for_job(options)
    videos = stage.read(p, files, read_video)
    videos = stage(videos, "clips", FindClips(options.clips))
    cache = options.cache_directory
    videos = stage(videos, "caption", Caption(make_captioner(options.captioner), cache, options.max_attempts))
    videos = stage(videos, "captions", validate_captions)
    seq_len = min(options.seq_lens)
    ask = AskQuestions(make_qa(options.questions), cache, options.max_attempts, tokenizer, seq_len, options.max_frames)
    videos = stage(videos, "questions", ask)
    stats_path = join(options.output, STATS_FILE)
    (
        videos
        | "video stats" >> beam.Map(video_stats)
        | "sum stats" >> beam.CombineGlobally(QAStatsFn())
        | "write stats" >> beam.Map(lambda s: write_output_bytes(stats_path, json.dumps(s, sort_keys=True).encode()))
    )
    examples = decode_to_examples(stage, videos, options, tokenizer, vqgan_sha256, 0, 0.0)
    return write_job_datasets(p, examples, stage.failures, stage.counts, options, job=job, chain=CHAIN,
                              retried=retried)


def prepare_video_qa(options: VideoQAOptions) -> PreparedJob:
    """Matches the videos, reads the tokenizer and the VQGAN, and records both model steps."""
    files = inputs.match_inputs(options.inputs, source_kind)
    prepared = prepare_vqgan_job(options, files, build_pipeline, STAGES, *video_qa_summary_words(options))
    prepared.job.update(video_qa_steps(options))  # the same dict the pipeline's manifest is written from
    return prepared


def _add_section(output: str) -> dict[str, Any]:
    manifest = json.loads(read_output_bytes(join(output, "manifest.json")))
    raw = read_output_bytes(join(output, STATS_FILE))
    if raw is not None:
        manifest["video_qa"] = summary(json.loads(raw))
        write_output_bytes(join(output, "manifest.json"), dumps_json(manifest))
        delete_outputs([join(output, STATS_FILE)])
    return manifest


def run_video_qa(options: VideoQAOptions) -> dict[str, Any]:
    """Runs the video-QA job and waits for it; returns the job manifest with its `video_qa` section.

    Raises:
      FileNotFoundError: an input pattern matches nothing, or the tokenizer or VQGAN file is missing.
      NoValidVideoQAError: no video gave an example (see failures.jsonl for why).
    """
    launch(options, prepare_video_qa, NoValidVideoQAError, "no video-QA example from")
    return _add_section(options.output)


register_dry_run(VideoQAOptions, "video-qa", prepare_video_qa)
