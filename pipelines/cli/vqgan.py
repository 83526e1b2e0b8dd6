"""The command-line options of the jobs that run the VQGAN (`lwm-pack images`, `lwm-pack videos`).

Both jobs take the same VQGAN group; this module adds it to a parser and turns the parsed values
back into the options' fields, so the two commands cannot drift apart.

Example:
    add_vqgan_arguments(parser, "frames")         # --vqgan, --vqgan-preset, ..., --batch-size
    VideosOptions(..., **vqgan_option_values(args))
"""

from __future__ import annotations

import argparse
from typing import Any

from lwmkit.tokenizers.vqgan_config import DTYPES, VQGAN_PRESETS


def add_vqgan_arguments(parser: argparse.ArgumentParser, unit: str) -> None:
    """Adds the "image tokenizer" group; `unit` names what a batch holds ("images", "frames")."""
    g = parser.add_argument_group("image tokenizer")
    g.add_argument("--vqgan", help="VQGAN weights (lwmkit safetensors, diffusers VQModel, LWM pickle)")
    g.add_argument("--vqgan-preset", default="lwm", choices=sorted(VQGAN_PRESETS), help="the VQGAN's shape (default lwm)")
    g.add_argument("--vqgan-seed", type=int, default=0, help="seed of the random VQGAN without --vqgan")
    g.add_argument("--vqgan-dtype", default="float32", choices=list(DTYPES))
    g.add_argument("--batch-size", type=int, default=16, help=f"{unit} per VQGAN call")


def vqgan_option_values(args: argparse.Namespace) -> dict[str, Any]:
    """The job options' VQGAN fields from arguments `add_vqgan_arguments` added."""
    return {
        "vqgan": args.vqgan,
        "vqgan_preset": args.vqgan_preset,
        "vqgan_seed": args.vqgan_seed,
        "vqgan_dtype": args.vqgan_dtype,
        "batch_size": args.batch_size,
    }
