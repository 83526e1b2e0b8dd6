"""`lwm-chat`: ask an LWM checkpoint about an image, a video or a text file, and stream the answer.

    lwm-chat --tokenizer tokenizer.model --vqgan vqgan.safetensors --preset 7b \\
        --checkpoint lwm_params --set rope_theta=5e7 --set max_sequence_length=131072 \\
        --media clip.mp4 --max-frames 8 --question "What is the video about?"
    lwm-chat --tokenizer tokenizer.model --checkpoint hf_llama_dir --text-file book.txt \\
        --question "Who wrote the letter?" --temperature 0 --mesh 1,1,1,-1

The prompt is LWM's vision chat layout (`lwmkit.lwm_model.prompts`); a video is sampled to
--max-frames frames by count (`eval.inference.media`), each frame VQGAN-encoded into one vision field. The
prompt is prefilled once (RingAttention over the mesh's "sp" axis, with Ulysses all-to-alls over
"ulysses" given a fifth --mesh size, when they shard the sequence) and the answer is decoded greedily (--temperature 0) or sampled, printed as it is generated.

This module also holds the model options `lwm-generate` shares: checkpoint (LWM msgpack, Orbax,
Hugging Face LLaMA, or seeded random weights for tests), config overrides, mesh, dtype, and the
checks that the checkpoint, the tokenizer and the VQGAN agree on their vocabularies.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from lwmkit.eval.inference.media import MediaError, read_frames, read_text
from lwmkit.eval.input_files import check_input_files
from lwmkit.packing.compile_cache import add_cache_argument, enable_compile_cache
from lwmkit.tokenizers.text import SentencePieceTokenizer, TokenizerError
from lwmkit.tokenizers.vision import NUM_CODES, vision_field
from lwmkit.tokenizers.vqgan import ImageTokenizer, WeightsError

CHECKPOINT_FORMATS = ("auto", "lwm", "orbax", "hf")


class ModelLoadError(ValueError):
    """A checkpoint cannot be used with the given tokenizer, VQGAN or options (the message says why)."""


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how to place it.

    Attributes:
      preset: an `lwm_model` size preset (ignored for Hugging Face checkpoints).
      checkpoint: a path, or None for seeded random weights (tests and benchmarks).
      checkpoint_format: "auto" (a directory with config.json = "hf", another directory = "orbax",
        a file = "lwm"), "lwm", "orbax" or "hf".
      overrides: LWMConfig fields over the preset (e.g. {"rope_theta": 5e7}).
      mesh: mesh sizes "dp,fsdp,tp,sp" or "dp,fsdp,tp,sp,ulysses" (one may be -1).
      num_devices: use the first N devices (default all).
      attention: "dense" or "ring"; None = "ring" when the mesh's sp x ulysses > 1.
      seed: seed of random weights.
    """

    preset: str = "7b"
    checkpoint: str | None = None
    checkpoint_format: str = "auto"
    overrides: dict[str, Any] = field(default_factory=dict)
    mesh: str = "1,-1,1,1"
    num_devices: int | None = None
    attention: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(
                f"ModelSpec.checkpoint_format={self.checkpoint_format!r}; allowed: {list(CHECKPOINT_FORMATS)}"
            )
        if self.attention not in (None, "dense", "ring"):
            raise ValueError(f"ModelSpec.attention={self.attention!r}; allowed: None, 'dense', 'ring'")
        if self.num_devices is not None and self.num_devices < 1:
            raise ValueError(f"ModelSpec.num_devices={self.num_devices}: must be >= 1")


