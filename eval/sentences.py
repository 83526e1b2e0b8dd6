"""Sentence boundaries in English prose: where a needle may go, and where a unit may be cut.

A boundary follows `.`, `!` or `?` (and any closing quotes or brackets after it) and whitespace,
or is a paragraph break (a blank line). The rules are conservative: where a boundary is
doubtful none is made, because a missed boundary only coarsens where a needle can go, while a
false one puts a needle inside a sentence.

No boundary:
    after a title or a word that takes a number or a name ("Mr.", "Mrs.", "Dr.", "St.", "Capt.",
        "No. 5", "vol. ii"): `TITLES`, `NUMBERED`;
    after an initial ("J. R. R. Tolkien", "Emma W. Smith"), a single lower-case letter or a word in
        `LOWER` (a dictionary's "SLANG, n. A ...", "cf. The");
    before a word starting in lower case ("per cent. in", "e.g. the", '"Is it you?" she asked',
        "Washington, D.C. and back");
    before a digit after an abbreviation with inner dots ("a.m. 9").

Example:
    >>> split_sentences('"Mr. Woodhouse was fond of society," said Mrs. Weston. J. R. Tolkien came!  Why?')
    ['"Mr. Woodhouse was fond of society," said Mrs. Weston.', 'J. R. Tolkien came!', 'Why?']

Why not a library splitter (`pysbd`, `sentencex`, NLTK's Punkt): the units this module makes are
part of every case's haystack fingerprint, so they must not change with a library's release; the
rules here are few, conservative and tested (tests/eval/test_sentences.py), with no dependency. No
side-by-side measurement against those libraries was made yet.
"""

from __future__ import annotations

import re

# Words that precede a name or a number: never the end of a sentence when followed by a capital.
TITLES = frozenset(
    "mr mrs ms messrs mme mlle mmes dr drs st ste prof rev revd hon capt col gen lt sgt maj cmdr adm gov "
    "sen rep pres supt insp fr br mt ft".split()
)
# Words that precede a number ("No. 5", "vol. 2", "p. 14").
NUMBERED = frozenset("no nos vol vols p pp ch chap art fig figs sec sect ed eds op".split())
# Lower-case abbreviations a capital often follows inside a sentence (a dictionary's "SLANG, n. A ...").
LOWER = frozenset("adj adv prep conj interj pron cf viz vs".split())

_CANDIDATE = re.compile(r"([.!?]+)([\"'’”)\]»]*)(\s+)|\n[ \t\r\f\v]*\n\s*")
_WORD_BEFORE = re.compile(r"([\w.’']*)$")
_SPACES = re.compile(r"\s+")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


def _is_boundary(text: str, m: re.Match) -> bool:
    if m.group(1) is None:  # a paragraph break
        return True
    end = m.end()
    if end >= len(text) or _BLANK_LINE.search(m.group(3)):
        return True
    nxt = text[end]
    if nxt.islower():
        return False  # '"Is it you?" she asked', "per cent. in", "e.g. the"
    if m.group(1) != ".":
        return True  # "!", "?", "?!" and "..." followed by anything but lower case
    if m.group(2):
        return True  # 'said "Go home." Then': the quote closes the sentence
    word = _WORD_BEFORE.search(text[max(0, m.start() - 40) : m.start()]).group(1).lstrip("'’")
    bare = word.replace(".", "").lower()
    if bare in TITLES or word in LOWER or (len(word) == 1 and word.islower()):
        return False
    if bare in NUMBERED and nxt.isdigit():
        return False
    if len(word) == 1 and word.isupper() and nxt.isupper():
        return False  # an initial: "J. R. R. Tolkien"
    if "." in word and nxt.isdigit():
        return False  # "at 9 a.m. 10 minutes later" is rare; "a.m. 9" is not a boundary
    return True


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, whitespace between sentences left out."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _CANDIDATE.finditer(text):
        if not _is_boundary(text, m):
            continue
        end = m.start(3) if m.group(1) is not None else m.start()
        if text[start:end].strip():
            spans.append((start, end))
        start = m.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, each with its whitespace collapsed to single spaces."""
    out = []
    for a, b in sentence_spans(text):
        s = _SPACES.sub(" ", text[a:b]).strip()
        if s:
            out.append(s)
    return out


def cut_allowed(text: str, c: int) -> bool:
    """Whether a sentence `text` may be cut after its first `c` characters: only at the end of a word
    that does not end in "." (inside one sentence such a word is an abbreviation or an initial, and
    "Mr." must not be parted from "Woodhouse")."""
    if c <= 0 or c > len(text):
        return False
    if c == len(text):
        return True
    return text[c] == " " and text[c - 1] not in " ."
