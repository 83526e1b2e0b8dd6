"""A random Hugging Face LlamaForCausalLM, saved as safetensors and converted, gives the same logits here.

Needs the `interop` extra (PyTorch CPU and transformers); skipped without it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="HF parity needs PyTorch (pip install lwmkit[interop])")
transformers = pytest.importorskip(
    "transformers", reason="HF parity needs transformers (pip install lwmkit[interop])"
)

import jax  # noqa: E402
from lwmkit.lwm_model import hf_llama  # noqa: E402
from lwmkit.lwm_model.hf_llama import config_from_hf, load_hf_llama  # noqa: E402
from lwmkit.lwm_model.model import LWM  # noqa: E402


def save_random_llama(path, tie: bool = False):
    """A small random LLaMA with grouped-query attention, non-default RoPE theta and non-unit norms."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=112,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        rope_theta=50000.0,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)  # every weight random, the RMSNorm scales too
    model.save_pretrained(path)
    return model


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


@pytest.mark.parametrize("tie", [False, True])
def test_converted_llama_matches_hugging_face_logits(tmp_path, tie):
    model = save_random_llama(tmp_path, tie)
    assert (tmp_path / "model.safetensors").exists()
    config, params = load_hf_llama(tmp_path)
    assert (config.num_kv_heads, config.rope_theta, config.tie_word_embeddings, config.vision) == (
        2,
        50000.0,
        tie,
        False,
    )
    assert ("lm_head" in params) != tie
    ids = np.random.default_rng(0).integers(0, 96, (2, 40))
    ours = jax.jit(lambda p, x: LWM(config).apply({"params": p}, x).text_logits)(params, ids)
    np.testing.assert_allclose(np.asarray(ours), hf_logits(model, ids), atol=1e-4, rtol=1e-4)


def test_unrolled_layers_match_and_q_k_rows_must_be_reordered(tmp_path, monkeypatch):
    model = save_random_llama(tmp_path)
    ids = np.random.default_rng(1).integers(0, 96, (1, 24))
    reference = hf_logits(model, ids)
    config, params = load_hf_llama(tmp_path, scan_layers=False, remat_policy="none")
    assert "0" in params["transformer"]["h"]
    logits = jax.jit(lambda p: LWM(config).apply({"params": p}, ids).text_logits)
    np.testing.assert_allclose(np.asarray(logits(params)), reference, atol=1e-4)
    # Without undoing Hugging Face's rotate-half row order RoPE pairs the wrong features.
    monkeypatch.setattr(hf_llama, "_meta_rows", lambda w, heads: w)
    _, wrong = load_hf_llama(tmp_path, scan_layers=False, remat_policy="none")
    assert np.abs(np.asarray(logits(wrong)) - reference).max() > 1e-2


def test_unsupported_architectures_are_refused(tmp_path):
    save_random_llama(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(ValueError, match="rope type 'linear'"):
        config_from_hf(
            {**hf, "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "rope_parameters": None}
        )
    with pytest.raises(ValueError, match="attention_bias=True"):
        config_from_hf({**hf, "attention_bias": True})
    (tmp_path / "config.json").write_text(json.dumps({**hf, "hidden_act": "gelu"}))
    with pytest.raises(ValueError, match=f"{tmp_path / 'config.json'}.*hidden_act='gelu'"):
        load_hf_llama(tmp_path)
