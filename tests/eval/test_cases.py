"""Exact lengths, needle placement, recipes, determinism and the JSONL/records outputs.

`LWMKIT_NEEDLE_TOKENIZER=/path/to/tokenizer.model` (e.g. LLaMA-2's) adds that model to the
exact-length checks; without it they run with the tiny model trained here and a non-SentencePiece
tokenizer whose merges cross sentence boundaries.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
from lwmkit.eval.case_records import reference_answer, write_case_records
from lwmkit.eval.cases import (
    CaseError,
    build_case,
    build_cases,
    case_prompt,
    read_cases,
    rebuild_prompt,
    write_cases,
)
from lwmkit.eval.fitting import HaystackTooSmall, LengthFitError, TokenCounter
from lwmkit.eval.haystack import Haystack, HaystackSpec
from lwmkit.eval.tasks import TASK_PRESETS, Grid, task_preset

EXTRA_TOKENIZER = os.environ.get("LWMKIT_NEEDLE_TOKENIZER")


def _count(tokenizer, text: str) -> int:
    return len(tokenizer.encode_batch([text])[0])


def _tokenizers(tok, crossing_tokenizer):
    out = {"tiny_sentencepiece": tok, "crossing": crossing_tokenizer}
    if EXTRA_TOKENIZER:
        from lwmkit.tokenizers.text import SentencePieceTokenizer

        out["passed_in"] = SentencePieceTokenizer.from_file(EXTRA_TOKENIZER)
    return out


def _check_case(case, tokenizer, hay):
    prompt = case["prompt"]
    # Exact length: BOS + prompt + the answer room is the requested context.
    assert int(case["bos"]) + _count(tokenizer, prompt) + case["answer_tokens"] == case["length"]
    assert case["prompt_tokens"] + case["answer_tokens"] == case["length"]
    # Each needle appears once, at its recorded offset.
    for n in case["needles"]:
        assert prompt.count(n["text"]) == 1
        assert prompt[n["char_offset"] : n["char_offset"] + len(n["text"])] == n["text"]
        assert n["token_offset"] == _count(tokenizer, prompt[: n["char_offset"]])
    # Needles follow a whole sentence (or the template's prefix, or another needle), never a cut one;
    # a needle at depth 100 follows the whole haystack, its cut last unit included (as LWM appends it).
    ends = (".", "!", "?", '"', "'", ")", "\n", *(m["text"] for m in case["needles"]))
    for n in case["needles"]:
        before = prompt[: n["char_offset"]].rstrip(" ")
        if n["depth"] >= 100:
            assert n["true_depth"] == 100.0
            continue
        # A whole unit: a sentence, or a heading ended by a paragraph break ("Chapter 2").
        whole = before.endswith(ends) or any(before.endswith(u) for u in hay.units if not u.endswith(ends))
        assert before == case["recipe"]["prefix"].rstrip(" ") or whole
    # Every needle sits at the unit boundary nearest its requested depth: at most half a unit away.
    longest = max(len(ids) for ids in tokenizer.encode_batch(hay.units))
    for n in case["needles"]:
        # Half a unit, or the trailing partial unit when the depth is near 100%.
        assert abs(n["true_depth"] - n["depth"]) / 100 * case["haystack_tokens"] <= longest + 1
    assert case["true_depth"] in [n["true_depth"] for n in case["needles"]]
    assert rebuild_prompt(case["recipe"], expect_sha256=case["prompt_sha256"]) == prompt


@pytest.mark.parametrize("task_name", list(TASK_PRESETS))
def test_every_task_fits_exactly_and_rebuilds(task_name, hay, tok, crossing_tokenizer):
    task = task_preset(task_name)
    rng = random.Random(task_name)
    for tokenizer in _tokenizers(tok, crossing_tokenizer).values():
        lengths = [rng.randrange(700, 3000) for _ in range(2)] + [4096]
        depths = [0.0, rng.uniform(1, 99), 100.0]
        for length, depth in zip(lengths, depths, strict=True):
            case = build_case(hay, tokenizer, task, length, depth, seed=7)
            _check_case(case, tokenizer, hay)
            assert case["task"] == task_name and case["build"]["join_mode"] in ("dummy", "space")


def test_many_lengths_are_exact_with_one_verification(hay, tok):
    task = task_preset("lwm_single")
    counter = TokenCounter(tok)
    tries = []
    for length in range(400, 2400, 37):
        case = build_case(hay, counter, task, length, 50.0, seed=length)
        assert 1 + _count(tok, case["prompt"]) + case["answer_tokens"] == length
        tries.append(case["build"]["tries"])
    assert max(tries) == 1, "SentencePiece is local at spaces: the first fit should verify"


def test_depth_zero_and_hundred_put_the_needle_at_the_ends(hay, tok):
    task = task_preset("lwm_single")
    first = build_case(hay, tok, task, 2000, 0.0)
    prefix = first["recipe"]["prefix"]
    assert first["prompt"][len(prefix) :].startswith(first["needles"][0]["text"]) and first["true_depth"] == 0.0
    for length in (1000, 1500, 2000, 2500):
        last = build_case(hay, tok, task, length, 100.0)
        needle, suffix = last["needles"][0], last["recipe"]["suffix"]
        # After the whole haystack, the cut last unit included: nothing but the template follows it.
        after = last["prompt"][needle["char_offset"] + len(needle["text"]) : -len(suffix)]
        assert after.strip() == "" and last["true_depth"] == 100.0 and needle["true_depth"] == 100.0
        partial = last["recipe"]["partial"]
        if partial:
            cut = hay.units[partial[0]][: partial[1]]
            assert last["prompt"][: needle["char_offset"]].rstrip().endswith(cut)


def test_same_seed_same_cases_other_seed_other_cases(hay, tok):
    grid = Grid((600, 900), (0, 50, 100))
    task = task_preset("multikey")
    a = list(build_cases(hay, tok, task, grid, seed=3))
    b = list(build_cases(hay, tok, task, grid, seed=3))
    c = list(build_cases(hay, tok, task, grid, seed=4))
    strip = lambda cases: [{k: v for k, v in x.items() if k != "build"} for x in cases]  # noqa: E731
    assert strip(a) == strip(b)
    assert [x["prompt"] for x in a] != [x["prompt"] for x in c]
    assert [x["id"] for x in a] == [x["id"] for x in c]
    assert len({x["id"] for x in a}) == 6


def test_haystack_smaller_than_the_context_is_refused_or_repeated_on_request(tmp_path, tok):
    (tmp_path / "short.txt").write_text("The cat sat. The dog ran. A bird sang.", encoding="utf-8")
    hay = Haystack.load(HaystackSpec((str(tmp_path / "short.txt"),)), cache=False)
    with pytest.raises(HaystackTooSmall, match=r"short.txt.*holds \d+ tokens \(3 units\).*--allow-repeat"):
        build_case(hay, tok, task_preset("lwm_single"), 600, 50.0)
    case = build_case(hay, tok, task_preset("lwm_single"), 600, 50.0, allow_repeat=True)
    assert 1 + _count(tok, case["prompt"]) + case["answer_tokens"] == 600
    assert case["build"]["haystack_wrapped"] and case["prompt"].count(case["needles"][0]["text"]) == 1
    # Everything past one reading of the three sentences is repeated, and the case says how much.
    once = sum(len(ids) for ids in tok.encode_batch(hay.units))
    build = case["build"]
    assert build["repeat_tokens"] >= case["haystack_tokens"] - once - 3 and build["repeat_tokens"] > 0
    assert build["repeat_share"] == round(build["repeat_tokens"] / case["haystack_tokens"], 6)


def test_a_haystack_that_suffices_repeats_nothing(hay, tok):
    case = build_case(hay, tok, task_preset("lwm_single"), 4096, 50.0)
    assert case["build"]["repeat_tokens"] == 0 and case["build"]["repeat_share"] == 0.0
    total = sum(len(ids) for ids in tok.encode_batch(hay.units))
    with pytest.raises(HaystackTooSmall):
        build_case(hay, tok, task_preset("lwm_single"), total + 2000, 50.0)


def test_too_short_a_length_is_refused(hay, tok):
    with pytest.raises(LengthFitError, match="the template and needles alone take"):
        build_case(hay, tok, task_preset("multiquery"), 120, 50.0)


def test_recipe_only_cases_and_changed_haystacks(tmp_path, haystack_paths, tok):
    src = tmp_path / "copy.txt"
    src.write_text(open(haystack_paths[0], encoding="utf-8").read(), encoding="utf-8")
    hay = Haystack.load(HaystackSpec((str(src),)), cache=False)
    full = build_case(hay, tok, task_preset("lwm_multi"), 1500, 30.0)
    lean = build_case(hay, tok, task_preset("lwm_multi"), 1500, 30.0, include_prompt=False)
    assert "prompt" not in lean and case_prompt(lean) == full["prompt"]
    src.write_text(src.read_text(encoding="utf-8").replace("the", "a"), encoding="utf-8")
    with pytest.raises(CaseError, match="changed since the case was built"):
        rebuild_prompt(lean["recipe"])


def test_cases_jsonl_round_trip_and_errors(tmp_path, hay, tok):
    cases = list(build_cases(hay, tok, task_preset("lwm_single"), Grid((500,), (0, 100))))
    path = str(tmp_path / "cases.jsonl")
    assert write_cases(cases, path) == 2
    assert read_cases(path) == json.loads(json.dumps(cases))
    with open(path, "a", encoding="utf-8") as f:
        f.write("{broken\n")
    with pytest.raises(CaseError, match=r"cases\.jsonl:3: not valid JSON"):
        read_cases(path)
    write_cases(cases, path)
    with open(path, "a", encoding="utf-8") as f:
        f.write("[" * 100_000 + "\n")
    with pytest.raises(CaseError, match=r"cases\.jsonl:3: JSON nested too deeply"):
        read_cases(path)
    write_cases(cases, path)
    with open(path, "a", encoding="utf-8") as f:
        f.write("[1, 2]\n")
    with pytest.raises(CaseError, match=r"cases\.jsonl:3: not a JSON object \(got list\)"):
        read_cases(path)
    for bad, reason in ((b"\xff\xfe{}", "not UTF-8 text"), (b"[1, 2]", r"not a JSON object \(got list\)"),
                        (b"[" * 100_000, "JSON nested too deeply"), (b'{"id": 1}', r"not a needle case")):  # fmt: skip
        write_cases(cases, path)
        with open(path, "ab") as f:
            f.write(b"\n" + bad + b"\n")
        with pytest.raises(CaseError, match=rf"cases\.jsonl:4: {reason}"):
            read_cases(path)
    with pytest.raises(CaseError, match=r"missing\.jsonl: cannot read"):
        read_cases(str(tmp_path / "missing.jsonl"))
    write_cases(cases + cases[:1], path)
    with pytest.raises(CaseError, match="duplicate case ids"):
        read_cases(path)


def test_cases_as_records_read_back_through_the_data_source(tmp_path, hay, tok):
    from lwmkit.packing.manifest import verify_directory
    from lwmkit.packing.source import ShardDataSource

    cases = list(build_cases(hay, tok, task_preset("lwm_multi"), Grid((700, 1000), (25,))))
    manifest = write_case_records(cases, str(tmp_path / "ds"), tok)
    assert manifest["records"] == 2 and verify_directory(str(tmp_path / "ds")) == []
    src = ShardDataSource(str(tmp_path / "ds"))
    for case, rec in zip(cases, (src[0], src[1]), strict=True):
        tokens, weights = np.asarray(rec["tokens"]), np.asarray(rec["loss_weights"])
        n_prompt = case["prompt_tokens"]  # BOS + prompt
        assert tokens[0] == tok.bos_id and tokens[-1] == tok.eos_id
        assert tok.decode(tokens[1:n_prompt].tolist()) == case["prompt"]
        assert tok.decode(tokens[n_prompt:-1].tolist()) == reference_answer(case) == ", ".join(case["expected"])
        assert not weights[:n_prompt].any() and weights[n_prompt:].all()
        assert np.asarray(rec["atomic_spans"]).tolist() == [0, len(tokens)]
        assert not np.asarray(rec["vision_mask"]).any()


def test_building_and_evaluating_text_cases_never_imports_jax(haystack_paths, bpe_model):
    import subprocess
    import sys

    code = (
        "import sys, json\n"
        "import lwmkit.eval, lwmkit.eval.cli\n"
        "from lwmkit.eval import HaystackSpec, Haystack, build_case, task_preset, heatmap, evaluate\n"
        "from lwmkit.tokenizers.text import SentencePieceTokenizer\n"
        f"tok = SentencePieceTokenizer.from_file({bpe_model!r})\n"
        f"hay = Haystack.load(HaystackSpec({tuple(haystack_paths)!r}))\n"
        "build_case(hay, tok, task_preset('multikey'), 900, 50.0)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'grain'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
