"""Hugging Face `LlamaForCausalLM` checkpoints (safetensors) -> LWM parameters (LWM-Text is published so).

Names map one to one; Dense kernels are the transposed torch weights; wq/wk rows are put back in
Meta's order, because Hugging Face's conversion permuted them to rotate halves (x[i], x[i + D/2])
where LWM rotates interleaved pairs (x[2i], x[2i+1]):
    model.embed_tokens.weight [V, E]                  -> transformer/wte/embedding [V, E]
    model.layers.3.self_attn.q_proj.weight [H*D, E]   -> transformer/h/3/attention/wq/kernel [E, H*D]
        row (head, half, i) of q_proj                 -> column (head, i, half) of wq
    model.layers.3.mlp.gate_proj / up_proj / down_proj -> feed_forward/w1 / w3 / w2
    model.layers.3.input_layernorm / post_attention_layernorm -> attention_norm / ffn_norm
    model.norm.weight -> transformer/ln_f/kernel;  lm_head.weight [V, E] -> lm_head/kernel [E, V]
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from lwmkit.lwm_model.checkpoint import fit_params
from lwmkit.lwm_model.config import LWMConfig
from lwmkit.packing.json_input import read_json

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")
_LAYER_NAMES = {
    "self_attn.q_proj": "attention/wq/kernel",
    "self_attn.k_proj": "attention/wk/kernel",
    "self_attn.v_proj": "attention/wv/kernel",
    "self_attn.o_proj": "attention/wo/kernel",
    "mlp.gate_proj": "feed_forward/w1/kernel",
    "mlp.up_proj": "feed_forward/w3/kernel",
    "mlp.down_proj": "feed_forward/w2/kernel",
    "input_layernorm": "attention_norm/kernel",
    "post_attention_layernorm": "ffn_norm/kernel",
}
# Buffers some older exports carry; they are recomputed, never loaded.
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")
_MAX_JSON_BYTES = 64 << 20  # config.json and the shard index are a few KB to a few MB


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> LWMConfig:
    """An LWMConfig (text-only, vision=False) from a Hugging Face LlamaConfig dict (config.json).

    Raises:
      ValueError: for an architecture LWM's decoder does not implement (biases, another
        activation, RoPE scaling, a head_dim other than hidden_size / heads).
    """
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={hf['hidden_act']!r}: only 'silu' (SwiGLU) is supported")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise ValueError(
                f"{flag}=True: LLaMA projections without bias are the only ones supported"
            )
    rope = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise ValueError(f"rope type {kind!r}: only plain RoPE ('default') is supported")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    heads = hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // heads):
        raise ValueError(f"head_dim={hf['head_dim']}: must be hidden_size / num_attention_heads")
    values = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        max_sequence_length=hf.get("max_position_embeddings", 4096),
        rope_theta=float(theta),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        vision=False,
    )
    return LWMConfig(**{**values, **overrides})


def _meta_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo Hugging Face's q/k row permutation: rows (head, half, i) -> (head, i, half)."""
    out_dim, in_dim = w.shape
    return (
        w.reshape(heads, 2, out_dim // heads // 2, in_dim)
        .transpose(0, 2, 1, 3)
        .reshape(out_dim, in_dim)
    )


def convert_hf_state(
    tensors: Mapping[str, np.ndarray], config: LWMConfig, source: str = "checkpoint"
) -> Any:
    """Hugging Face Llama tensors (name -> array) -> the parameter tree of `LWM(config)`.

    Raises:
      ValueError: naming `source` and the unknown, missing or misshapen tensors.
    """
    flat: dict[str, Any] = {}
    unknown = []
    for name, w in tensors.items():
        w = np.asarray(w)
        m = _LAYER.match(name)
        if m and m.group(2) in _LAYER_NAMES:
            target = _LAYER_NAMES[m.group(2)]
            if target.startswith("attention/wq"):
                w = _meta_rows(w, config.num_heads)
            elif target.startswith("attention/wk"):
                w = _meta_rows(w, config.kv_heads)
            flat[f"transformer/h/{m.group(1)}/{target}"] = w if w.ndim == 1 else w.T
        elif name == "model.embed_tokens.weight":
            flat["transformer/wte/embedding"] = w
        elif name == "model.norm.weight":
            flat["transformer/ln_f/kernel"] = w
        elif name == "lm_head.weight":
            if not config.tie_word_embeddings:
                flat["lm_head/kernel"] = w.T
        elif not _IGNORED.search(name):
            unknown.append(name)
    if unknown:
        raise ValueError(f"{source}: tensors a LLaMA decoder does not have: {sorted(unknown)[:8]}")
    return fit_params(flat, config, source)


def _safetensors_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index, ValueError, _MAX_JSON_BYTES).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(n, str) for n in weight_map.values()):
            raise ValueError(f"{index}: weight_map must be an object of file names")
        names = sorted(set(weight_map.values()))
        bad = [n for n in names if n in ("", ".", "..") or n != os.path.basename(n) or "\\" in n]
        if bad:  # a name may not lead out of the checkpoint's folder
            raise ValueError(f"{index}: weight_map names files outside the folder: {bad[:3]}")
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path}: no *.safetensors files")
    return files


def load_hf_llama(
    path: str | os.PathLike, config: LWMConfig | None = None, **overrides: Any
) -> tuple[LWMConfig, Any]:
    """Loads a Hugging Face LlamaForCausalLM checkpoint as LWM parameters (numpy, on the host).

    Args:
      path: a directory with config.json and model.safetensors (or shards with their index), or
        one .safetensors file (then `config` is required).
      config: the LWMConfig to load into; default: built from config.json (`config_from_hf`)
        with `overrides` (e.g. scan_layers=False, param_dtype="bfloat16").

    Returns:
      (config, params); place them with `mesh.shard_params`.

    Raises:
      ValueError: naming the file for a missing config, an unsupported architecture, or tensors
        that do not fit.
    """
    from safetensors import safe_open

    path = Path(path)
    if config is None:
        cfg = path / "config.json"
        if not cfg.exists():
            raise ValueError(f"{path}: no config.json; pass config=")
        try:
            config = config_from_hf(read_json(cfg, ValueError, _MAX_JSON_BYTES), **overrides)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{cfg}: {e!r}") from e
    tensors = {}
    for file in _safetensors_files(path):
        try:
            with safe_open(str(file), framework="np") as f:
                for name in f.keys():
                    tensors[name] = f.get_tensor(name)
        except OSError:
            raise
        except Exception as e:  # safetensors' SafetensorError: a bad header or offsets
            raise ValueError(f"{file}: not a readable safetensors file: {e}") from e
    return config, convert_hf_state(tensors, config, str(path))
