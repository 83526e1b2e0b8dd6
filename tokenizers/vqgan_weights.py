"""VQGAN weights: the parameter layout, three file formats, random init and the fingerprint.

Parameters are a flat dict of float32 numpy arrays keyed by LWM's Flax paths ('/'-joined, see
`tokenizers/vqgan_model.py`). Formats read (found from the content, not the name):
  - lwmkit: a safetensors file with those keys and metadata `format=lwmkit-vqgan` + the config.
  - diffusers: aMUSEd's `VQModel` weights, a `.safetensors` file or a folder holding
    `config.json` + `diffusion_pytorch_model.safetensors`; torch layouts are converted without
    torch (conv OIHW -> HWIO, GroupNorm weight -> scale, embedding.weight -> embeddings).
  - LWM's pickled Flax tree, read by `vqgan_pickle.RestrictedUnpickler`: only numpy arrays,
    dtypes, dicts, OrderedDict, FrozenDict and jax arrays (rebuilt as numpy) are admitted; any
    other global (os.system, eval, ...) is refused before it can run.
This module imports neither JAX nor torch.

Example (diffusers key -> lwmkit key, value transposed):
    encoder.down_blocks.0.resnets.1.conv2.weight [128, 128, 3, 3]
    -> encoder/DownsamplingBlock_0/ResnetBlock_1/Conv_1/kernel [3, 3, 128, 128]
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
from lwmkit.tokenizers.safetensors_header import parse_json_text, read_header
from lwmkit.tokenizers.vqgan_config import VQGANConfig

LWMKIT_FORMAT = "lwmkit-vqgan"
FORMAT_VERSION = "1"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_MAX_CONFIG_BYTES = 1 << 20  # a diffusers config.json is a few KB


class WeightsError(ValueError):
    """A weights file cannot be read, is refused, or does not fit the configuration."""


# ---------------------------------------------------------------------------------------------
# Layout: every parameter with its diffusers name, kind and shape.


def _resnet(entries: list, lwm: str, hf: str, cin: int, cout: int) -> None:
    entries += [
        (f"{lwm}/GroupNorm_0", f"{hf}.norm1", "norm", (cin,)),
        (f"{lwm}/Conv_0", f"{hf}.conv1", "conv", (3, 3, cin, cout)),
        (f"{lwm}/GroupNorm_1", f"{hf}.norm2", "norm", (cout,)),
        (f"{lwm}/Conv_1", f"{hf}.conv2", "conv", (3, 3, cout, cout)),
    ]
    if cin != cout:
        entries.append((f"{lwm}/Conv_2", f"{hf}.conv_shortcut", "conv", (1, 1, cin, cout)))


def _resample(entries: list, lwm: str, hf: str, channels: int) -> None:
    """A down- or upsampling step's 3x3 conv, which keeps the channels."""
    entries.append((f"{lwm}/Conv_0", f"{hf}.conv", "conv", (3, 3, channels, channels)))


