"""The VQGAN network in Flax (NHWC), with LWM's exact parameter tree so its weights load as they are.

Op for op the same as diffusers' `VQModel` in aMUSEd's configuration (and LWM's `lwm/vqgan.py`):
pre-norm residual blocks (GroupNorm, SiLU, 3x3 conv, twice; a 1x1 conv on the skip path when the
width changes), downsampling by zero-padding bottom/right by one and a 3x3 stride-2 VALID conv,
upsampling by nearest-neighbour doubling and a 3x3 conv, a mid block of two residual blocks and
no attention, 1x1 quant_conv / post_quant_conv, nearest code by squared L2, decoder output
clipped to [-1, 1].

Parameter tree (module names are what LWM's `nn.compact` auto-naming produces):
    encoder/Conv_0, encoder/DownsamplingBlock_{i}/ResnetBlock_{j}/{GroupNorm_0,Conv_0,GroupNorm_1,Conv_1,Conv_2},
    encoder/DownsamplingBlock_{i}/Downsample_0/Conv_0, encoder/MidBlock_0/ResnetBlock_{0,1},
    encoder/GroupNorm_0, encoder/Conv_1, quant_conv, quantize/embeddings, post_quant_conv,
    decoder/Conv_0, decoder/MidBlock_0, decoder/UpsamplingBlock_{k} (k=0 is the deepest level),
    decoder/UpsamplingBlock_{k}/Upsample_0/Conv_0, decoder/GroupNorm_0, decoder/Conv_1.

Example:
    >>> model = VQGANModel(VQGAN_PRESETS["tiny"])
    >>> codes = model.apply({"params": params}, images, method=VQGANModel.encode)  # [B,256,256,3] -> [B,16,16]
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from lwmkit.tokenizers.vqgan_config import VQGANConfig


def _precision(dtype: Any) -> Any:
    # Full fp32 on accelerators that would otherwise use TF32 for float32 convs; no-op on CPU.
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


class _Layers(nn.Module):
    """Shared conv and norm factories (dtype is the compute dtype; parameters stay float32)."""

    config: VQGANConfig
    dtype: Any = jnp.float32

    def conv(self, features: int, kernel: int, name: str, strides: int = 1, padding: Any = "SAME") -> nn.Conv:
        return nn.Conv(
            features,
            (kernel, kernel),
            strides=(strides, strides),
            padding=padding,
            dtype=self.dtype,
            precision=_precision(self.dtype),
            name=name,
        )

    def norm(self, name: str) -> nn.GroupNorm:
        return nn.GroupNorm(
            num_groups=self.config.norm_groups,
            epsilon=self.config.norm_eps,
            dtype=self.dtype,
            use_fast_variance=False,  # two-pass variance, as torch's GroupNorm
            name=name,
        )


class ResnetBlock(_Layers):
    out_channels: int | None = None

    @nn.compact
    def __call__(self, x):
        out = self.out_channels or x.shape[-1]
        h = self.conv(out, 3, "Conv_0")(nn.silu(self.norm("GroupNorm_0")(x)))
        h = self.conv(out, 3, "Conv_1")(nn.silu(self.norm("GroupNorm_1")(h)))
        if out != x.shape[-1]:
            x = self.conv(out, 1, "Conv_2")(x)
        return x + h


class Downsample(_Layers):
    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # [B, H+1, W+1, C]: torch's F.pad (0, 1, 0, 1)
        return self.conv(x.shape[-1], 3, "Conv_0", strides=2, padding="VALID")(x)


class Upsample(_Layers):
    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # [B, 2H, 2W, C] nearest
        return self.conv(x.shape[-1], 3, "Conv_0")(x)


class MidBlock(_Layers):
    @nn.compact
    def __call__(self, x):
        x = ResnetBlock(self.config, self.dtype, name="ResnetBlock_0")(x)
        return ResnetBlock(self.config, self.dtype, name="ResnetBlock_1")(x)


class DownsamplingBlock(_Layers):
    block_idx: int = 0

    @nn.compact
    def __call__(self, x):
        width = self.config.block_channels[self.block_idx]
        for j in range(self.config.num_res_blocks):
            x = ResnetBlock(self.config, self.dtype, width, name=f"ResnetBlock_{j}")(x)
        if self.block_idx != len(self.config.channel_mult) - 1:
            x = Downsample(self.config, self.dtype, name="Downsample_0")(x)
        return x


class UpsamplingBlock(_Layers):
    block_idx: int = 0

    @nn.compact
    def __call__(self, x):
        width = self.config.block_channels[self.block_idx]
        for j in range(self.config.num_res_blocks + 1):
            x = ResnetBlock(self.config, self.dtype, width, name=f"ResnetBlock_{j}")(x)
        if self.block_idx != 0:
            x = Upsample(self.config, self.dtype, name="Upsample_0")(x)
        return x


class Encoder(_Layers):
    @nn.compact
    def __call__(self, x):  # [B, R, R, 3] in [-1, 1]
        cfg = self.config
        x = self.conv(cfg.hidden_channels, 3, "Conv_0")(x)
        for i in range(len(cfg.channel_mult)):
            x = DownsamplingBlock(cfg, self.dtype, i, name=f"DownsamplingBlock_{i}")(x)
        x = MidBlock(cfg, self.dtype, name="MidBlock_0")(x)
        x = nn.silu(self.norm("GroupNorm_0")(x))
        return self.conv(cfg.z_channels, 3, "Conv_1")(x)  # [B, S, S, z]


class Decoder(_Layers):
    @nn.compact
    def __call__(self, x):  # [B, S, S, z]
        cfg = self.config
        x = self.conv(cfg.block_channels[-1], 3, "Conv_0")(x)
        x = MidBlock(cfg, self.dtype, name="MidBlock_0")(x)
        levels = len(cfg.channel_mult)
        for k, i in enumerate(reversed(range(levels))):
            x = UpsamplingBlock(cfg, self.dtype, i, name=f"UpsamplingBlock_{k}")(x)
        x = nn.silu(self.norm("GroupNorm_0")(x))
        return self.conv(3, 3, "Conv_1")(x)  # [B, R, R, 3]


class VectorQuantizer(nn.Module):
    """The codebook: nearest code by squared L2, and code -> vector lookup."""

    config: VQGANConfig

    def setup(self):
        cfg = self.config
        self.embeddings = self.param(
            "embeddings",
            nn.initializers.normal(stddev=cfg.codebook_init_std),
            (cfg.num_embeddings, cfg.embed_dim),
            jnp.float32,
        )

    def nearest(self, z):  # [..., D] -> [...] int32
        e = self.embeddings  # [N, D] float32
        z = z.astype(jnp.float32)
        # argmin_n |z - e_n|^2 = argmin_n (|e_n|^2 - 2 z.e_n): |z|^2 is the same for every n, and
        # leaving it out keeps the float32 differences between close codes from drowning in it.
        d = jnp.sum(e * e, axis=-1) - 2.0 * jnp.einsum("...d,nd->...n", z, e, precision=jax.lax.Precision.HIGHEST)
        return jnp.argmin(d, axis=-1).astype(jnp.int32)

    def lookup(self, codes):  # [...] int -> [..., D]
        return jnp.take(self.embeddings, codes, axis=0)


class VQGANModel(nn.Module):
    """Encoder + quantizer + decoder; `encode` gives codes, `decode` gives images in [-1, 1]."""

    config: VQGANConfig
    dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        self.encoder = Encoder(cfg, self.dtype)
        self.decoder = Decoder(cfg, self.dtype)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv(cfg.embed_dim, (1, 1), dtype=self.dtype, precision=_precision(self.dtype))
        self.post_quant_conv = nn.Conv(cfg.z_channels, (1, 1), dtype=self.dtype, precision=_precision(self.dtype))

    def encode(self, images):  # [B, R, R, 3] float in [-1, 1] -> [B, S, S] int32
        h = self.quant_conv(self.encoder(images.astype(self.dtype)))  # [B, S, S, D]
        return self.quantize.nearest(h)

    def decode(self, codes):  # [B, S, S] int -> [B, R, R, 3] float32 in [-1, 1]
        h = self.quantize.lookup(codes).astype(self.dtype)  # [B, S, S, D]
        out = self.decoder(self.post_quant_conv(h))
        return jnp.clip(out.astype(jnp.float32), -1.0, 1.0)

    def __call__(self, images):
        return self.decode(self.encode(images))
