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
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from lwmkit.packing.shards import dumps_json
from lwmkit.pipelines.engine import inputs
from lwmkit.pipelines.engine.dataflow import register_dry_run
from lwmkit.pipelines.engine.job_options import check_packing_fields, recorded_options
from lwmkit.pipelines.engine.lifecycle import PreparedJob, launch
from lwmkit.pipelines.engine.outputs import (
    delete_outputs,
    join,
    read_output_bytes,
    write_output_bytes,
)
from lwmkit.pipelines.engine.stages import StageList, stage_links
from lwmkit.pipelines.engine.vqgan import VQGANOptions, prepare_vqgan_job
from lwmkit.pipelines.qa.stages import QAStatsFn
from lwmkit.pipelines.video_qa.clips import ClipOptions
from lwmkit.pipelines.video_qa.models import (
    ChatCaptioner,
    ChatCaptionerOptions,
    ChatQAOptions,
    ChatTimelineQA,
    OfflineCaptioner,
    OfflineOptions,
    OfflineTimelineQA,
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
from lwmkit.pipelines.videos.examples import VideoTemplates
from lwmkit.pipelines.videos.frames import DecodeOptions
from lwmkit.pipelines.videos.stages import decode_to_examples
from lwmkit.pipelines.writing.finalize import StageChain
from lwmkit.pipelines.writing.plan import PackOptions
from lwmkit.pipelines.writing.tail import write_job_datasets

STAGES = ("read", "clips", "caption", "captions", "questions", "decode", "frames", "encode", "gather", "example")
CHAIN = StageChain(STAGES, stage_links(STAGES, ("read", "frames"), {"gather": "decode"}), last="example",
                   grouped=("gather",))
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts")
STATS_FILE = "video_qa_stats.json"


class NoValidVideoQAError(ValueError):
    """The job read its videos but made no example."""


def source_kind(path: str) -> str | None:
    return "video" if path.lower().endswith(VIDEO_SUFFIXES) else None


@dataclass(frozen=True)
class VideoQAOptions(VQGANOptions):
    """Options of the video-QA job.

    Attributes:
      inputs: video file globs (local or any Beam filesystem).
      output, tokenizer, vqgan, vqgan_preset, vqgan_seed, vqgan_dtype: as in `VideosOptions`
        (`engine.vqgan.VQGANOptions`).
      seq_lens: packed lengths; each video's frames fill what its turns leave of the smallest.
      clips: how videos are cut (`ClipOptions`).
      captioner: `ChatCaptionerOptions` (a vision-language server) or `OfflineOptions`.
      questions: `ChatQAOptions` (a language-model server) or `OfflineOptions`.
      max_attempts: replies parsed per clip or video before it fails.
      cache_dir: the reply cache (default `<output>/generator-cache`).
      max_frames: most frames of one video in its example.
      templates: the chat templates (`VideoTemplates`).
      decode, batch_size, shard_tokens, pack: as in `VideosOptions`.
    """

    inputs: tuple[str, ...]
    output: str
    tokenizer: str
    seq_lens: tuple[int, ...] = (32768,)
    clips: ClipOptions = field(default_factory=ClipOptions)
    captioner: ChatCaptionerOptions | OfflineOptions = field(default_factory=OfflineOptions)
    questions: ChatQAOptions | OfflineOptions = field(default_factory=OfflineOptions)
    max_attempts: int = 3
    cache_dir: str | None = None
    max_frames: int = 4096
    templates: VideoTemplates = field(default_factory=VideoTemplates)
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    shard_tokens: int = 1 << 24
    pack: PackOptions = field(default_factory=PackOptions)
    generation_fraction = 0.0  # not a field: every example is chat (read by `check_vqgan_fields`)

    def __post_init__(self):
        if not self.inputs:
            raise ValueError("inputs: give at least one video file or glob")
        if not isinstance(self.captioner, ChatCaptionerOptions | OfflineOptions):
            raise ValueError(f"captioner: {type(self.captioner).__name__} is not ChatCaptionerOptions or OfflineOptions")
        if not isinstance(self.questions, ChatQAOptions | OfflineOptions):
            raise ValueError(f"questions: {type(self.questions).__name__} is not ChatQAOptions or OfflineOptions")
        if not 1 <= self.max_attempts <= 20:
            raise ValueError(f"max_attempts: {self.max_attempts} is outside 1..20")
        if not 1 <= self.max_frames <= 1 << 16:
            raise ValueError(f"max_frames: {self.max_frames} is outside 1..65536")
        check_packing_fields(self.seq_lens, self.shard_tokens)
        super().__post_init__()

    @property
    def cache_directory(self) -> str:
        return self.cache_dir or join(self.output, "generator-cache")

    def recorded(self) -> dict[str, Any]:
        d = recorded_options(self, not_recorded=("cache_dir",))
        d["captioner"] = make_captioner(self.captioner).describe()
        d["questions"] = make_qa(self.questions).describe()
        d["decode"] = self.decode.recorded()
        return d


def make_captioner(options: ChatCaptionerOptions | OfflineOptions):
    return ChatCaptioner(options) if isinstance(options, ChatCaptionerOptions) else OfflineCaptioner()


def make_qa(options: ChatQAOptions | OfflineOptions):
    return ChatTimelineQA(options) if isinstance(options, ChatQAOptions) else OfflineTimelineQA(options)


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
    prepared = prepare_vqgan_job(options, files, build_pipeline, STAGES, "videos",
                                 f"reply cache {options.cache_directory}")
    prepared.job["captioner"] = make_captioner(options.captioner).describe()
    prepared.job["qa_generator"] = make_qa(options.questions).describe()
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
