"""normalize_text: newlines unified, control characters removed, NFC; applied before hashing."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lwmkit.pipelines.engine.normalize import normalize_text

CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # every C0/C1 control and DEL but TAB, LF
# Text rich in the characters the rules care about, plus anything else.
TRICKY = st.lists(
    st.one_of(
        st.sampled_from(["\r", "\n", "\r\n", "\t", "\x0b", "\x0c", "\x00", "\x1b", "\x7f", "\x85", "\x9f",
                         "e\u0301", "\u0301", "\u212b", "\uac00", "\u1100\u1161", "\u2028", " ", "a"]),
        st.characters(blacklist_categories=("Cs",)),
    ),
    max_size=40,
).map("".join)


def test_docstring_example():
    assert normalize_text("Cafe\u0301\r\nline\x00two\x0cpage") == "Caf\u00e9\nlinetwo\npage"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("a\r\nb", "a\nb"),
        ("a\rb", "a\nb"),
        ("a\r\r\nb", "a\n\nb"),
        ("a\n\rb", "a\n\nb"),
        ("\r\n\r\n", "\n\n"),
        ("a\x0bb\x0cc", "a\nb\nc"),
        ("a\r\x0cb", "a\n\nb"),
    ],
)
def test_newlines_become_lf(raw, expected):
    assert normalize_text(raw) == expected


def test_controls_removed_tab_and_newline_kept():
    controls = "".join(chr(c) for c in [*range(0x00, 0x09), *range(0x0E, 0x20), *range(0x7F, 0xA0)])
    assert normalize_text(f"x{controls}y") == "xy"
    assert normalize_text("col1\tcol2\nrow2") == "col1\tcol2\nrow2"
    assert normalize_text("keep\u00a0nbsp\u2028ls\u200bzwsp") == "keep\u00a0nbsp\u2028ls\u200bzwsp"


def test_nfc():
    assert normalize_text("e\u0301") == "\u00e9"
    assert normalize_text("\u212b") == "\u00c5"  # ANGSTROM SIGN -> A WITH RING
    assert normalize_text("\u1100\u1161") == "\uac00"  # conjoining jamo compose
    assert normalize_text("\ufb01") == "\ufb01"  # NFC, not NFKC: the ligature stays


def test_control_between_base_and_combining_mark_still_composes():
    # Controls go first, then NFC: the mark meets its base.
    assert normalize_text("e\x00\u0301") == "\u00e9"


def test_already_normal_text_is_unchanged():
    text = "Chapter 1\n\n\tThe Golden Map: café, 漢字, 😀."
    assert normalize_text(text) == text


@settings(max_examples=300, deadline=None)
@given(TRICKY)
def test_output_properties(text):
    out = normalize_text(text)
    assert "\r" not in out
    assert not CONTROLS.search(out)
    assert unicodedata.is_normalized("NFC", out)
    # Only removal and the newline rules change text: tabs and line feeds never disappear.
    assert out.count("\t") == text.count("\t")
    assert out.count("\n") == len(re.findall(r"\r\n?|[\n\x0b\x0c]", text))


@settings(max_examples=300, deadline=None)
@given(TRICKY)
def test_idempotent(text):
    once = normalize_text(text)
    assert normalize_text(once) == once