def _format_of(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    if os.path.isdir(path):
        return "hf" if os.path.exists(os.path.join(path, "config.json")) else "orbax"
    return "lwm"


def check_vocabularies(config: Any, tokenizer: Any, image_tokenizer: Any = None, source: str = "model") -> None:
    """Raises ModelLoadError unless the model, the text tokenizer and (when given) the VQGAN agree.

    The text vocabulary must equal the tokenizer's size. For vision, the model needs a vision
    table whose codes are the VQGAN's codes, numbered as the vision field numbers them
    (<eof> = 8192, <eov> = 8193).
    """
    n = int(tokenizer.vocab_size)
    if config.vocab_size != n:
        raise ModelLoadError(
            f"{source}: the model's text vocabulary has {config.vocab_size} ids but the tokenizer "
            f"{getattr(tokenizer, 'name', '')} has {n}; use the tokenizer the checkpoint was trained with"
        )
    if image_tokenizer is None:
        return
    if not config.vision:
        raise ModelLoadError(f"{source}: a text-only model (no vision embedding or head) cannot take or make images")
    codes = int(image_tokenizer.config.num_embeddings)
    if config.vision_codes != codes or codes != NUM_CODES:
        raise ModelLoadError(
            f"{source}: the model has {config.vision_codes} vision codes (<eof>={config.eof_id}) but the VQGAN "
            f"{image_tokenizer.source} has {codes} and LWM's vision field numbers <eof> {NUM_CODES}; "
            f"set --set vision_codes={NUM_CODES} for a model built on LWM's VQGAN"
        )


def random_params(config: Any, seed: int = 0) -> Any:
    """Seeded random parameters drawn with numpy (no compilation; the same on every machine):
    normal(0, initializer_range) matrices and embeddings, RMSNorm kernels 1, as `init_params` draws them.
    """
    import jax
    from flax.traverse_util import flatten_dict, unflatten_dict
    from lwmkit.lwm_model.model import LWM, init_params

    dense = dataclasses.replace(config, attention_impl="dense")  # the same parameters, and no mesh needed
    shapes = flatten_dict(jax.eval_shape(lambda: init_params(LWM(dense), jax.random.key(0))), sep="/")
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in sorted(shapes.items()):
        if path.endswith(("norm/kernel", "ln_f/kernel")):
            out[path] = np.ones(leaf.shape, leaf.dtype)
        else:
            out[path] = (rng.standard_normal(leaf.shape, np.float32) * config.initializer_range).astype(leaf.dtype)
    return unflatten_dict(out, sep="/")


def load_model(spec: ModelSpec, tokenizer: Any, image_tokenizer: Any = None, log: Callable[[str], Any] = print):
    """Builds the mesh, loads (or draws) the parameters, checks vocabularies, and shards the parameters.

    Returns:
      (LWM module with its mesh, sharded params).

    Raises:
      ModelLoadError: a checkpoint that does not fit the preset, the tokenizer or the VQGAN.
    """
    import jax
    from flax.traverse_util import flatten_dict
    from lwmkit.lwm_model.checkpoint import (
        fit_params,
        read_lwm_params,
        restore_params,
        vocab_fields,
    )
    from lwmkit.lwm_model.config import preset
    from lwmkit.lwm_model.hf_llama import load_hf_llama
    from lwmkit.lwm_model.mesh import make_mesh, shard_params
    from lwmkit.lwm_model.model import LWM

    devices = jax.devices()[: spec.num_devices] if spec.num_devices else None
    try:
        mesh = make_mesh(spec.mesh, devices)
    except ValueError as e:
        raise ModelLoadError(str(e)) from e
    overrides = dict(spec.overrides)
    sequence_shards = mesh.shape["sp"] * mesh.shape["ulysses"]
    overrides.setdefault("attention_impl", spec.attention or ("ring" if sequence_shards > 1 else "dense"))
    source = spec.checkpoint or f"random {spec.preset} weights (seed {spec.seed})"
    try:
        if spec.checkpoint is None:
            log(f"no checkpoint: {source}, for tests and benchmarks only")
            overrides.setdefault("vocab_size", int(tokenizer.vocab_size))
            config = preset(spec.preset, **overrides)
            params = random_params(config, spec.seed)
        elif _format_of(spec.checkpoint, spec.checkpoint_format) == "hf":
            config, params = load_hf_llama(spec.checkpoint, **overrides)
        else:
            if _format_of(spec.checkpoint, spec.checkpoint_format) == "orbax":
                flat = flatten_dict(restore_params(spec.checkpoint), sep="/")  # host arrays, whatever mesh saved it
            else:
                flat = read_lwm_params(spec.checkpoint)
            config = preset(spec.preset, **{**vocab_fields(flat), **overrides})
            check_vocabularies(config, tokenizer, image_tokenizer, source)
            params = fit_params(flat, config, source)
    except (OSError, ValueError) as e:
        if isinstance(e, ModelLoadError):
            raise
        raise ModelLoadError(f"{source}: {e}") from e
    check_vocabularies(config, tokenizer, image_tokenizer, source)
    return LWM(config, mesh), shard_params(params, mesh)


def load_tokenizers(args: argparse.Namespace, vision: bool, log: Callable[[str], Any]):
    """(text tokenizer, VQGAN or None) from --tokenizer, --vqgan and --vqgan-preset."""
    tokenizer = SentencePieceTokenizer.from_file(args.tokenizer)
    if not vision:
        return tokenizer, None
    if args.vqgan:
        return tokenizer, ImageTokenizer.from_weights(args.vqgan, args.vqgan_preset, batch_size=args.vqgan_batch_size)
    log(f"no --vqgan: random {args.vqgan_preset} VQGAN weights, for tests only")
    key = (args.vqgan_preset, args.seed, args.vqgan_batch_size)
    if key not in _RANDOM_VQGANS:  # one per process: its compiled functions serve every later call
        _RANDOM_VQGANS[key] = ImageTokenizer.random(args.vqgan_preset, seed=args.seed, batch_size=args.vqgan_batch_size)
    return tokenizer, _RANDOM_VQGANS[key]


_RANDOM_VQGANS: dict[tuple[str, int, int], ImageTokenizer] = {}


def _override(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set {item!r}: expected KEY=VALUE, e.g. rope_theta=5e7")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare string such as remat_policy=none


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The options every inference command shares (see `ModelSpec`)."""
    g = p.add_argument_group("model")
    g.add_argument("--tokenizer", required=True, help="SentencePiece .model of the checkpoint")
    g.add_argument("--checkpoint", help="LWM params (msgpack), an Orbax dir or a Hugging Face LLaMA dir; "
                   "absent: random weights (tests only)")  # fmt: skip
    g.add_argument("--checkpoint-format", default="auto", choices=CHECKPOINT_FORMATS)
    g.add_argument("--preset", default="7b", help="lwm_model size preset (tiny, debug, 200m, 1b, 3b, 7b)")
    g.add_argument("--set", dest="overrides", action="append", type=_override, default=[], metavar="KEY=VALUE",
                   help="LWMConfig field over the preset (JSON value), e.g. rope_theta=5e7; repeatable")  # fmt: skip
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="compute dtype (default the config's)")
    g.add_argument("--vqgan", help="VQGAN weights (lwmkit safetensors, diffusers VQModel or LWM pickle)")
    g.add_argument("--vqgan-preset", default="lwm", choices=["lwm", "tiny"], help="VQGAN shape; random without --vqgan")
    g.add_argument("--vqgan-batch-size", type=int, default=8, help="frames the VQGAN encodes or decodes at once")
    g.add_argument("--mesh", default="1,-1,1,1",
                   help="mesh sizes dp,fsdp,tp,sp (LWM's mesh_dim) or dp,fsdp,tp,sp,ulysses (2D sequence parallelism: "
                        "a ring of sp over Ulysses groups; the heads per tp shard must divide by ulysses)")
    g.add_argument("--num-devices", type=int, help="use the first N devices (default all)")
    g.add_argument("--attention", choices=["dense", "ring"], help="default: ring when the mesh's sp x ulysses > 1")
    g.add_argument("--seed", type=int, default=1234, help="sampling seed (LWM's default), and random weights' seed")
    add_cache_argument(g)


def model_input_files(args: argparse.Namespace) -> list[tuple[str, str | None, str]]:
    """The model options' input files, as `input_files.check_input_files` takes them."""
    return [("--tokenizer", args.tokenizer, "file"), ("--vqgan", args.vqgan, "any"),
            ("--checkpoint", args.checkpoint, "any")]  # fmt: skip


def model_spec(args: argparse.Namespace) -> ModelSpec:
    overrides = dict(args.overrides)
    if args.dtype:
        overrides["dtype"] = args.dtype
    return ModelSpec(
        preset=args.preset, checkpoint=args.checkpoint, checkpoint_format=args.checkpoint_format,
        overrides=overrides, mesh=args.mesh, num_devices=args.num_devices, attention=args.attention, seed=args.seed,
    )  # fmt: skip


def chat_prompt(tokenizer: Any, question: str, *, media: str | None = None, text_file: str | None = None,
                image_tokenizer: Any = None, max_frames: int = 8):  # fmt: skip
    """The chat prompt (a `TokenSeq`): over an image or video file (VQGAN-encoded), a text file, or nothing.

    Raises:
      MediaError: an unreadable file; ValueError: media without a VQGAN, or both media and text.
    """
    from lwmkit.lwm_model.prompts import TokenSeq, text_chat_prompt, vision_chat_prompt

    if media and text_file:
        raise ValueError("give --media or --text-file, not both")
    if media:
        if image_tokenizer is None:
            raise ValueError("a media prompt needs a VQGAN (image_tokenizer)")
        codes = image_tokenizer.encode(read_frames(media, max_frames))  # [F, 16, 16]
        return vision_chat_prompt(tokenizer, question, TokenSeq(*vision_field(codes, tokenizer)))
    return text_chat_prompt(tokenizer, question, read_text(text_file) if text_file else "")


class TextStream:
    """Turns token ids arriving in pieces into text pieces (decoding the whole answer each time, so
    words split over pieces come out right; an incomplete UTF-8 character is held back)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer, self.ids, self.text = tokenizer, [], ""

    def push(self, ids: Sequence[int]) -> str:
        self.ids += [int(i) for i in ids]
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.text = text[len(self.text) :], text
        return new

    def flush(self) -> str:
        """What is still held back (an answer may end inside a character: it decodes to U+FFFD)."""
        text = self.tokenizer.decode(self.ids)
        new, self.text = text[len(self.text) :], text
        return new


def chat(model: Any, params: Any, tokenizer: Any, prompt: Any, *, settings: Any, rng: Any = None,
         write: Callable[[str], Any] | None = None, chunk: int = 16) -> str:  # fmt: skip
    """Streams the answer to `prompt` (a TokenSeq) through `write` and returns it (up to EOS).

    Args:
      settings: an `lwm_model.generate.SamplingConfig` (text mode; eos_id ends the answer).
    """
    from lwmkit.lwm_model.chat import prompt_batch, stream_generate

    stream = TextStream(tokenizer)
    for piece in stream_generate(model, params, prompt_batch(model, [prompt]), settings, rng, chunk=chunk):
        ids = piece[0].tolist()
        if settings.eos_id is not None and settings.eos_id in ids:
            ids = ids[: ids.index(settings.eos_id)]
        text = stream.push(ids)
        if write and text:
            write(text)
    text = stream.flush()
    if write and text:
        write(text)
    return stream.text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lwm-chat", description="Chat with an LWM checkpoint about an image, a video or a text."
    )
    p.add_argument("--question", required=True)
    p.add_argument("--media", help="an image or video file (a video is sampled to --max-frames frames)")
    p.add_argument("--text-file", help="a UTF-8 document to ask about")
    p.add_argument("--max-frames", type=int, default=8, help="frames kept from a video (LWM's max_n_frames)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.2, help="0 = greedy (LWM's chat default: 0.2)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--chunk", type=int, default=16, help="tokens decoded between outputs")
    add_model_arguments(p)
    return p


def run_command(prog: str, body: Callable[[Callable[[str], None]], int]) -> int:
    """Runs a model command's `body(log)` (`log` prints "<prog>: message" to stderr); an error the
    user can act on (a model, media, tokenizer, weights or value error) is logged and returns 1."""

    def log(msg: str) -> None:
        print(f"{prog}: {msg}", file=sys.stderr)

    try:
        return body(log)
    except (ModelLoadError, MediaError, TokenizerError, WeightsError, ValueError) as e:
        log(f"error: {e}")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `lwm-chat`: prints the answer as it is generated; 0 on success, 1 on an error."""
    args = _parser().parse_args(argv)
    return run_command("lwm-chat", lambda log: _chat(args, log))


def _chat(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    if args.media and args.text_file:
        raise ValueError("give --media or --text-file, not both")
    check_input_files([*model_input_files(args), ("--media", args.media, "file"),
                       ("--text-file", args.text_file, "file")])  # before JAX and the model load
    enable_compile_cache(args.jax_cache, export=True)
    import jax
    from lwmkit.lwm_model.generate import SamplingConfig

    tokenizer, image_tokenizer = load_tokenizers(args, bool(args.media), log)
    model, params = load_model(model_spec(args), tokenizer, image_tokenizer, log)
    prompt = chat_prompt(tokenizer, args.question, media=args.media, text_file=args.text_file,
                         image_tokenizer=image_tokenizer, max_frames=args.max_frames)  # fmt: skip
    log(f"prompt: {len(prompt)} tokens ({int(prompt.vision_mask.sum())} vision)")
    settings = SamplingConfig(args.max_new_tokens, "text", args.temperature, args.top_k, args.top_p,
                              int(tokenizer.eos_id), int(tokenizer.eos_id))  # fmt: skip

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    chat(model, params, tokenizer, prompt, settings=settings, rng=jax.random.key(args.seed), write=write,
         chunk=args.chunk)  # fmt: skip
    write("\n")
    return 0
