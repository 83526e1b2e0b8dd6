"""The image tokenizer: LWM's VQGAN (aMUSEd's network) in Flax, 256x256 RGB <-> 16x16 codes.

`ImageTokenizer` holds numpy parameters and builds its jitted functions lazily, once per process,
so it pickles without JAX state (a Beam worker rebuilds them). Importing this module does not
import JAX. Weights come from `ImageTokenizer.random` (seeded, reproducible) or
`ImageTokenizer.from_weights` (lwmkit safetensors, aMUSEd's diffusers VQModel, or LWM's pickle
through a restricted unpickler; see `tokenizers/vqgan_weights.py`).

Example:
    >>> tok = ImageTokenizer.random("tiny", seed=0)
    >>> images                       # uint8 [2, 256, 256, 3], preprocessed (RGB, centre crop)
    >>> codes = tok.encode(images)   # int32 [2, 16, 16], values in 0..8191
    >>> tok.decode(codes).shape      # uint8 images again
    (2, 256, 256, 3)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from lwmkit.tokenizers import vqgan_weights as weights
from lwmkit.tokenizers.vqgan_config import DTYPES, VQGAN_PRESETS, VQGANConfig, preset_config

__all__ = ["VQGAN_PRESETS", "ImageTokenizer", "VQGANConfig", "WeightsError"]

WeightsError = weights.WeightsError
# XLA:CPU compiles convolutions to Eigen by default; routing them through YNNPACK's dot kernels
# measured 1.9 instead of 2.3 CPU-seconds per image for the "lwm" encoder on a 2-core AVX-512 Xeon
# (bench/vqgan.py), codes unchanged. Per executable, so nothing global is touched; an XLA that
# does not know the option gets the default compile instead.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def jit_for_backend(fn: Callable) -> Callable:
    """jax.jit, with CPU_COMPILER_OPTIONS on the CPU backend (falling back when XLA rejects them)."""
    import jax

    plain = jax.jit(fn)
    if jax.default_backend() != "cpu":
        return plain
    chosen = [jax.jit(fn, compiler_options=CPU_COMPILER_OPTIONS)]

    def call(*args):
        try:
            return chosen[0](*args)
        except Exception as e:  # XLA's error type varies by version; only the option's rejection falls back
            if chosen[0] is plain or "ynn" not in str(e).lower():
                raise
            chosen[0] = plain
            return plain(*args)

    return call


class ImageTokenizer:
    """A VQGAN with its weights: `encode` uint8 images to codes, `decode` codes to uint8 images.

    Both accept any batch size B and run jitted at a fixed batch of `batch_size` (the last batch
    is padded), so one compilation serves every call.

    Args:
      config: the network's shape.
      params: flat {'encoder/Conv_0/kernel': array, ...} float params (see `vqgan_weights.layout`).
      preset: the preset name recorded in the fingerprint.
      source: where the weights came from, recorded in the fingerprint.
      random_init: whether the weights are `random_params(config, seed)`.
      seed: the seed of random weights.
      batch_size: the fixed batch shape of the jitted functions.
      dtype: compute dtype, "float32" or "bfloat16" (for accelerators; parameters stay float32).

    Raises:
      ValueError: for a bad batch_size or dtype; WeightsError if params do not fit config.
    """

    def __init__(
        self,
        config: VQGANConfig,
        params: dict[str, np.ndarray],
        *,
        preset: str,
        source: str,
        random_init: bool = False,
        seed: int | None = None,
        batch_size: int = 8,
        dtype: str = "float32",
    ):
        if not isinstance(batch_size, int) or not 1 <= batch_size <= 4096:
            raise ValueError(f"batch_size must be an int in [1, 4096], got {batch_size!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        self.config = config
        self.preset = preset
        self.source = source
        self.random_init = bool(random_init)
        self.seed = seed
        self.batch_size = batch_size
        self.dtype = dtype
        self.params: dict[str, Any] = weights.unflatten(weights.check_params(params, config, source))
        self._sha256: str | None = None
        self._runtime: dict[str, Any] | None = None

    @classmethod
    def random(
        cls, preset: str = "tiny", seed: int = 0, *, batch_size: int = 8, dtype: str = "float32"
    ) -> ImageTokenizer:
        """Seeded random weights; the fingerprint records preset and seed, so they can be rebuilt exactly."""
        config = preset_config(preset)
        return cls(
            config,
            weights.random_params(config, seed),
            preset=preset,
            source="random_init",
            random_init=True,
            seed=int(seed),
            batch_size=batch_size,
            dtype=dtype,
        )

    @classmethod
    def from_weights(
        cls, path: str, preset: str = "lwm", *, batch_size: int = 8, dtype: str = "float32"
    ) -> ImageTokenizer:
        """Loads weights, telling the format from the content.

        Args:
          path: an lwmkit `.safetensors` file (it records its own config and preset, so `preset`
            is not used), a diffusers VQModel `.safetensors` file or folder (with config.json,
            which must match the preset), or LWM's pickled Flax parameter tree.
          preset: the network shape of a diffusers file or an LWM pickle.

        Raises:
          WeightsError: naming the file and the reason: unknown format, refused pickle global,
            or parameters that do not fit the preset.
        """
        kind = weights.detect_format(path)
        name = os.path.basename(os.path.normpath(path))
        if kind == "lwmkit":
            flat, meta, config = weights.load_lwmkit(path)
            seed = meta.get("seed")
            tok = cls(
                config,
                flat,
                preset=meta.get("preset", "custom"),
                source=meta.get("source", f"lwmkit:{name}"),
                random_init=meta.get("random_init") == "true",
                seed=int(seed) if seed else None,
                batch_size=batch_size,
                dtype=dtype,
            )
            tok._sha256 = meta.get("sha256")
            return tok
        config = preset_config(preset)
        if kind == "diffusers":
            flat = weights.load_diffusers(path, config)
        else:
            from lwmkit.tokenizers.vqgan_pickle import load_lwm_pickle

            flat = load_lwm_pickle(path, config)
        return cls(config, flat, preset=preset, source=f"{kind}:{name}", batch_size=batch_size, dtype=dtype)

    # -- identity ---------------------------------------------------------------------------

    def flat_params(self) -> dict[str, np.ndarray]:
        """The params as {'encoder/Conv_0/kernel': array, ...}."""
        return weights.flatten_tree(self.params, self.source)

    def fingerprint(self) -> dict[str, Any]:
        """Identifies the weights exactly (sha256 of the canonical flat params) and how they were made."""
        if self._sha256 is None:
            self._sha256 = weights.params_sha256(self.flat_params())
        fp = {
            "type": "vqgan",
            "sha256": self._sha256,
            "preset": self.preset,
            "source": self.source,
            "random_init": self.random_init,
            "config": self.config.to_dict(),
            "compute_dtype": self.dtype,
        }
        if self.random_init:
            fp["seed"] = self.seed
        return fp

    def save(self, path: str) -> None:
        """Writes lwmkit's format: safetensors params + metadata (config, preset, source, sha256)."""
        import json

        fp = self.fingerprint()
        meta = {
            "config": json.dumps(fp["config"]),
            "preset": self.preset,
            "source": self.source,
            "random_init": "true" if self.random_init else "false",
            "seed": "" if self.seed is None else str(self.seed),
            "sha256": fp["sha256"],
        }
        weights.save_lwmkit(path, self.flat_params(), meta)

    def __repr__(self) -> str:
        return f"ImageTokenizer(preset={self.preset!r}, source={self.source!r}, dtype={self.dtype!r})"

    # -- pickling: numpy params only; jitted functions and device copies are rebuilt lazily ----

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_runtime"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- pure functions ---------------------------------------------------------------------

    def _model(self):
        import jax.numpy as jnp
        from lwmkit.tokenizers.vqgan_model import VQGANModel

        return VQGANModel(self.config, dtype=jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32)

    def flax_model(self):
        """The Flax module (`model.apply({"params": p}, x, method=model.encode)`), for callers that
        compose their own function around the encoder and compile it with `jit_for_backend`."""
        return self._model()

    def encode_fn(self) -> tuple[Callable[[Any, Any], Any], dict[str, Any]]:
        """(apply, params): apply(params, float32 [B, 256, 256, 3] in [-1, 1]) -> int32 [B, 16, 16].

        apply is jitted and pure (params are an argument), for a model handler that places
        params once per worker. Call it as it is: wrapping it in another jax.jit still works but
        drops the CPU compiler options (CPU_COMPILER_OPTIONS).
        """
        model = self._model()

        def apply(params, images):
            return model.apply({"params": params}, images, method=model.encode)

        return jit_for_backend(apply), self.params

    def decode_fn(self) -> tuple[Callable[[Any, Any], Any], dict[str, Any]]:
        """(apply, params): apply(params, int [B, 16, 16]) -> float32 [B, 256, 256, 3] in [-1, 1]."""
        model = self._model()

        def apply(params, codes):
            return model.apply({"params": params}, codes, method=model.decode)

        return jit_for_backend(apply), self.params

    def _jax(self) -> dict[str, Any]:
        if self._runtime is None:
            import jax
            import jax.numpy as jnp

            model = self._model()

            def encode(params, images):  # uint8 [B, R, R, 3] -> int32 [B, S, S]
                x = images.astype(jnp.float32) / 127.5 - 1.0
                return model.apply({"params": params}, x, method=model.encode)

            def decode(params, codes):  # int32 [B, S, S] -> uint8 [B, R, R, 3]
                x = model.apply({"params": params}, codes, method=model.decode)
                return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)

            self._runtime = {
                "params": jax.device_put(self.params),
                "encode": jit_for_backend(encode),
                "decode": jit_for_backend(decode),
            }
        return self._runtime

    # -- batched calls ----------------------------------------------------------------------

    def _batched(self, fn_name: str, x: np.ndarray, out_tail: tuple[int, ...], out_dtype: Any) -> np.ndarray:
        n, bs = x.shape[0], self.batch_size
        out = np.empty((n, *out_tail), out_dtype)
        if n == 0:
            return out
        state = self._jax()
        fn, params = state[fn_name], state["params"]
        pending = []
        for start in range(0, n, bs):
            chunk = x[start : start + bs]
            m = chunk.shape[0]
            if m < bs:  # pad the last batch: one compiled shape for every call
                chunk = np.concatenate([chunk, np.zeros((bs - m, *chunk.shape[1:]), chunk.dtype)])
            pending.append((start, m, fn(params, chunk)))  # dispatched asynchronously
        for start, m, result in pending:
            out[start : start + m] = np.asarray(result)[:m]
        return out

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B, 256, 256, 3] RGB images (already resized and cropped) -> int32 [B, 16, 16] codes.

        Raises:
          ValueError: if images are not uint8 of that shape.
        """
        r = self.config.resolution
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (r, r, 3):
            raise ValueError(f"encode expects uint8 images [B, {r}, {r}, 3], got {images.dtype} {images.shape}")
        s = self.config.codes_side
        return self._batched("encode", images, (s, s), np.int32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int codes [B, 16, 16] in 0..num_embeddings-1 -> uint8 [B, 256, 256, 3] images.

        Raises:
          ValueError: for another shape, a non-integer dtype or a code out of range.
        """
        s, r, n = self.config.codes_side, self.config.resolution, self.config.num_embeddings
        codes = np.asarray(codes)
        if codes.dtype.kind not in "iu" or codes.ndim != 3 or codes.shape[1:] != (s, s):
            raise ValueError(f"decode expects integer codes [B, {s}, {s}], got {codes.dtype} {codes.shape}")
        bad = (codes < 0) | (codes >= n)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"code {int(codes[where])} at {where} is outside 0..{n - 1}")
        return self._batched("decode", codes.astype(np.int32), (r, r, 3), np.uint8)
