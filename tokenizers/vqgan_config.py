"""The VQGAN's shape: a frozen config and its named presets ("lwm", the real network, and "tiny").

Imports neither JAX nor Flax, so a pipeline driver can validate a preset without loading them.

Example:
    >>> cfg = VQGAN_PRESETS["lwm"]
    >>> cfg.block_channels, cfg.codes_side
    ((128, 256, 256, 512, 768), 16)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class VQGANConfig:
    """Shape of a taming-style VQGAN (the network LWM and aMUSEd use), in LWM's terms.

    Each level has `num_res_blocks` residual blocks at width `hidden_channels * channel_mult[i]`;
    every level but the last halves the image (encoder) or doubles it (decoder), so
    `len(channel_mult) - 1` halvings take `resolution` down to `codes_side`. No attention anywhere.

    Args:
      hidden_channels: width of the first level.
      channel_mult: width multiplier per level.
      num_res_blocks: residual blocks per encoder level (the decoder has one more per level).
      z_channels: channels of the encoder output and decoder input.
      embed_dim: dimension of a codebook vector (the quant_conv output).
      num_embeddings: codebook size; codes are 0..num_embeddings-1.
      norm_groups: GroupNorm groups; must divide every level's width.
      norm_eps: GroupNorm epsilon.
      resolution: image side in pixels.
      codebook_init_std: stddev of the normal init of a random codebook (not LWM's U(-1/n, 1/n),
        which puts every code near 0 so that a random encoder maps nearly all pixels to a few codes).
    """

    hidden_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 4, 6)
    num_res_blocks: int = 2
    z_channels: int = 64
    embed_dim: int = 64
    num_embeddings: int = 8192
    norm_groups: int = 32
    norm_eps: float = 1e-6
    resolution: int = 256
    codebook_init_std: float = 0.3

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        for name in ("hidden_channels", "num_res_blocks", "z_channels", "embed_dim", "norm_groups", "resolution"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 65536:
                raise ValueError(f"{name} must be an int in [1, 65536], got {value!r}")
        if not 2 <= self.num_embeddings <= 2**24:
            raise ValueError(f"num_embeddings must be in [2, 16777216], got {self.num_embeddings}")
        if not 1 <= len(self.channel_mult) <= 8 or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must hold 1..8 multipliers >= 1, got {self.channel_mult}")
        for width in self.block_channels:
            if width % self.norm_groups:
                raise ValueError(
                    f"norm_groups must divide every level's width {self.block_channels}, got {self.norm_groups}"
                )
        step = 2 ** (len(self.channel_mult) - 1)
        if self.resolution % step:
            raise ValueError(f"resolution must be a multiple of {step} (2 ** downsamplings), got {self.resolution}")
        if not 0.0 < self.norm_eps < 1.0:
            raise ValueError(f"norm_eps must be in (0, 1), got {self.norm_eps}")
        if not 0.0 < self.codebook_init_std <= 100.0:
            raise ValueError(f"codebook_init_std must be in (0, 100], got {self.codebook_init_std}")

    @property
    def block_channels(self) -> tuple[int, ...]:
        """Width of each level, e.g. (128, 256, 256, 512, 768) for "lwm"."""
        return tuple(self.hidden_channels * m for m in self.channel_mult)

    @property
    def codes_side(self) -> int:
        """Side of the code grid: resolution / 2 ** (levels - 1)."""
        return self.resolution // 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VQGANConfig:
        """The inverse of `to_dict`; unknown keys raise ValueError naming them."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown VQGANConfig fields {unknown}; known: {sorted(known)}")
        kw = dict(d)
        if "channel_mult" in kw:
            kw["channel_mult"] = tuple(kw["channel_mult"])
        return cls(**kw)


# The compute dtypes `ImageTokenizer` runs in.
DTYPES = ("float32", "bfloat16")

VQGAN_PRESETS: dict[str, VQGANConfig] = {
    # LWM's lwm/vqgan.py defaults == aMUSEd's openMUSE/vqgan-f16-8192-laion: 256x256 -> 16x16.
    "lwm": VQGANConfig(),
    # Same topology (5 levels, 4 halvings, 8192 codes), narrow: fast on CPU in tests.
    "tiny": VQGANConfig(
        hidden_channels=16,
        channel_mult=(1, 1, 2, 2, 2),
        num_res_blocks=1,
        z_channels=8,
        embed_dim=8,
        norm_groups=8,
    ),
}


def preset_config(preset: str) -> VQGANConfig:
    """Looks a preset up by name.

    Raises:
      ValueError: for an unknown name, listing the valid ones.
    """
    try:
        return VQGAN_PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown VQGAN preset {preset!r}; valid: {sorted(VQGAN_PRESETS)}") from None
