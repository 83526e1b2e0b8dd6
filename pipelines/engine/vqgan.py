"""The VQGAN step of the jobs that encode pixels (images, videos), and what those jobs share around it.

The VQGAN runs in Beam RunInference with `inference.JaxModelHandler`; `LoadEncoder` builds it in
the worker (JAX imported only there) and checks it is the one the driver fingerprinted. `join_codes`
turns RunInference's results back into records with checked codes. Around the step:
`VQGANOptions` (the options every such job shares, checked by `check_vqgan_fields`), `token_dtype`, and `prepare_vqgan_job`, which
reads the tokenizer, fingerprints the VQGAN into the job record (`vqgan_job`) and binds a job's
`build_pipeline`.

Example (inside a job's build_pipeline, `options` a `VQGANOptions`):
    encoded = encode_stage(stage, decoded, options, vqgan_sha256)
    # = stage(encode_images(decoded, options.load_encoder(sha256), options.batch_size), "encode", join_codes)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from lwmkit.pipelines.engine import runner as runner_lib
from lwmkit.pipelines.engine.drops import Dropped
from lwmkit.pipelines.engine.inputs import local_inputs, read_tokenizer
from lwmkit.pipelines.engine.job_options import check_choices, check_ranges
from lwmkit.pipelines.engine.lifecycle import (
    PreparedJob,
    answer_complete,
    job_record,
    may_answer_complete,
    print_warnings,
)
from lwmkit.tokenizers import vqgan_config
from lwmkit.tokenizers.text import SentencePieceTokenizer
from lwmkit.tokenizers.vision import CODE_GRID, IMAGE_SIZE, NUM_CODES, VISION_VOCAB_SIZE

if TYPE_CHECKING:
    from lwmkit.pipelines.engine.stages import StageList

VQGAN_PRESETS = tuple(vqgan_config.VQGAN_PRESETS)  # from the config module: no JAX import here
VQGAN_DTYPES = vqgan_config.DTYPES


def check_vqgan_fields(options: Any) -> None:
    """Raises ValueError naming the field for a bad VQGAN preset, dtype, generation share or batch
    size: the fields the image and video jobs share."""
    check_choices(options, vqgan_preset=VQGAN_PRESETS, vqgan_dtype=VQGAN_DTYPES)
    check_ranges(options, generation_fraction="[0, 1]", batch_size="1..4096")


@dataclass(frozen=True, kw_only=True)
class VQGANOptions(runner_lib.ResumeOptions):
    """`ResumeOptions` of a job that runs the VQGAN (images, videos, video-QA), with the VQGAN's fields.

    A job's options class derives from it (keyword-only fields, after the job's own) and calls
    `super().__post_init__()`, which runs `check_vqgan_fields`.

    Attributes:
      vqgan: VQGAN weights (`ImageTokenizer.from_weights`: lwmkit safetensors, LWM's pickle or a
        diffusers VQModel); None initialises `vqgan_preset` randomly (tests, benchmarks; the
        manifest says so).
      vqgan_preset: the VQGAN's shape, 'lwm' or 'tiny'.
      vqgan_seed: seed of the random initialisation when `vqgan` is None.
      vqgan_dtype: the VQGAN's compute dtype, 'float32' or 'bfloat16' (accelerators).
      batch_size: images (or frames) per VQGAN call (RunInference batch).
    """

    vqgan: str | None = None
    vqgan_preset: str = "lwm"
    vqgan_seed: int = 0
    vqgan_dtype: str = "float32"
    batch_size: int = 16

    def __post_init__(self):
        check_vqgan_fields(self)
        super().__post_init__()

    def load_encoder(self, sha256: str) -> LoadEncoder:
        """RunInference's `load()` of this VQGAN, checked against the driver's fingerprint `sha256`."""
        return LoadEncoder(self.vqgan, self.vqgan_preset, self.vqgan_seed, self.vqgan_dtype, sha256)


def token_dtype(text_vocab_size: int) -> str:
    """The compact dtype of a payload's tokens: both id spaces must fit."""
    return "<u2" if max(text_vocab_size, VISION_VOCAB_SIZE) <= 1 << 16 else "<i4"


def random_init_warning(preset: str) -> str:
    return (
        f"no --vqgan weights given: the VQGAN ({preset} preset) is RANDOMLY INITIALISED; its codes are "
        "meaningless for training (fine for tests and benchmarks). The manifest records vqgan.random_init=true."
    )


def vqgan_job(options: Any, files: list[str], tokenizer: SentencePieceTokenizer, *,
              warn: bool = True) -> tuple[dict[str, Any], str]:
    """The job record of a job that runs the VQGAN (images, videos), and the VQGAN's sha256.

    Builds the VQGAN once here for its fingerprint (workers build their own; no JAX is needed for
    it); new weights at the same path change the recorded options, so the output is rebuilt.
    Random weights put a warning in the record (`warnings`), and on stderr unless not `warn`.
    """
    image_tokenizer = image_tokenizer_of(options.vqgan, options.vqgan_preset, options.vqgan_seed, options.vqgan_dtype)
    vqgan = {**image_tokenizer.fingerprint(), "path": options.vqgan}
    del image_tokenizer
    job = job_record(
        {**options.recorded(), "vqgan_sha256": vqgan["sha256"]},
        files,
        {**tokenizer.fingerprint(), "path": options.tokenizer},
        runner_lib.describe(options.runner, options.direct_running_mode),
    )
    job["vqgan"] = vqgan
    if vqgan.get("random_init"):
        job["warnings"] = [random_init_warning(options.vqgan_preset)]
        if warn:
            print_warnings(job)
    return job, vqgan["sha256"]


