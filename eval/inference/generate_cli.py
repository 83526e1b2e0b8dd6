"""`lwm-generate`: text to image (PNG) or video (MP4) with an LWM checkpoint, classifier-free guided.

    lwm-generate --tokenizer tokenizer.model --vqgan vqgan.safetensors --preset 7b \\
        --checkpoint lwm_params --set rope_theta=5e7 --set max_sequence_length=32768 \\
        --prompt "Fireworks over the city" --output fireworks.png
    lwm-generate ... --prompt "Fireworks over the city" --output fireworks.mp4 --frames 8

LWM's procedure and defaults (`lwm/vision_generation.py`, scripts/run_sample_*.sh): the first
frame from "Generate an image of ..." with the image settings (CFG scale 5, temperature 1,
top-k 8192), the other frames from "Generate a video of ..." after that frame with the video
settings (CFG scale 1, temperature 1, top-k 1000); <s><vision> is the unconditional prompt; an
<eof> is forced every 257 tokens. The codes are decoded by the VQGAN and written as PNG/JPEG
(one frame) or MP4 (4 fps by default, as LWM writes). Model options are `lwm-chat`'s.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from lwmkit.eval.inference.chat_cli import (
    add_model_arguments,
    load_model,
    load_tokenizers,
    model_input_files,
    model_spec,
    run_command,
)
from lwmkit.eval.inference.media import MediaError, write_png, write_video
from lwmkit.eval.input_files import check_input_files, check_output_folder
from lwmkit.packing.compile_cache import enable_compile_cache

IMAGE_OUTPUTS = (".png", ".jpg", ".jpeg")
VIDEO_OUTPUTS = (".mp4",)


def output_kind(path: str, frames: int) -> str:
    """"image" or "video" for an output path, checked against the frame count.

    Raises:
      ValueError: an unknown extension, or an image file asked for more than one frame.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_OUTPUTS:
        return "video"
    if ext in IMAGE_OUTPUTS:
        if frames != 1:
            raise ValueError(f"{path}: an image holds one frame, --frames is {frames}; write .mp4 for a video")
        return "image"
    raise ValueError(f"{path}: unknown output type {ext!r}; allowed: {list(IMAGE_OUTPUTS + VIDEO_OUTPUTS)}")


def generate_media(model: Any, params: Any, tokenizer: Any, image_tokenizer: Any, prompt: str, frames: int = 1,
                   *, image: Any = None, video: Any = None, rng: Any = None) -> np.ndarray:  # fmt: skip
    """Pixels of one generated image or video: uint8 [frames, 256, 256, 3].

    Args:
      image, video: `GuidanceConfig`s of the first frame and the others (default LWM's).
    """
    from lwmkit.lwm_model.prompts import generation_prompt, unconditional_prompt
    from lwmkit.lwm_model.vision_generate import IMAGE_GUIDANCE, VIDEO_GUIDANCE, generate_frames

    codes = generate_frames(
        model, params, [generation_prompt(tokenizer, prompt, "image")], unconditional_prompt(tokenizer), frames,
        video_prompts=[generation_prompt(tokenizer, prompt, "video")] if frames > 1 else None,
        image=image or IMAGE_GUIDANCE, video=video or VIDEO_GUIDANCE, rng=rng,
    )  # fmt: skip
    return image_tokenizer.decode(codes[0])  # [frames, 256, 256, 3]


def write_media(path: str, pixels: np.ndarray, fps: int = 4) -> None:
    """PNG/JPEG for one frame, MP4 otherwise (by the extension)."""
    if output_kind(path, len(pixels)) == "video":
        write_video(path, pixels, fps)
    elif path.lower().endswith(".png"):
        write_png(path, pixels[0])
    else:
        from PIL import Image

        try:
            Image.fromarray(pixels[0]).save(path, format="JPEG", quality=95)
        except OSError as e:
            raise MediaError(f"{path}: cannot write: {e}") from e


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lwm-generate", description="Text to image or video with an LWM checkpoint.")
    p.add_argument("--prompt", required=True, help="what to draw, e.g. 'Fireworks over the city'")
    p.add_argument("--output", required=True, help=".png/.jpg (one frame) or .mp4")
    p.add_argument("--frames", type=int, default=1, help="frames to generate (1 = an image)")
    p.add_argument("--fps", type=int, default=4, help="MP4 frame rate (LWM: 4)")
    for kind, scale, top_k in (("image", 5.0, 8192), ("video", 1.0, 1000)):
        p.add_argument(f"--cfg-scale-{kind}", type=float, default=scale, help=f"CFG scale of the {kind} stage")
        p.add_argument(f"--temperature-{kind}", type=float, default=1.0, help="0 = greedy")
        p.add_argument(f"--top-k-{kind}", type=int, default=top_k, help="0 = all codes")
    add_model_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `lwm-generate`: writes --output; 0 on success, 1 on an error."""
    args = _parser().parse_args(argv)
    return run_command("lwm-generate", lambda log: _generate(args, log))


def _generate(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    output_kind(args.output, args.frames)
    check_input_files(model_input_files(args))  # before JAX and the model load
    check_output_folder("--output", args.output)
    enable_compile_cache(args.jax_cache, export=True)
    import jax
    from lwmkit.lwm_model.vision_generate import GuidanceConfig

    image = GuidanceConfig(args.cfg_scale_image, args.temperature_image, args.top_k_image)
    video = GuidanceConfig(args.cfg_scale_video, args.temperature_video, args.top_k_video)
    tokenizer, image_tokenizer = load_tokenizers(args, True, log)
    model, params = load_model(model_spec(args), tokenizer, image_tokenizer, log)
    pixels = generate_media(model, params, tokenizer, image_tokenizer, args.prompt, args.frames,
                            image=image, video=video, rng=jax.random.key(args.seed))  # fmt: skip
    write_media(args.output, pixels, args.fps)
    print(f"wrote {args.output}: {len(pixels)} frame(s) of {pixels.shape[2]}x{pixels.shape[1]}")
    return 0
