"""`VideoQAOptions`, the two model steps it describes (`make_captioner`, `make_qa`) and
`complete_video_qa`, Beam-free: a rerun of `lwm-pack video-qa` over a complete local output is
answered from the record `prepare_video_qa` builds (`engine.vqgan.vqgan_job` and
`video_qa_steps`) before Beam loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lwmkit.pipelines.engine.job_options import check_packing_fields, recorded_options
from lwmkit.pipelines.engine.outputs import join
from lwmkit.pipelines.engine.vqgan import VQGANOptions, complete_vqgan_job
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
from lwmkit.pipelines.videos.examples import VideoTemplates
from lwmkit.pipelines.videos.frames import DecodeOptions
from lwmkit.pipelines.writing.plan import PackOptions

# The video-QA job's named stages, in order (what the manifest's counts are shown by).
STAGES = ("read", "clips", "caption", "captions", "questions", "decode", "frames", "encode", "gather", "example")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts")


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


def video_qa_steps(options: VideoQAOptions) -> dict[str, Any]:
    """What the job record holds of the two model steps besides a `vqgan_job` record: `captioner`
    and `qa_generator`."""
    return {"captioner": make_captioner(options.captioner).describe(),
            "qa_generator": make_qa(options.questions).describe()}


def video_qa_summary_words(options: VideoQAOptions) -> tuple[str, str]:
    """What the job's first progress line calls its inputs, and how it ends (`engine.vqgan.vqgan_summary`)."""
    return "videos", f"reply cache {options.cache_directory}"


def complete_video_qa(options: VideoQAOptions) -> dict[str, Any] | None:
    """The manifest of a complete local output for `options`, answered without Beam, or None (run
    `run_video_qa`, which checks again): `engine.vqgan.complete_vqgan_job` with the job's video
    suffixes and stages."""
    return complete_vqgan_job(options, source_kind, None, STAGES, *video_qa_summary_words(options),
                              extra=video_qa_steps(options))
