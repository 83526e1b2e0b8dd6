"""Needle pools, tasks, templates, grids and scoring rules."""

from __future__ import annotations

import random
import re

import pytest
from lwmkit.eval.needles import CITIES, draw_keys, draw_values, english_list
from lwmkit.eval.scoring import choice_letter, score
from lwmkit.eval.tasks import (
    GRID_PRESETS,
    TASK_PRESETS,
    TEMPLATES,
    Grid,
    TaskConfig,
    Template,
    make_needles,
    task_preset,
)


def test_city_pool_has_no_duplicates_unlike_lwms():
    assert len(set(CITIES)) == len(CITIES) >= 100


@pytest.mark.parametrize("kind", ["city", "word", "uuid", "var"])
def test_keys_are_distinct_and_reproducible(kind):
    for seed in range(30):
        keys = draw_keys(kind, 12, random.Random(seed))
        assert len(set(keys)) == 12
        assert keys == draw_keys(kind, 12, random.Random(seed))
    assert not set(draw_keys(kind, 5, random.Random(0), exclude=keys)) & set(keys)


def test_values_are_seven_digits_and_distinct():
    vals = draw_values("number", 200, random.Random(3))
    assert len(set(vals)) == 200 and all(re.fullmatch(r"[1-9]\d{6}", v) for v in vals)
    with pytest.raises(ValueError, match="only .* distinct cities"):
        draw_keys("city", len(CITIES) + 1, random.Random(0))
    with pytest.raises(ValueError, match="unknown value kind 'date'"):
        draw_values("date", 1, random.Random(0))


def test_english_list():
    assert [english_list(x) for x in (["a"], ["a", "b"], ["a", "b", "c"])] == ["a", "a and b", "a, b, and c"]


def test_lwm_single_is_lwms_needle_question_and_template():
    ns = make_needles(task_preset("lwm_single"), random.Random(0), 0.4)
    (n,) = ns.needles
    assert n.text == f"\nThe special magic {n.key} number is: {n.value}\n" and n.depth == 0.4
    assert ns.question == f"What is the special magic {n.key} number?" and ns.expected == [n.value]
    prefix, suffix = TEMPLATES["lwm"].split(ns.question)
    assert prefix == "You are a helpful assistant. USER: "
    assert suffix == (
        f" {ns.question} Don't give information outside the document or repeat your findings. "
        "Keep your response short and direct. ASSISTANT: "
    )


@pytest.mark.parametrize("name", list(TASK_PRESETS))
def test_every_task_has_distinct_keys_values_and_asks_what_it_hid(name):
    task = task_preset(name)
    for seed in range(20):
        ns = make_needles(task, random.Random(seed), 0.3)
        texts = [n.text for n in ns.needles]
        assert len(set(texts)) == len(texts)
        assert len({n.value for n in ns.needles}) == len(ns.needles) or task.kind == "variable_tracking"
        if task.kind == "niah":
            assert len({n.key for n in ns.needles}) == task.needles
            assert len(ns.asked) == task.queries and set(ns.asked) <= {n.key for n in ns.needles}
            by_key: dict[str, list[str]] = {}
            for n in ns.needles:
                by_key.setdefault(n.key, []).append(n.value)
            assert ns.expected == [v for k in ns.asked for v in by_key[k]]
            assert len(ns.expected) == task.queries * task.values_per_key
            assert all(k in ns.question for k in ns.asked)
        first = [n for n in ns.needles if n.depth == 0.3]
        assert first, "the first asked needle carries the requested depth"
        assert all(0 <= n.depth <= 1 for n in ns.needles)


def test_variable_tracking_chain_is_in_order():
    ns = make_needles(task_preset("variable_tracking"), random.Random(5), 0.2)
    names = ns.expected
    assert ns.needles[0].text == f"VAR {names[0]} = {ns.asked[0]}"
    for i in range(1, len(names)):
        assert ns.needles[i].text == f"VAR {names[i]} = VAR {names[i - 1]}"
    depths = [n.depth for n in ns.needles]
    assert depths == sorted(depths) and depths[0] == 0.2
    assert f"{len(names)} variables are assigned the value {ns.asked[0]}" in ns.answer_prefix


def test_config_errors_name_field_value_and_range():
    with pytest.raises(ValueError, match=r"TaskConfig.queries=5; allowed: 1..needles \(4\)"):
        task_preset("multiquery", queries=5)
    with pytest.raises(ValueError, match=r"TaskConfig.template='chatml'"):
        TaskConfig("x", template="chatml")
    with pytest.raises(ValueError, match=r"unknown needle task 'nope'; known: \['lwm_single'"):
        task_preset("nope")
    with pytest.raises(ValueError, match=r"Grid.depths=\(120,\)"):
        Grid((100,), (120,))
    with pytest.raises(ValueError, match="exactly once"):
        Template("no context here")


def test_template_fills_placeholders_once():
    t = Template("{intro}|{context}|{question}|{answer_prefix}")
    # A question that itself contains a placeholder-like string is not substituted again.
    assert t.split("Q {intro}?", intro="I", answer_prefix="A") == ("I|", "|Q {intro}?|A")


def test_grid_presets():
    assert len(GRID_PRESETS["quick"].lengths) == 10 and len(GRID_PRESETS["quick"].depths) == 10
    assert max(GRID_PRESETS["lwm_1m"].lengths) == 1_000_000
    assert GRID_PRESETS["ruler"].lengths == (4096, 8192, 16384, 32768, 65536, 131072)
    assert GRID_PRESETS["tiny"].depths == (0, 50, 100)


def test_scoring_rules():
    assert score("substring", "It is 1234567.", ["1234567"]) == 1.0
    assert score("substring", "It is 1234568.", ["1234567"]) == 0.0
    assert score("fraction", "1111111 and 3333333", ["1111111", "2222222", "3333333", "4444444"]) == 0.5
    assert score("substring", "SAO  paulo", ["Sao Paulo"]) == 1.0
    assert score("choice", "(C) a dog", ["C"]) == 1.0
    assert score("choice", "I think the answer is B.", ["C"]) == 0.0
    assert choice_letter("the answer: d") == "D" and choice_letter("no idea") is None
    with pytest.raises(ValueError, match="unknown scoring 'judge'"):
        score("judge", "x", ["x"])
