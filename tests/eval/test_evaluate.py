"""The evaluator against a local OpenAI-compatible server: scoring, resume, concurrency, timing, plots.

Set `LWMKIT_NEEDLE_HEATMAP_OUT=docs/needle_heatmap.png` to keep the heatmap this test draws.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from lwmkit.eval.backends import BackendError, OpenAIBackend
from lwmkit.eval.cases import CaseError, build_cases
from lwmkit.eval.evaluate import evaluate, format_table, read_results, summarize
from lwmkit.eval.plots import RED_YELLOW_GREEN, heatmap, score_grid, summary_plot
from lwmkit.eval.tasks import Grid, task_preset

from tests.eval.openai_server import FakeOpenAI, visible

GRID = Grid((400, 700, 1000, 1400, 2000, 2800), (0, 20, 40, 60, 80, 100))


@pytest.fixture(scope="module")
def cases(hay, tok):
    return list(build_cases(hay, tok, task_preset("lwm_single"), GRID, rounds=2, seed=1))


def _expected_score(case, head: int, tail: float) -> float:
    n = case["needles"][0]
    start, end, size = n["char_offset"], n["char_offset"] + len(n["text"]), len(case["prompt"])
    return float(end <= head or start >= size - len(visible(case["prompt"], head, tail)[1]))


def test_scores_follow_what_the_server_could_see(tmp_path, cases):
    with FakeOpenAI(head=3000, tail=0.1, delay=0.05) as server:
        rows = evaluate(cases, OpenAIBackend(server.url, "fake"), str(tmp_path / "r.jsonl"), concurrency=4)
    assert [r["id"] for r in rows] == [c["id"] for c in cases]
    assert [r["score"] for r in rows] == [_expected_score(c, 3000, 0.1) for c in cases]
    assert {r["score"] for r in rows} == {0.0, 1.0}
    assert all(r["error"] is None and r["seconds"] >= 0.05 and r["backend"] == "openai:fake" for r in rows)
    assert server.max_active > 1, "requests should overlap with concurrency=4"
    assert sorted(server.prompts) == sorted(c["prompt"] for c in cases)
    assert len(read_results(str(tmp_path / "r.jsonl"))) == len(cases)
    # Needles at the start and the end are found at every length; the middle is lost in long contexts.
    lengths, depths, grid = score_grid(rows, "lwm_single")
    assert grid[0].tolist() == [1.0] * 6 and grid[-1].tolist() == [1.0] * 6 and grid[:, -1].tolist() != [1.0] * 6


def test_resume_skips_answered_cases_and_retries_errors(tmp_path, cases):
    path = str(tmp_path / "r.jsonl")
    with FakeOpenAI(delay=0.0) as server:
        evaluate(cases[:10], OpenAIBackend(server.url, "fake"), path, concurrency=2)
        assert len(server.prompts) == 10
        rows = evaluate(cases, OpenAIBackend(server.url, "fake"), path, concurrency=2)
        assert len(server.prompts) == len(cases), "only the cases not yet answered were sent"
    assert [r["id"] for r in rows] == [c["id"] for c in cases]
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"id": "torn')  # an interrupted write
    with FakeOpenAI(delay=0.0) as server:
        again = evaluate(cases, OpenAIBackend(server.url, "fake"), path)
        assert server.prompts == [] and again == rows
        # A run over some of the cases leaves the other cases' rows in the file.
        assert evaluate(cases[:2], OpenAIBackend(server.url, "fake"), path) == rows[:2]
    assert sorted(r["id"] for r in read_results(path)) == sorted(c["id"] for c in cases)


def test_errors_are_recorded_then_retried(tmp_path, cases):
    path = str(tmp_path / "r.jsonl")
    with FakeOpenAI(delay=0.0, fail_first=3) as server:
        rows = evaluate(cases[:6], OpenAIBackend(server.url, "fake", retries=0), path, concurrency=1)
        failed = [r for r in rows if r["error"]]
        assert len(failed) == 3 and all("HTTP 500" in r["error"] and r["score"] is None for r in failed)
        rows = evaluate(cases[:6], OpenAIBackend(server.url, "fake", retries=0), path, concurrency=1)
    assert all(r["error"] is None for r in rows)
    assert len(read_results(path)) == 6, "the error rows were replaced, not kept beside the answers"
    with FakeOpenAI(delay=0.0, fail_first=1) as server:
        (row,) = evaluate(cases[:1], OpenAIBackend(server.url, "fake", retries=1), str(tmp_path / "x.jsonl"))
        assert row["error"] is None, "a 500 is retried"


def test_a_results_file_from_other_cases_is_refused(tmp_path, cases):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"id": cases[0]["id"], "prompt_sha256": "0" * 64, "score": 1.0, "error": None}) + "\n")
    with pytest.raises(CaseError, match="answered for another prompt"):
        evaluate(cases, OpenAIBackend("http://127.0.0.1:9/v1", "fake"), str(path))


def test_chat_mode_and_backend_errors(tmp_path, cases):
    with FakeOpenAI(delay=0.0) as server:
        answer = OpenAIBackend(server.url, "fake", mode="chat").generate(cases[0]["prompt"], 16)
        assert server.paths == ["/v1/chat/completions"] and cases[0]["expected"][0] in answer
    with pytest.raises(BackendError, match="127.0.0.1"):
        OpenAIBackend(f"{server.url}", "fake", retries=0, timeout=2).generate("x", 4)  # server is gone
    with pytest.raises(BackendError, match="takes text prompts"):
        from lwmkit.eval.backends import TokenPrompt

        OpenAIBackend(server.url, "fake").generate(TokenPrompt(np.zeros(2, np.int32), np.zeros(2, bool)), 4)
    with pytest.raises(ValueError, match="mode='stream'"):
        OpenAIBackend(server.url, "fake", mode="stream")


def _near(pixels: np.ndarray, hex_colour: str, tol: int = 40) -> np.ndarray:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return np.abs(pixels[..., :3].astype(int) - rgb).sum(-1) < tol


def test_heatmap_and_summary_plot(tmp_path, cases):
    from PIL import Image

    with FakeOpenAI(head=3000, tail=0.1, delay=0.0) as server:
        rows = evaluate(cases, OpenAIBackend(server.url, "fake"), str(tmp_path / "r.jsonl"), concurrency=4)
    path = heatmap(rows, str(tmp_path / "heatmap.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = np.asarray(Image.open(path).convert("RGB"))
    red, green = _near(pixels, RED_YELLOW_GREEN[0]), _near(pixels, RED_YELLOW_GREEN[2])
    assert red.sum() > 500 and green.sum() > 500
    if out := os.environ.get("LWMKIT_NEEDLE_HEATMAP_OUT"):
        shutil.copyfile(path, out)
    # Orientation: a grid whose only hit is (shortest length, depth 0) is green at the top left only.
    one = [{**r, "score": float(r["length"] == 400 and r["depth"] == 0)} for r in rows]
    pixels = np.asarray(Image.open(heatmap(one, str(tmp_path / "one.png"))).convert("RGB"))
    pixels = pixels[:, : int(0.8 * pixels.shape[1])]  # leave out the colour bar on the right
    ys, xs = np.nonzero(_near(pixels, RED_YELLOW_GREEN[2]))
    ry, rx = np.nonzero(_near(pixels, RED_YELLOW_GREEN[0]))
    assert xs.max() < rx.mean() and ys.max() < ry.mean()
    # A second task for the multi-task plot and table.
    other = [{**r, "task": "lwm_multi", "score": 0.5} for r in rows]
    both = rows + other
    assert summary_plot(both, str(tmp_path / "tasks.png")) and os.path.getsize(tmp_path / "tasks.png") > 5000
    summary = summarize(both)
    assert summary["lwm_multi"]["score"] == 0.5 and summary["lwm_single"]["cases"] == len(cases)
    table = format_table(both)
    assert "lwm_single: mean" in table and "lwm_multi: mean 0.500" in table
    with pytest.raises(ValueError, match="name one"):
        heatmap(both, str(tmp_path / "x.png"))


def test_a_bad_results_line_names_file_and_line_but_a_torn_last_line_is_ignored(tmp_path):
    from lwmkit.eval.cases import CaseError
    from lwmkit.eval.evaluate import read_results

    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": "a"}\n\xff\xfe\n{"id": "b"}\n')
    with pytest.raises(CaseError, match=r"r\.jsonl:2: not UTF-8 text"):
        read_results(str(path))
    path.write_bytes(b'{"id": "a"}\n"just a string"\n{"id": "b"}\n')
    with pytest.raises(CaseError, match=r"r\.jsonl:2: not a JSON object \(got str\)"):
        read_results(str(path))
    path.write_bytes(b'{"id": "a"}\n{"id": "b", "torn')
    assert read_results(str(path)) == [{"id": "a"}]
