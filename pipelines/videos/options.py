"""`VideosOptions` (the fields it shares with the image job come from `images.options`), and
`complete_videos`: `lwm-pack videos` over a complete local output, answered before Beam loads with
the record `prepare_videos` builds (`engine.vqgan.complete_vqgan_job`). Imports no Beam.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lwmkit.pipelines.dedup.videos import VideoHashConfig
from lwmkit.pipelines.engine.job_options import recorded_options
from lwmkit.pipelines.engine.outputs import join
from lwmkit.pipelines.engine.vqgan import complete_vqgan_job
from lwmkit.pipelines.images.options import VisionTextOptions
from lwmkit.pipelines.videos.download import VideoDownloadOptions
from lwmkit.pipelines.videos.examples import VideoTemplates
from lwmkit.pipelines.videos.frames import DecodeOptions
from lwmkit.pipelines.videos.sources import VideoSourceOptions, source_kind
from lwmkit.pipelines.videos.workers import DEFAULT_TASK

if TYPE_CHECKING:
    from lwmkit.pipelines.dedup.entry import NearDedupOptions

# The video job's named stages, in order (what the manifest's counts are shown by).
STAGES = ("read", "text", "dedup", "download", "decode", "frames", "encode", "gather", "example")
WORK_DIR = "video-cache"


@dataclass(frozen=True)
class VideosOptions(VisionTextOptions):
    """Options of the video-text job.

    Attributes:
      inputs: file globs (local or any Beam filesystem) of `.parquet`, `.csv` or `.jsonl` lists.
      output, tokenizer, generation_fraction, seed, shard_tokens, pack: as in `ImagesOptions`
        (`images.options.VisionTextOptions`; generation_fraction: share of captioned videos).
      vqgan, vqgan_preset, vqgan_seed, vqgan_dtype, batch_size: the VQGAN, as in `ImagesOptions`
        (`engine.vqgan.VQGANOptions`; batch_size: frames per VQGAN call).
      seq_lens: packed record lengths to produce.
      templates: the three kinds' templates (see `video_examples`).
      sources: column names and whether absolute paths may be read.
      download: yt-dlp options, the work directory (None: `<output>/video-cache`), retries, limits.
      decode: frame sampling, decoders and decode worker settings.
      runner, direct_running_mode, direct_num_workers, progress, beam_args, force, retry_failures,
        keep_work: as in `BooksOptions` (a retried video that duplicates one already stored is not
        caught by dedup).
      decode_task, decode_python_path: what the decode workers run (tests swap in a crashing task).
      near_dedup: remove near-copies after the download, before decoding (pHash per frame and the
        clip rule; off by default, see docs/near-dedup.md); near_threshold: the share of aligned
        frames that must match for two clips to be near-copies. Recorded (and part of the work
        store's identity) only when near_dedup is on.
    """

    seq_lens: tuple[int, ...] = (32768,)
    templates: VideoTemplates = field(default_factory=VideoTemplates)
    sources: VideoSourceOptions = field(default_factory=VideoSourceOptions)
    download: VideoDownloadOptions = field(default_factory=VideoDownloadOptions)
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    decode_task: str = DEFAULT_TASK
    decode_python_path: tuple[str, ...] = ()
    near_threshold: float = 0.8

    def check_near_threshold(self) -> None:
        if not 0.0 < self.near_threshold <= 1.0:
            raise ValueError(f"near_threshold: {self.near_threshold} must be in (0, 1] (a share of frames)")

    @property
    def work_dir(self) -> str:
        return self.download.work_dir or join(self.output, WORK_DIR)

    def recorded(self) -> dict[str, Any]:
        """The options as the manifest records them (everything that shapes the output)."""
        d = recorded_options(self, not_recorded=("decode_task", "decode_python_path"), near_when_on=True)
        d["download"] = self.download.recorded()
        d["decode"] = self.decode.recorded()
        return d

    def near(self) -> NearDedupOptions | None:
        """The near-dedup stage's options, or None when it is off."""
        from lwmkit.pipelines.dedup.entry import NearDedupOptions  # Beam

        return NearDedupOptions("video", VideoHashConfig(clip_threshold=self.near_threshold)) if self.near_dedup else None


def check_time_ranges(options: VideosOptions) -> None:
    """Raises ValueError when `download.time_ranges` is on and ffmpeg, which cuts them, is missing."""
    if options.download.time_ranges and shutil.which("ffmpeg") is None:
        raise ValueError("download.time_ranges: yt-dlp cuts time ranges with ffmpeg, which is not installed")


def videos_summary_words(options: VideosOptions) -> tuple[str, str]:
    """What the job's first progress line calls its inputs, and how it ends (`engine.vqgan.vqgan_summary`)."""
    return "video lists", f"downloads in {options.work_dir}"


def complete_videos(options: VideosOptions) -> dict[str, Any] | None:
    """The manifest of a complete local output for `options`, answered without Beam, or None (run
    `run_videos`, which checks again, and refuses time ranges without ffmpeg):
    `engine.vqgan.complete_vqgan_job` with the job's input kinds and stages."""
    try:
        check_time_ranges(options)
    except ValueError:
        return None
    return complete_vqgan_job(options, source_kind, None, STAGES, *videos_summary_words(options))
