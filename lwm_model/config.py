"""The LWM model's configuration: one frozen dataclass and a table of size presets, tiny to 7B.

Sizes follow LWM's `LLAMA_STANDARD_CONFIGS` (LLaMA-2 shapes); the vision extension adds a separate
vision vocabulary (8448 = 8192 VQGAN codes + <eof> + <eov> + 254 unused) with its own embedding
and output head. RoPE theta is a field because LWM raises it with the context length
(`LWM_ROPE_THETA`).

Example:
    config = preset("7b", rope_theta=LWM_ROPE_THETA[1 << 20], attention_impl="ring")
    config.head_dim                         # 128
    dataclasses.replace(config, num_layers=2)   # validated again
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ATTENTION_IMPLS = ("dense", "ring")
FIXED_RING_LAYOUTS = ("contiguous", "zigzag", "striped")  # fixed permutations, the same for every row
ROW_RING_LAYOUTS = ("balanced",)  # chosen per row from its segment ids (lwmkit.lwm_model.balance)
RING_LAYOUTS = FIXED_RING_LAYOUTS + ROW_RING_LAYOUTS
LOSS_MIXES = ("lwm", "tokens")  # loss.py: LWM's per-modality mix, or one mean over all tokens
REMAT_POLICIES = (
    "none",
    "nothing_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "checkpoint_dots",
    "everything_saveable",
)
DTYPES = ("float32", "bfloat16", "float16")

# LWM's RoPE theta by context length (tokens): its progressive training stages.
LWM_ROPE_THETA = {1 << 15: 1e6, 1 << 17: 1e7, 1 << 18: 1e7, 1 << 19: 2.5e7, 1 << 20: 5e7}


@dataclass(frozen=True)
class LWMConfig:
    """Shape and behaviour of the LWM decoder.

    Attributes:
      vocab_size: text vocabulary (LLaMA-2: 32000).
      hidden_size, intermediate_size, num_layers, num_heads: LLaMA-2 shape.
      num_kv_heads: key/value heads for grouped-query attention; None = num_heads (LLaMA-2, LWM).
      max_sequence_length: positions must stay below this (RoPE tables are built up to it).
      rope_theta: RoPE base; LWM uses 1e4 (base) up to 5e7 (1M context, vision-language).
      rms_norm_eps: RMSNorm epsilon.
      initializer_range: stddev of the normal initialiser.
      tie_word_embeddings: text head shares the text embedding matrix.
      vision: whether the model has LWM's vision embedding and head (LWM-Text models do not).
      vision_vocab_size: size of the vision id space, codes first, then <eof>, <eov>.
      vision_codes: number of VQGAN codes; <eof> = vision_codes, <eov> = vision_codes + 1.
      frame_codes: codes per frame (16 x 16); a frame costs frame_codes + 1 tokens with its <eof>.
      scan_layers: stack layer parameters and run them with `nn.scan` (compiles once per model).
      remat_policy: rematerialisation of each layer (`jax.checkpoint_policies` name, or "none").
      attention_impl: "dense" (reference) or "ring" (RingAttention over the mesh's "sp" axis; with
        a mesh "ulysses" axis larger than 1, 2D: Ulysses all-to-alls around the ring).
      ring_layout: order of the sequence axis over the "sp" ring: "contiguous", a causal
        load-balancing "zigzag" / "striped", or "balanced" (chosen per packed row from its
        segment ids; needs the batch's token_index). Batches must arrive in it (`layout_batch`).
      ring_block_q, ring_block_k: RingAttention's block sizes within a device's chunk.
      dtype: compute dtype; param_dtype: parameter dtype.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None
    max_sequence_length: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    vision: bool = True
    vision_vocab_size: int = 8448
    vision_codes: int = 8192
    frame_codes: int = 256
    scan_layers: bool = True
    remat_policy: str = "nothing_saveable"
    attention_impl: str = "dense"
    ring_layout: str = "contiguous"
    ring_block_q: int = 512
    ring_block_k: int = 512
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self) -> None:
        positive = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "max_sequence_length",
            "vision_vocab_size",
            "vision_codes",
            "frame_codes",
            "ring_block_q",
            "ring_block_k",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LWMConfig.{name}={value!r}: must be an int >= 1")
        for name in ("rope_theta", "rms_norm_eps", "initializer_range"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LWMConfig.{name}={getattr(self, name)!r}: must be > 0")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"LWMConfig.hidden_size={self.hidden_size}: must be a multiple of num_heads={self.num_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"LWMConfig.head_dim={self.head_dim} (hidden_size / num_heads): must be even for RoPE"
            )
        kv = self.kv_heads
        if not isinstance(kv, int) or kv < 1 or self.num_heads % kv:
            raise ValueError(
                f"LWMConfig.num_kv_heads={self.num_kv_heads!r}: must divide num_heads={self.num_heads} (or be None)"
            )
        if self.vision_vocab_size < self.vision_codes + 2:
            raise ValueError(
                f"LWMConfig.vision_vocab_size={self.vision_vocab_size}: must be >= vision_codes + 2 "
                f"({self.vision_codes + 2}, room for <eof> and <eov>)"
            )
        choices = {
            "attention_impl": ATTENTION_IMPLS,
            "ring_layout": RING_LAYOUTS,
            "remat_policy": REMAT_POLICIES,
            "dtype": DTYPES,
            "param_dtype": DTYPES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"LWMConfig.{name}={getattr(self, name)!r}: must be one of {list(allowed)}"
                )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def eof_id(self) -> int:
        """Vision id of <eof>, the token that ends every frame but the last."""
        return self.vision_codes

    @property
    def eov_id(self) -> int:
        """Vision id of <eov>, the token that ends a vision field."""
        return self.vision_codes + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LWMConfig:
        """The inverse of `to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"LWMConfig: unknown fields {unknown}; known: {sorted(names)}")
        return cls(**values)


_SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_layers", "num_heads")
# name -> fields over the defaults (LLaMA-2 7B with LWM's vision extension).
PRESETS: dict[str, dict[str, Any]] = {
    # For tests and CPU runs: grouped-query attention, and LWM's vision vocabulary (8192 VQGAN codes,
    # <eof>=8192, <eov>=8193, 8448 rows), so the tiny model takes and makes images and video with
    # either VQGAN preset ("tiny" or "lwm": both have 8192 codes) and trains on lwmkit's vision shards.
    "tiny": dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_sequence_length=2048,
    ),
    # The small sizes: (hidden_size, intermediate_size, num_layers, num_heads), 2048 positions.
    **{
        name: dict(zip(_SIZE_FIELDS, size, strict=True), max_sequence_length=2048)
        for name, size in (
            ("debug", (256, 256, 2, 2)),
            ("200m", (1024, 2048, 14, 8)),
            ("1b", (2048, 5504, 22, 16)),
            ("3b", (3200, 8640, 26, 32)),
        )
    },
    "7b": dict(),
}


def preset(name: str, **overrides: Any) -> LWMConfig:
    """The named size preset with `overrides` applied (e.g. rope_theta, attention_impl).

    Raises:
      ValueError: for an unknown preset (listing the known ones) or an invalid field.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown LWM preset {name!r}; known: {list(PRESETS)}")
    return LWMConfig(**{**PRESETS[name], **overrides})