def layout(config: VQGANConfig) -> list[tuple[str, str, str, tuple[int, ...]]]:
    """(lwm module path, diffusers module name, kind, shape) for every layer of the network.

    kind is "conv" (shape = Flax kernel HWIO; has a bias), "norm" (shape = channels; scale and
    bias) or "embedding" (the codebook [num_embeddings, embed_dim]).
    """
    ch = config.block_channels
    levels = len(ch)
    e: list[tuple[str, str, str, tuple[int, ...]]] = [("encoder/Conv_0", "encoder.conv_in", "conv", (3, 3, 3, ch[0]))]
    cin = ch[0]
    for i in range(levels):
        for j in range(config.num_res_blocks):
            lwm, hf = f"encoder/DownsamplingBlock_{i}/ResnetBlock_{j}", f"encoder.down_blocks.{i}.resnets.{j}"
            _resnet(e, lwm, hf, cin, ch[i])
            cin = ch[i]
        if i != levels - 1:
            _resample(e, f"encoder/DownsamplingBlock_{i}/Downsample_0", f"encoder.down_blocks.{i}.downsamplers.0", cin)
    for j in range(2):
        _resnet(e, f"encoder/MidBlock_0/ResnetBlock_{j}", f"encoder.mid_block.resnets.{j}", ch[-1], ch[-1])
    e.append(("encoder/GroupNorm_0", "encoder.conv_norm_out", "norm", (ch[-1],)))
    e.append(("encoder/Conv_1", "encoder.conv_out", "conv", (3, 3, ch[-1], config.z_channels)))
    e.append(("quant_conv", "quant_conv", "conv", (1, 1, config.z_channels, config.embed_dim)))
    e.append(("quantize", "quantize.embedding", "embedding", (config.num_embeddings, config.embed_dim)))
    e.append(("post_quant_conv", "post_quant_conv", "conv", (1, 1, config.embed_dim, config.z_channels)))
    e.append(("decoder/Conv_0", "decoder.conv_in", "conv", (3, 3, config.z_channels, ch[-1])))
    for j in range(2):
        _resnet(e, f"decoder/MidBlock_0/ResnetBlock_{j}", f"decoder.mid_block.resnets.{j}", ch[-1], ch[-1])
    cin = ch[-1]
    for k in range(levels):
        width = ch[levels - 1 - k]
        for j in range(config.num_res_blocks + 1):
            _resnet(e, f"decoder/UpsamplingBlock_{k}/ResnetBlock_{j}", f"decoder.up_blocks.{k}.resnets.{j}", cin, width)
            cin = width
        if k != levels - 1:
            _resample(e, f"decoder/UpsamplingBlock_{k}/Upsample_0", f"decoder.up_blocks.{k}.upsamplers.0", cin)
    e.append(("decoder/GroupNorm_0", "decoder.conv_norm_out", "norm", (ch[0],)))
    e.append(("decoder/Conv_1", "decoder.conv_out", "conv", (3, 3, ch[0], 3)))
    return e


