"""The image-text job's options and the job record they make, without Beam: what `lwm-pack images`
needs to answer a rerun over a complete local output before Beam loads (`complete_images`), and
`VisionTextOptions`, the fields the image and video jobs share.

`prepare_images` (job.py) and `complete_images` build the job record with the same
`engine.vqgan.vqgan_job`, so the quick answer and the full launch compare the same identity with the
output's manifest.

Example:
    options = ImagesOptions(inputs=("shards/*.tar",), output="out", tokenizer="tokenizer.model")
    complete_images(options)   # -> the job manifest if out/ is complete for them, else None
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from lwmkit.pipelines.dedup.images import ImageHashConfig
from lwmkit.pipelines.engine.job_options import check_packing_fields, recorded_options
from lwmkit.pipelines.engine.vqgan import VQGANOptions, complete_vqgan_job
from lwmkit.pipelines.engine.web.url_guard import DownloadOptions
from lwmkit.pipelines.examples.vision_text import Templates
from lwmkit.pipelines.images.sources import SourceOptions, expand_input, source_kind
from lwmkit.pipelines.writing.plan import PackOptions
from lwmkit.tokenizers.vision import ImageOptions

if TYPE_CHECKING:
    from lwmkit.pipelines.dedup.entry import NearDedupOptions

# The image job's named stages, in order (what the manifest's counts are shown by).
STAGES = ("read", "caption", "download", "dedup", "decode", "encode", "example")


@dataclass(frozen=True, kw_only=True)
class VisionTextOptions(VQGANOptions):
    """`VQGANOptions` of a job that makes understanding and generation examples from pixels and
    their captions (images, videos), with the fields both jobs share. A job's options class adds
    `seq_lens`, `templates`, `sources`, `download` and `near_threshold` (their defaults and types
    differ), checks its threshold in `check_near_threshold`, and names its inputs in `INPUTS`.

    Attributes:
      inputs: file globs (local or any Beam filesystem).
      output: output directory.
      tokenizer: path of a SentencePiece `.model` file (the text tokenizer).
      generation_fraction: share of captioned records made generation examples (the rest: understanding).
      seed: seed of the per-record understanding/generation choice.
      shard_tokens: target tokens per shard file; pack: how examples are cut, packed and weighted.
      near_dedup: remove near-copies after exact dedup (off by default, see docs/near-dedup.md).
    """

    INPUTS: ClassVar[str] = "file or glob"  # what an --input names, in the error for none

    inputs: tuple[str, ...]
    output: str
    tokenizer: str
    generation_fraction: float = 0.5
    seed: int = 0
    shard_tokens: int = 1 << 24
    pack: PackOptions = field(default_factory=PackOptions)
    near_dedup: bool = False

    def __post_init__(self):
        if not self.inputs:
            raise ValueError(f"inputs: give at least one {self.INPUTS}")
        self.check_near_threshold()
        check_packing_fields(self.seq_lens, self.shard_tokens)
        super().__post_init__()

    def check_near_threshold(self) -> None:
        """Raises ValueError naming `near_threshold` when it is outside the job's range."""
        raise NotImplementedError


@dataclass(frozen=True)
class ImagesOptions(VisionTextOptions):
    """Options of the image-text job.

    Attributes:
      inputs: file globs (local or any Beam filesystem): `.tar`/`.tar.gz`/`.tgz` webdataset shards,
        `.parquet` (image bytes or URLs with captions), captions `.jsonl` files or their folders.
      output, tokenizer, generation_fraction, seed, shard_tokens, pack: `VisionTextOptions`.
      vqgan, vqgan_preset, vqgan_seed, vqgan_dtype, batch_size: the VQGAN (`engine.vqgan.VQGANOptions`;
        batch_size: images per VQGAN call).
      seq_lens: packed record lengths to produce.
      templates: the two prompt templates (see `image_examples`).
      sources: column names of parquet / jsonl inputs and the image size cap.
      images: how `load_image` treats small, huge, animated images.
      download: timeouts, retries and size cap of URL inputs.
      runner, direct_running_mode, direct_num_workers, progress, beam_args, force, retry_failures,
        keep_work: as in `BooksOptions` (with `retry_failures`, only the pairs of the earlier run's
        failures.jsonl are read, downloaded and encoded again; a retried pair that duplicates one
        already stored is not caught by dedup).
      near_dedup: remove near-copies after exact dedup, before decoding (64-bit pHash; off by
        default, see docs/near-dedup.md); near_threshold: the Hamming distance (bits of 64) at or
        below which two images are near-copies. Recorded (and part of the work store's identity)
        only when near_dedup is on.
    """

    INPUTS: ClassVar[str] = "file, folder or glob"

    seq_lens: tuple[int, ...] = (8192,)
    templates: Templates = field(default_factory=Templates)
    sources: SourceOptions = field(default_factory=SourceOptions)
    images: ImageOptions = field(default_factory=ImageOptions)
    download: DownloadOptions = field(default_factory=DownloadOptions)
    near_threshold: int = 12

    def check_near_threshold(self) -> None:
        if not 0 <= self.near_threshold < 32:
            raise ValueError(f"near_threshold: {self.near_threshold} must be in 0..31 (Hamming bits of 64)")

    def recorded(self) -> dict[str, Any]:
        """The options as the manifest records them (everything that shapes the output)."""
        d = recorded_options(self, near_when_on=True)
        d["download"].pop("user_agent")
        d["download"].pop("ca_bundle")  # where trust comes from, not what is made
        return d

    def near(self) -> NearDedupOptions | None:
        """The near-dedup stage's options, or None when it is off."""
        from lwmkit.pipelines.dedup.entry import NearDedupOptions  # Beam

        return NearDedupOptions("image", ImageHashConfig(max_distance=self.near_threshold)) if self.near_dedup else None


def images_summary_words(options: ImagesOptions) -> tuple[str, str]:
    """What the job's first progress line calls its inputs, and how it ends (`engine.vqgan.vqgan_summary`)."""
    return "input files", ""


def complete_images(options: ImagesOptions) -> dict[str, Any] | None:
    """The manifest of a complete local output for `options`, answered without Beam, or None (run
    `run_images`, which checks again): `engine.vqgan.complete_vqgan_job` with the job's input kinds,
    the way `match_inputs` (job.py) expands a folder, and its stages."""
    return complete_vqgan_job(options, source_kind, expand_input, STAGES, *images_summary_words(options))
