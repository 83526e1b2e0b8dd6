"""The JAX/Flax LWM model with RingAttention: config, model, mesh, checkpoints, loss and decoding.

It may import `lwmkit.packing` (its input pipeline) and nothing else of lwmkit. Names are loaded on
first use, so `import lwmkit.lwm_model` itself does not import JAX:

    from lwmkit.lwm_model import LWM, preset, init_params, make_mesh, SamplingConfig
    from lwmkit.lwm_model.generate import generate   # the function (`generate` is also the module)
"""

from __future__ import annotations

import importlib

# public name -> module under lwmkit.lwm_model that defines it
_EXPORTS = {
    "LWMConfig": "config",
    "PRESETS": "config",
    "LWM_ROPE_THETA": "config",
    "preset": "config",
    "LWM": "model",
    "KVCache": "model",
    "ModelOutput": "model",
    "forward": "model",
    "init_params": "model",
    "lwm_loss": "loss",
    "make_loss_fn": "loss",
    "AXES": "mesh",
    "make_mesh": "mesh",
    "param_specs": "mesh",
    "param_shardings": "mesh",
    "shard_params": "mesh",
    "layout_batch": "mesh",
    "dense_attention": "attention",
    "ring_attention": "attention",
    "apply_layout": "layout",
    "undo_layout": "layout",
    "attention_work": "layout",
    "load_lwm_params": "checkpoint",
    "read_lwm_params": "checkpoint",
    "save_lwm_params": "checkpoint",
    "save_params": "checkpoint",
    "restore_params": "checkpoint",
    "load_hf_llama": "hf_llama",
    "config_from_hf": "hf_llama",
    "SamplingConfig": "generate",
    "Generation": "generate",
    "init_cache": "generate",
    "pad_prompts": "generate",
    "TokenSeq": "prompts",
    "vision_chat_prompt": "prompts",
    "text_chat_prompt": "prompts",
    "generation_prompt": "prompts",
    "unconditional_prompt": "prompts",
    "stream_generate": "chat",
    "generate_text": "chat",
    "prompt_batch": "chat",
    "GuidanceConfig": "vision_generate",
    "sample_vision": "vision_generate",
    "generate_frames": "vision_generate",
    "guide": "vision_generate",
    "TrainResult": "train",
    "TrainConfig": "train_config",
    "StageConfig": "train_config",
    "OptimizerConfig": "train_config",
    "TRAIN_PRESETS": "train_presets",
    "load_config": "train_presets",
    "train_preset": "train_presets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lwmkit.lwm_model.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lwmkit.lwm_model' has no attribute {name!r}")
