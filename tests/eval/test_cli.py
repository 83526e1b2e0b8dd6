"""`lwm-needle` through `main([...])`: build, build-video, run (OpenAI backend), report, errors."""

from __future__ import annotations

import json
import os

from lwmkit.eval.cases import read_cases
from lwmkit.eval.cli import main
from lwmkit.eval.evaluate import read_results
from lwmkit.packing.source import ShardDataSource

from tests.eval.openai_server import FakeOpenAI


def test_build_run_report(tmp_path, haystack_paths, bpe_model, tok, capsys):
    cases_path, results = str(tmp_path / "cases.jsonl"), str(tmp_path / "results.jsonl")
    args = ["build", "--haystack", haystack_paths[0], "--haystack", haystack_paths[2], "--tokenizer", bpe_model]
    args += ["--lengths", "400,800", "--depths", "0,50,100", "--out", cases_path, "--records", str(tmp_path / "ds")]
    assert main(args) == 0
    assert "wrote 6 lwm_single cases" in capsys.readouterr().out
    cases = read_cases(cases_path)
    assert sorted({c["length"] for c in cases}) == [400, 800]
    assert all(1 + len(tok.encode(c["prompt"])) + c["answer_tokens"] == c["length"] for c in cases)
    assert len(ShardDataSource(str(tmp_path / "ds"))) == 6

    heat, plot, summary = (str(tmp_path / n) for n in ("h.png", "s.png", "s.json"))
    with FakeOpenAI(delay=0.0) as server:
        run = ["run", "--cases", cases_path, "--results", results, "--backend", "openai", "--base-url", server.url]
        run += ["--model", "fake", "--heatmap", heat, "--summary-plot", plot, "--summary-json", summary]
        assert main(run) == 0
        assert len(server.prompts) == 6
    out = capsys.readouterr().out
    assert "6 results in" in out and "lwm_single: mean" in out and f"heatmap: {heat}" in out
    assert os.path.getsize(heat) > 1000 and os.path.getsize(plot) > 1000
    assert json.load(open(summary))["lwm_single"]["cases"] == 6
    assert len(read_results(results)) == 6

    assert main(["report", "--results", results, "--heatmap", str(tmp_path / "again.png")]) == 0
    assert os.path.exists(tmp_path / "again.png")


def test_recipe_only_cases_and_task_overrides(tmp_path, haystack_paths, bpe_model):
    out = str(tmp_path / "c.jsonl")
    args = ["build", "--haystack", haystack_paths[1], "--tokenizer", bpe_model, "--task", "lwm_multi"]
    args += ["--needles", "3", "--queries", "2", "--lengths", "900", "--depths", "30", "--no-prompt", "--out", out]
    assert main(args) == 0
    (case,) = read_cases(out)
    assert "prompt" not in case and len(case["needles"]) == 3 and len(case["expected"]) == 2
    with FakeOpenAI(delay=0.0) as server:
        run = ["run", "--cases", out, "--results", str(tmp_path / "r.jsonl"), "--backend", "openai"]
        assert main([*run, "--base-url", server.url, "--model", "fake", "--mode", "chat"]) == 0
        assert server.paths == ["/v1/chat/completions"] and case["needles"][0]["text"] in server.prompts[0]


def test_build_video(tmp_path, bpe_model, capsys):
    from PIL import Image

    img = tmp_path / "needle.png"
    Image.new("RGB", (256, 256), "red").save(img)
    out = str(tmp_path / "v.jsonl")
    args = ["build-video", "--haystack", "generated", "--haystack-frames", "20", "--tokenizer", bpe_model]
    args += ["--needle-image", str(img), "--vqgan-preset", "tiny", "--question", "Which colour?"]
    args += ["--option", "red", "--option", "blue", "--answer", "red", "--lengths", "4,8", "--depths", "0,100"]
    assert main([*args, "--out", out, "--records", str(tmp_path / "vds")]) == 0
    cases = read_cases(out)
    assert len(cases) == 4 and all(c["modality"] == "video" for c in cases)
    rec = ShardDataSource(str(tmp_path / "vds"))[0]
    assert rec["vision_mask"].sum() == 5 * 257  # 4 haystack frames + the needle
    # No --vqgan: a random VQGAN, said loudly and recorded in every case.
    assert "RANDOMLY INITIALISED VQGAN (tiny preset, seed 0)" in capsys.readouterr().err
    assert all(c["needle_vqgan"]["random_init"] and c["needle_vqgan"]["seed"] == 0 for c in cases)
    # A length the haystack cannot hold fails; --allow-repeat builds it and reports the repeat.
    longer = [*args[:-4], "--lengths", "30", "--depths", "50", "--out", out]
    assert main(longer) == 1 and "holds 20 frames; a case of 30 frames would repeat 10" in capsys.readouterr().err
    assert main([*longer, "--allow-repeat"]) == 0
    assert "1 of 1 cases repeat haystack frames (--allow-repeat): 10 repeated frames" in capsys.readouterr().err
    assert read_cases(out)[0]["repeat_frames"] == 10 and read_cases(out)[0]["repeat_share"] == round(10 / 30, 6)