def vqgan_summary(options: Any, files: list[str], tokenizer: SentencePieceTokenizer, job: dict[str, Any], what: str,
                  where: str) -> str:
    """The first progress line of a job that runs the VQGAN: `what` names the inputs, `where` ends it
    (default: the runner)."""
    return (f"{len(files)} {what}; tokenizer {tokenizer.name} ({tokenizer.vocab_size} pieces); "
            f"VQGAN {options.vqgan or 'random ' + options.vqgan_preset}; {where or 'runner ' + job['runner']}")


def prepare_vqgan_job(
    options: Any, files: list[str], build_pipeline: Callable, stages: tuple[str, ...], what: str, where: str
) -> PreparedJob:
    """The `PreparedJob` of a job that runs the VQGAN (images, videos) over `files`.

    Reads the tokenizer, fingerprints the VQGAN into the job record (`vqgan_job`), and binds
    `build_pipeline(p, options, files, tokenizer, vqgan_sha256, job, receipts, retried)`.
    `what` names the inputs and `where` ends the progress line (`vqgan_summary`).
    """
    from lwmkit.packing.compile_cache import enable_compile_cache

    tokenizer = read_tokenizer(options.tokenizer)
    enable_compile_cache()  # in the driver too (a bad LWMKIT_JAX_CACHE fails here, before the job runs)
    job, vqgan_sha256 = vqgan_job(options, files, tokenizer)

    def build(p, receipts=(), retried=None):
        return build_pipeline(p, options, files, tokenizer, vqgan_sha256, job, receipts, retried)

    return PreparedJob(
        files=files,
        job=job,
        build=build,
        stages=stages,
        summary=vqgan_summary(options, files, tokenizer, job, what, where),
    )


def complete_vqgan_job(options: Any, kind: Callable[[str], Any], expand: Callable[[str], str] | None,
                       stages: Sequence[str], what: str, where: str,
                       extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest of a complete local output of a job that runs the VQGAN, answered before Beam
    and JAX load, or None (the job's `run_<job>` then runs and checks again).

    It matches the inputs as the job's `match_inputs` would (`engine.inputs.local_inputs` with the
    job's `kind` and `expand`), reads the tokenizer, fingerprints the VQGAN and asks
    `lifecycle.answer_complete` with the record `prepare_vqgan_job` builds (`vqgan_job`, plus
    `extra` entries the job adds), logging what `launch` logs (`vqgan_summary` with `what` and
    `where`, the job's `stages`). None for object-store paths, a missing input, tokenizer or VQGAN
    file, or anything else it cannot be sure of.
    """
    if not may_answer_complete(options) or "://" in options.tokenizer:
        return None  # first: a first run lists no inputs and reads no tokenizer or VQGAN twice
    files = local_inputs(options.inputs, kind, expand)
    if files is None:
        return None
    try:
        tokenizer = read_tokenizer(options.tokenizer)
        job, _ = vqgan_job(options, files, tokenizer, warn=False)  # answer_complete warns if it answers
    except (OSError, ValueError):
        return None
    summary = vqgan_summary(options, files, tokenizer, job, what, where)
    return answer_complete(options, {**job, **(extra or {})}, summary, stages)


def image_tokenizer_of(vqgan: str | None, preset: str, seed: int, dtype: str = "float32"):
    """`ImageTokenizer.from_weights(vqgan, preset)`, or a random one of `preset` when vqgan is None
    (numpy parameters: no JAX)."""
    from lwmkit.tokenizers.vqgan import ImageTokenizer

    if vqgan is None:
        return ImageTokenizer.random(preset, seed=seed, dtype=dtype)
    return ImageTokenizer.from_weights(vqgan, preset=preset, dtype=dtype)


def load_image_tokenizer(vqgan: str | None, preset: str, seed: int, dtype: str = "float32"):
    """`image_tokenizer_of`, in a process whose JAX compiles with lwmkit's persistent cache."""
    from lwmkit.packing.compile_cache import enable_compile_cache

    enable_compile_cache()  # here, in the driver and in every worker: the VQGAN compiles once per machine
    return image_tokenizer_of(vqgan, preset, seed, dtype)


@dataclass(frozen=True)
class LoadEncoder:
    """RunInference's `load()`: builds the VQGAN in the worker and checks it is the driver's.

    Its apply takes uint8 pixels [B, 256, 256, 3] and scales them on the device (x / 127.5 - 1, as
    `tokenizers.vision.to_model_input`), so a batch crosses to the device at a quarter of the size.
    """

    vqgan: str | None
    preset: str
    seed: int
    dtype: str
    sha256: str

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
    from lwmkit.pipelines.engine.inference import JaxModelHandler

    handler = JaxModelHandler(
        load,
        batch_size=batch_size,
        example_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        example_dtype=np.uint8,
        name="vqgan",
        jit=False,  # LoadEncoder compiles it with the VQGAN's own compiler options
    )
    return pairs | "vqgan" >> RunInference(KeyedModelHandler(handler))


def encode_stage(stage: StageList, images, options: VQGANOptions, sha256: str):
    """The stage "encode": the VQGAN over (record, uint8 pixels) in batches (`encode_images`), its
    results checked and joined back to their records (`join_codes`)."""
    return stage(encode_images(images, options.load_encoder(sha256), options.batch_size), "encode", join_codes)


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