def expected_shapes(config: VQGANConfig) -> dict[str, tuple[int, ...]]:
    """Flat parameter key -> shape, e.g. 'encoder/Conv_0/kernel' -> (3, 3, 3, 128)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path, _, kind, shape in layout(config):
        if kind == "conv":
            shapes[f"{path}/kernel"], shapes[f"{path}/bias"] = shape, (shape[-1],)
        elif kind == "norm":
            shapes[f"{path}/scale"], shapes[f"{path}/bias"] = shape, shape
        else:
            shapes[f"{path}/embeddings"] = shape
    return shapes


def check_params(flat: dict[str, np.ndarray], config: VQGANConfig, name: str) -> dict[str, np.ndarray]:
    """Checks keys and shapes against the config and returns the params as float32 numpy.

    Raises:
      WeightsError: naming `name` and the missing, unexpected or mis-shaped parameters.
    """
    want = expected_shapes(config)
    missing = sorted(set(want) - set(flat))
    extra = sorted(set(flat) - set(want))
    wrong = sorted(
        f"{k} {tuple(np.shape(v))} != {want[k]}" for k, v in flat.items() if k in want and tuple(np.shape(v)) != want[k]
    )
    if missing or extra or wrong:
        raise WeightsError(
            f"{name}: parameters do not fit the VQGAN config {config}: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {extra[:5]} ({len(extra)}), wrong shape {wrong[:5]} ({len(wrong)})"
        )
    out = {}
    for k in sorted(want):
        a = np.asarray(flat[k])
        if a.dtype.kind != "f":
            raise WeightsError(f"{name}: parameter {k} has dtype {a.dtype}, expected floating point")
        out[k] = np.ascontiguousarray(a, dtype=np.float32)
    return out


def random_params(config: VQGANConfig, seed: int) -> dict[str, np.ndarray]:
    """Seeded random weights, made with numpy so they are the same on every machine and JAX version.

    Convs: normal(0, 1/fan_in) kernels (LeCun, Flax's default) and zero biases; GroupNorm: scale 1,
    bias 0; codebook: normal(0, config.codebook_init_std).
    """
    rng = np.random.default_rng(seed)
    flat = {}
    for path, _, kind, shape in layout(config):  # fixed order: the draw sequence is part of the format
        if kind == "conv":
            fan_in = shape[0] * shape[1] * shape[2]
            flat[f"{path}/kernel"] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
            flat[f"{path}/bias"] = np.zeros(shape[-1], np.float32)
        elif kind == "norm":
            flat[f"{path}/scale"] = np.ones(shape, np.float32)
            flat[f"{path}/bias"] = np.zeros(shape, np.float32)
        else:
            flat[f"{path}/embeddings"] = (rng.standard_normal(shape) * config.codebook_init_std).astype(np.float32)
    return flat


def params_sha256(flat: dict[str, np.ndarray]) -> str:
    """sha256 over the canonical flattened params: for each key in sorted order, the key, dtype,
    shape and the little-endian C-order bytes."""
    h = hashlib.sha256()
    for k in sorted(flat):
        a = np.ascontiguousarray(flat[k])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        h.update(f"{k}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def flatten_tree(tree: Any, name: str, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {'a/b/c': leaf}; a non-mapping, non-array leaf raises WeightsError."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if hasattr(v, "items"):
            flat.update(flatten_tree(v, name, key + "/"))
        elif isinstance(v, np.ndarray):
            flat[key] = v
        else:
            raise WeightsError(f"{name}: parameter {key} is a {type(v).__name__}, not an array")
    return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """{'a/b/c': x} -> {'a': {'b': {'c': x}}} (the tree Flax's `apply` takes)."""
    tree: dict[str, Any] = {}
    for k, v in flat.items():
        node = tree
        *parents, leaf = k.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


# ---------------------------------------------------------------------------------------------
# Format detection


def detect_format(path: str) -> str:
    """Returns "lwmkit", "diffusers" or "lwm_pickle" from the file's content.

    Raises:
      WeightsError: if the path is missing or is none of the three.
    """
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, DIFFUSERS_WEIGHTS)) or os.path.isfile(
            os.path.join(path, "vqvae", DIFFUSERS_WEIGHTS)
        ):
            return "diffusers"
        raise WeightsError(f"{path}: a folder without {DIFFUSERS_WEIGHTS} (nor vqvae/{DIFFUSERS_WEIGHTS})")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise WeightsError(f"{path}: cannot read weights: {e}") from e
    if len(head) == 9 and head[8:9] == b"{":
        metadata, keys = _safetensors_header(path)
        if metadata.get("format") == LWMKIT_FORMAT:
            return "lwmkit"
        if any(k.startswith(("encoder.", "decoder.", "quantize.")) for k in keys):
            return "diffusers"
        raise WeightsError(f"{path}: a safetensors file that is neither lwmkit's VQGAN nor a diffusers VQModel")
    if head[:1] == b"\x80":  # PROTO opcode: pickle protocol >= 2
        return "lwm_pickle"
    raise WeightsError(
        f"{path}: not VQGAN weights (expected lwmkit or diffusers safetensors, a diffusers folder, or an LWM pickle); "
        f"starts with {head[:9]!r}"
    )


def _safetensors_header(path: str) -> tuple[dict[str, str], list[str]]:
    try:
        return read_header(path, WeightsError)
    except OSError as e:
        raise WeightsError(f"{path}: cannot read weights: {e}") from e


# ---------------------------------------------------------------------------------------------
# lwmkit's own format


