"""End to end with lwmkit's own model: tiny preset, random weights, greedy decoding with a KV cache.

Random weights answer nonsense, so scores near zero are expected: these tests check the path (cases
-> prompts -> lwm_model.generate -> answers -> scores -> heatmap), not the accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest
from lwmkit.eval.backends import BackendError, LWMModelBackend, TokenPrompt
from lwmkit.eval.cases import build_cases
from lwmkit.eval.evaluate import evaluate
from lwmkit.eval.plots import heatmap
from lwmkit.eval.tasks import Grid, task_preset
from lwmkit.eval.video_needle import (
    VideoHaystack,
    VideoHaystackSpec,
    VideoNeedle,
    build_video_case,
    video_prompt,
)

MAX_NEW = 6


@pytest.fixture(scope="module")
def backend(tok):
    # One bucket (1024) holds every prompt below, so generate compiles once.
    # A code book of 256 (<eof> 256, <eov> 257): the remap of LWM's VQGAN ids into a smaller one is checked.
    b = LWMModelBackend.from_preset("tiny", tok, seed=0, vision_codes=256, vision_vocab_size=320)
    b.bucket = 1024
    return b


def test_text_cases_run_end_to_end(tmp_path, hay, tok, backend):
    assert backend.model.config.vocab_size == tok.vocab_size
    cases = list(build_cases(hay, tok, task_preset("lwm_single"), Grid((300, 450), (0, 100)), seed=2))
    rows = evaluate(cases, backend, str(tmp_path / "r.jsonl"), max_new_tokens=MAX_NEW)
    assert [r["id"] for r in rows] == [c["id"] for c in cases]
    for r in rows:
        assert r["error"] is None and isinstance(r["answer"], str)
        assert r["score"] in (0.0, 1.0) and r["seconds"] > 0 and r["backend"] == "lwm_model:tiny:random0"
    # Greedy decoding is deterministic: the same prompt gives the same answer.
    again = backend.generate(cases[0]["prompt"], MAX_NEW)
    assert again == rows[0]["answer"]
    assert heatmap(rows, str(tmp_path / "h.png"))


def test_bos_and_limits(tok, backend):
    ids, mask = backend._token_prompt("Hello there.", bos=True)
    assert ids[0] == tok.bos_id and ids[1:].tolist() == tok.encode("Hello there.") and not mask.any()
    assert backend._token_prompt("Hello there.", bos=False)[0].tolist() == tok.encode("Hello there.")
    with pytest.raises(BackendError, match="exceeds the model's max_sequence_length 2048"):
        backend.generate("word " * 3000, MAX_NEW)
    with pytest.raises(BackendError, match="outside this model's 256 codes"):
        backend.generate(TokenPrompt(np.array([1, 300, 8193]), np.array([False, True, True])), MAX_NEW)


def test_video_case_runs_through_the_vision_embedding(tmp_path, tok, backend):
    # The tiny model's code book has 256 codes, so the generated video and the needle stay below it;
    # the VQGAN layout's <eof>=8192/<eov>=8193 map to the model's own ids (256/257).
    hay = VideoHaystack.load(VideoHaystackSpec("generated", seed=0, frames=8, codes=256))
    needle = VideoNeedle(np.full((16, 16), 17, np.int32), "Which shape?", ("a square", "a circle"), "a square")
    case = build_video_case(hay, tok, needle, frames=2, depth=50.0)
    tokens, mask = backend._token_prompt(video_prompt(case), bos=True)
    assert tokens[mask].max() == backend.model.config.eov_id == 257
    assert (tokens[mask] == 256).sum() == 2  # two <eof>: three frames in one field
    (row,) = evaluate([case], backend, str(tmp_path / "v.jsonl"), max_new_tokens=MAX_NEW)
    assert row["error"] is None and row["score"] in (0.0, 1.0) and row["prompt_tokens"] == len(tokens)


def test_an_orbax_checkpoint_saved_on_eight_devices_loads_with_its_own_vocabulary(tmp_path, tok, backend):
    import jax
    from flax.traverse_util import flatten_dict
    from lwmkit.lwm_model.checkpoint import save_params
    from lwmkit.lwm_model.mesh import make_mesh, param_shardings

    # The module's backend (vision tables of 320 rows) saved across a dp=2 x sp=4 mesh.
    mesh = make_mesh("1,2,1,4")
    sharded = jax.tree.map(jax.device_put, backend.params, param_shardings(backend.params, mesh))
    save_params(tmp_path / "orbax", sharded)
    # The table's rows come from the checkpoint; the code count (not stored in parameters) is given.
    loaded = LWMModelBackend.from_preset("tiny", tok, checkpoint=str(tmp_path / "orbax"), checkpoint_format="orbax",
                                         vision_codes=256)  # fmt: skip
    assert loaded.model.config.vision_vocab_size == 320 and loaded.model.config.vocab_size == tok.vocab_size
    want = flatten_dict(backend.params, sep="/")
    for k, v in flatten_dict(loaded.params, sep="/").items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(want[k]), err_msg=k)
