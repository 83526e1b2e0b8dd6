"""Sentence boundaries: abbreviations, initials and quotes never end a sentence; needles and cuts
respect that, on a passage in the style of Austen's *Emma* and on the shared public-domain texts."""

from __future__ import annotations

import os
import re

import pytest
from lwmkit.eval.cases import build_case
from lwmkit.eval.haystack import Haystack, HaystackSpec, split_units
from lwmkit.eval.sentences import TITLES, cut_allowed, split_sentences
from lwmkit.eval.tasks import task_preset

SHARED_TEXT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "text")

EMMA = (
    "Mr. Woodhouse was fond of society in his own way. He liked very much to have his friends come "
    "and see him; and from various united causes, from his long residence at Hartfield, and his good "
    "nature, from his fortune, his house, and his daughter, he could command the visits of his own "
    "little circle. \"Poor Miss Taylor!\" said Mr. Woodhouse. Mrs. Weston and Mr. Knightley came to "
    "dinner at St. Mary's; Dr. Perry called on Mr. Woodhouse at 9 a.m. on the day after. "
    "Capt. J. R. Weston wrote of it in vol. 2 of his letters.\n\n"
    "Emma smiled. \"Is it Mr. Elton you mean?\" she asked. Mr. Woodhouse could not agree.\n"
)


def test_titles_initials_and_quotes_do_not_end_a_sentence():
    got = split_sentences(EMMA)
    assert got[0] == "Mr. Woodhouse was fond of society in his own way."
    assert '"Poor Miss Taylor!" said Mr. Woodhouse.' in got
    assert "Mrs. Weston and Mr. Knightley came to dinner at St. Mary's; Dr. Perry called on Mr. Woodhouse at " \
           "9 a.m. on the day after." in got  # fmt: skip
    assert "Capt. J. R. Weston wrote of it in vol. 2 of his letters." in got
    assert got[-3:] == ["Emma smiled.", '"Is it Mr. Elton you mean?" she asked.', "Mr. Woodhouse could not agree."]
    for s in got:
        assert not re.search(r"\b(Mr|Mrs|Dr|St|Capt)\.$", s) and not re.search(r"\b[A-Z]\.$", s)


def test_a_paragraph_break_ends_a_sentence_even_without_a_stop():
    assert split_sentences("Chapter I\n\nIt rained") == ["Chapter I", "It rained"]


def test_cuts_never_part_an_abbreviation_from_its_name():
    text = "Then Mr. Woodhouse sat down."
    allowed = {c for c in range(len(text) + 1) if cut_allowed(text, c)}
    assert text.index("Mr.") + 3 not in allowed  # "... Mr." | "Woodhouse"
    assert text.index("Then") + 4 in allowed and len(text) in allowed
    assert not any(text[c - 1] == " " for c in allowed)  # never inside the space
    # An over-long sentence is split after a word, never right after "Mr.".
    long = " ".join(["Mr. Woodhouse"] * 40)
    for unit in split_units(long, max_unit_chars=100):
        assert not unit.endswith("Mr.") and len(unit) <= 100


def test_needles_never_sit_inside_a_sentence(tmp_path, tok):
    (tmp_path / "emma.txt").write_text(EMMA * 30, encoding="utf-8")
    hay = Haystack.load(HaystackSpec((str(tmp_path / "emma.txt"),)), cache=False)
    assert not any(u.endswith(("Mr.", "Mrs.", "Dr.", "St.", " J.", " R.")) for u in hay.units)
    task = task_preset("lwm_single")
    for depth in (3.0, 10.0, 25.0, 33.0, 50.0, 61.0, 77.0, 90.0, 97.0):
        case = build_case(hay, tok, task, 1500, depth)
        needle = case["needles"][0]
        before = case["prompt"][: needle["char_offset"]].rstrip()
        if before == case["recipe"]["prefix"].rstrip():
            continue  # the nearest boundary was the haystack's start
        assert before.endswith((".", "!", "?", '"')) and not re.search(r"\b(Mr|Mrs|Dr|St|Capt|[A-Z])\.$", before)
        assert not case["prompt"][needle["char_offset"] + len(needle["text"]) :].lstrip().startswith("Woodhouse")


@pytest.mark.realdata
def test_shared_texts_never_end_a_unit_on_a_title():
    if not os.path.isdir(SHARED_TEXT):
        pytest.skip(f"{SHARED_TEXT} is absent")
    for name in sorted(os.listdir(SHARED_TEXT)):
        with open(os.path.join(SHARED_TEXT, name), encoding="utf-8") as f:
            units = split_units(f.read())
        ending = [u for u in units if u.rsplit(" ", 1)[-1].rstrip(".").lower() in TITLES and u.endswith(".")]
        assert not ending, f"{name}: units end on a title: {ending[:3]}"