def save_lwmkit(path: str, flat: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Writes params (flat '/'-keys) and string metadata as safetensors; no pickle anywhere."""
    from safetensors.numpy import save_file

    meta = {"format": LWMKIT_FORMAT, "format_version": FORMAT_VERSION, **metadata}
    save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, path, metadata=meta)


def load_lwmkit(path: str) -> tuple[dict[str, np.ndarray], dict[str, str], VQGANConfig]:
    """Reads an lwmkit VQGAN file and checks it: its config, parameter shapes and sha256.

    Raises:
      WeightsError: on a wrong format version, a bad config, a shape mismatch, or a sha256 that
        differs from the one recorded when the file was written (a corrupted file).
    """
    from safetensors.numpy import load_file

    metadata, _ = _safetensors_header(path)
    if metadata.get("format") != LWMKIT_FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise WeightsError(
            f"{path}: format {metadata.get('format')!r} version {metadata.get('format_version')!r}, "
            f"expected {LWMKIT_FORMAT!r} version {FORMAT_VERSION!r}"
        )
    try:
        config = VQGANConfig.from_dict(parse_json_text(metadata["config"], "config", WeightsError))
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise WeightsError(f"{path}: bad or missing config in metadata: {e}") from e
    try:
        tensors = load_file(path)
    except Exception as e:  # safetensors raises its own SafetensorError
        raise WeightsError(f"{path}: cannot read tensors: {e}") from e
    flat = check_params(tensors, config, path)
    recorded = metadata.get("sha256")
    if recorded and recorded != params_sha256(flat):
        raise WeightsError(f"{path}: parameters do not match the sha256 recorded in the file ({recorded[:12]}...)")
    return flat, metadata, config


# ---------------------------------------------------------------------------------------------
# diffusers' VQModel (aMUSEd)


def diffusers_config(config: VQGANConfig) -> dict[str, Any]:
    """The diffusers `VQModel(**kwargs)` configuration of the same network (aMUSEd's, for "lwm")."""
    levels = len(config.channel_mult)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": list(config.block_channels),
        "layers_per_block": config.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": config.z_channels,
        "sample_size": config.resolution,
        "num_vq_embeddings": config.num_embeddings,
        "norm_num_groups": config.norm_groups,
        "vq_embed_dim": config.embed_dim,
        "norm_type": "group",
        "mid_block_add_attention": False,
        "lookup_from_codebook": True,
        "force_upcast": False,
    }


def _check_diffusers_config(path: str, config: VQGANConfig) -> None:
    try:
        with open(path, "rb") as f:
            found = parse_json_text(f.read(_MAX_CONFIG_BYTES + 1), path, WeightsError)
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot read diffusers config: {e}") from e
    if not isinstance(found, dict):
        raise WeightsError(f"{path}: a diffusers config is a JSON object, not a {type(found).__name__}")
    want = diffusers_config(config)
    defaults = {"vq_embed_dim": found.get("latent_channels"), "norm_type": "group", "mid_block_add_attention": True}
    for key in ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
                "layers_per_block", "act_fn", "latent_channels", "num_vq_embeddings", "norm_num_groups",
                "vq_embed_dim", "norm_type", "mid_block_add_attention"):  # fmt: skip
        value = found.get(key)
        if value is None:  # absent, or null (vq_embed_dim): diffusers' default
            value = defaults.get(key)
        norm = list(value) if isinstance(value, (list, tuple)) else value
        if norm != want[key]:
            raise WeightsError(f"{path}: {key} is {value!r}, but the VQGAN config needs {want[key]!r}")


def load_diffusers(path: str, config: VQGANConfig) -> dict[str, np.ndarray]:
    """Converts a diffusers VQModel (file or folder) to lwmkit's flat params, without torch.

    Raises:
      WeightsError: if its config.json or its tensors do not fit `config`.
    """
    from safetensors.numpy import load_file

    weights = path
    if os.path.isdir(path):
        folder = path if os.path.isfile(os.path.join(path, DIFFUSERS_WEIGHTS)) else os.path.join(path, "vqvae")
        weights = os.path.join(folder, DIFFUSERS_WEIGHTS)
        if os.path.isfile(os.path.join(folder, "config.json")):
            _check_diffusers_config(os.path.join(folder, "config.json"), config)
    try:
        tensors = load_file(weights)
    except Exception as e:  # safetensors raises its own SafetensorError
        raise WeightsError(f"{weights}: cannot read tensors: {e}") from e
    flat: dict[str, np.ndarray] = {}
    used = set()

    def take(key: str) -> np.ndarray:
        if key not in tensors:
            raise WeightsError(f"{weights}: missing tensor {key!r} for the VQGAN config {config}")
        used.add(key)
        return tensors[key]

    for lwm, hf, kind, _ in layout(config):
        if kind == "conv":
            flat[f"{lwm}/kernel"] = take(f"{hf}.weight").transpose(2, 3, 1, 0)  # OIHW -> HWIO
            flat[f"{lwm}/bias"] = take(f"{hf}.bias")
        elif kind == "norm":
            flat[f"{lwm}/scale"] = take(f"{hf}.weight")
            flat[f"{lwm}/bias"] = take(f"{hf}.bias")
        else:
            flat[f"{lwm}/embeddings"] = take(f"{hf}.weight")
    extra = sorted(set(tensors) - used)
    if extra:
        raise WeightsError(
            f"{weights}: tensors the VQGAN config has no place for (attention?): {extra[:5]} ({len(extra)})"
        )
    return check_params(flat, config, weights)