def test_build_video_uses_the_haystacks_vqgan_and_refuses_another(tmp_path, bpe_model, tok, capsys):
    from lwmkit.tokenizers.vqgan import ImageTokenizer
    from PIL import Image

    from tests.eval.test_video_needle import _clips, _write_video_dataset

    made_with = ImageTokenizer.random("tiny", seed=7)
    _write_video_dataset(str(tmp_path / "video"), tok, _clips(6, 6), vqgan=made_with.fingerprint(),
                         tokenizer=tok.fingerprint())  # fmt: skip
    img = tmp_path / "needle.png"
    Image.new("RGB", (256, 256), "red").save(img)
    out = str(tmp_path / "v.jsonl")
    args = ["build-video", "--haystack", str(tmp_path / "video"), "--tokenizer", bpe_model, "--needle-image", str(img)]
    args += ["--question", "Which colour?", "--answer", "red", "--lengths", "4", "--depths", "50", "--out", out]
    # Without --vqgan the haystack's own (random, seed 7) VQGAN is rebuilt: the needle matches it.
    assert main(args) == 0
    assert read_cases(out)[0]["needle_vqgan"]["sha256"] == made_with.fingerprint()["sha256"]
    assert "seed 7" in capsys.readouterr().err
    # Weights of another VQGAN (the seed-0 one a forgotten --vqgan-seed gave before) are refused.
    other = str(tmp_path / "seed0.safetensors")
    ImageTokenizer.random("tiny", seed=0).save(other)
    assert main([*args, "--vqgan", other]) == 1
    err = capsys.readouterr().err
    assert "lwm-needle build-video: error:" in err and "its frames were encoded with VQGAN" in err and "seed 7" in err


def test_errors_are_reported_not_raised(tmp_path, haystack_paths, bpe_model, capsys):
    missing = str(tmp_path / "missing.txt")
    args = ["build", "--haystack", missing, "--tokenizer", bpe_model, "--out", str(tmp_path / "c.jsonl")]
    assert main(args) == 1
    assert f"lwm-needle build: error: {missing}: no such file" in capsys.readouterr().err
    (tmp_path / "c.jsonl").write_text("")
    run = ["run", "--cases", str(tmp_path / "c.jsonl"), "--results", str(tmp_path / "r.jsonl"), "--backend", "openai"]
    assert main(run) == 1
    assert "needs --base-url and --model" in capsys.readouterr().err
    assert main(["report", "--results", str(tmp_path / "none.jsonl")]) == 1
    assert "no results" in capsys.readouterr().err
    # lwm_model's inputs are checked before any model loads, naming the option.
    lwm = ["run", "--cases", str(tmp_path / "c.jsonl"), "--results", str(tmp_path / "r.jsonl"),
           "--backend", "lwm_model", "--tokenizer", bpe_model]  # fmt: skip
    assert main([*lwm, "--checkpoint", str(tmp_path / "run")]) == 1
    assert f"--checkpoint {tmp_path / 'run'}: no such file or directory" in capsys.readouterr().err
    video = ["build-video", "--haystack", "generated", "--tokenizer", bpe_model, "--question", "q", "--option", "a",
             "--answer", "a", "--lengths", "4", "--out", str(tmp_path / "v.jsonl")]  # fmt: skip
    assert main([*video, "--needle-image", str(tmp_path / "cat.png")]) == 1
    assert f"--needle-image {tmp_path / 'cat.png'}: no such file" in capsys.readouterr().err


def test_build_shows_a_bar_of_cases_on_a_terminal_only(tmp_path, haystack_paths, bpe_model, capsys, monkeypatch):
    args = ["build", "--haystack", haystack_paths[1], "--tokenizer", bpe_model, "--lengths", "300,400", "--depths", "50"]
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    assert main([*args, "--out", str(tmp_path / "a.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "building cases" in err and "2/2" in err
    assert main([*args, "--out", str(tmp_path / "b.jsonl"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    assert main([*args, "--out", str(tmp_path / "c.jsonl")]) == 0
    assert capsys.readouterr().err == ""
