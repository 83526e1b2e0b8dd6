"""Rule-based scoring of answers: no model judges them.

    substring  1.0 if every expected string is in the answer, else 0.0 (LWM: the number in the output)
    fraction   share of the expected strings found in the answer (multi-needle, multi-value, tracking)
    choice     1.0 if the first option letter the answer gives is the expected letter

Matching is case-insensitive and ignores runs of whitespace, so "Number: 1234567" and "1234567"
both contain "1234567", and "Sao  Paulo" matches "sao paulo".

Example:
    >>> score("fraction", "The numbers are 1234567 and 7654321.", ["1234567", "2222222"])
    0.5
    >>> score("choice", "(B) a red square", ["B"])
    1.0
"""

from __future__ import annotations

import re
from collections.abc import Sequence

SCORINGS = ("substring", "fraction", "choice")
_WS = re.compile(r"\s+")
_LETTER = re.compile(r"(?:^|[^A-Za-z])\(?([A-Z])(?:[).:\s]|$)")
_ANSWER_IS = re.compile(r"answer(?: is|:)\s*\(?([A-Z])\b", re.IGNORECASE)


def _norm(s: str) -> str:
    return _WS.sub(" ", s).strip().lower()


def choice_letter(answer: str) -> str | None:
    """The option letter an answer gives: "answer is X" if present, else the first standalone capital."""
    if m := _ANSWER_IS.search(answer):
        return m.group(1).upper()
    if m := _LETTER.search(answer.strip()):
        return m.group(1)
    return None


def score(scoring: str, answer: str, expected: Sequence[str]) -> float:
    """The score of `answer` in [0, 1].

    Raises:
      ValueError: for an unknown scoring rule or no expected strings.
    """
    if not expected:
        raise ValueError("score needs at least one expected string")
    if scoring == "choice":
        return float(choice_letter(answer) == expected[0].strip().upper())
    text = _norm(answer)
    found = [_norm(e) in text for e in expected]
    if scoring == "substring":
        return float(all(found))
    if scoring == "fraction":
        return sum(found) / len(found)
    raise ValueError(f"unknown scoring {scoring!r}; known: {list(SCORINGS)}")
