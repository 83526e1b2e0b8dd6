"""Planted near-copies of books: the edits that other editions, scans and uploads make, and a corpus
with a truth list, for tests, `bench/near_dedup.py` and a user's own threshold checks.

Edits (each seeded, so the same seed gives the same text):
    change_words   a few words replaced ("the king" -> "the kingdom")
    reflow         other line breaks and punctuation (a re-typeset edition)
    shorten        the last part missing (a truncated scan)

Example:
    >>> books = {"ge": genesis, "ex": exodus}
    >>> docs, truth = plant_copies(books, per_edit=1, seed=0)
    >>> sorted(docs)
    ['ex', 'ge', 'ge~change_words', 'ex~reflow', 'ge~shorten']          # (order aside)
    >>> truth
    [('ex~reflow', 'ex', 'reflow'), ('ge~change_words', 'ge', 'change_words'), ...]
"""

from __future__ import annotations

import random
import re
import textwrap
from pathlib import Path

_REPLACEMENTS = ["lantern", "harbour", "silver", "northern", "quietly", "orchard", "thirteen", "compass"]


def change_words(text: str, rng: random.Random, share: float = 0.005) -> str:
    """Replaces `share` of the words (at least one) by other words, keeping all whitespace."""
    parts = re.split(r"(\s+)", text)
    idx = [i for i in range(0, len(parts), 2) if parts[i]]
    for i in rng.sample(idx, max(1, int(len(idx) * share))):
        parts[i] = rng.choice(_REPLACEMENTS)
    return "".join(parts)


def reflow(text: str, rng: random.Random, width: int = 0) -> str:
    """The same words with other line breaks (wrapped at 50-90 columns) and other punctuation."""
    width = width or rng.randint(50, 90)
    swapped = text.translate(str.maketrans({",": ";", ";": ",", ":": " -", "'": "\u2019", '"': "\u201c"}))
    return "\n".join(textwrap.wrap(" ".join(swapped.split()), width))


def shorten(text: str, rng: random.Random, keep: float = 0.92) -> str:
    """The first `keep` of the lines (a truncated copy)."""
    lines = text.split("\n")
    return "\n".join(lines[: max(1, int(len(lines) * keep))])


EDITS = {"change_words": change_words, "reflow": reflow, "shorten": shorten}


def plant_copies(books: dict[str, str], per_edit: int, seed: int) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """The books plus `per_edit` copies of randomly chosen books per edit.

    Returns:
      docs: key -> text (originals under their keys, copies under "<original>~<edit>").
      truth: sorted (copy key, original key, edit) rows.

    Raises:
      ValueError: more copies per edit than books.
    """
    if per_edit > len(books):
        raise ValueError(f"per_edit={per_edit} exceeds the {len(books)} books")
    rng = random.Random(seed)
    docs = dict(books)
    truth = []
    for edit, fn in EDITS.items():
        for key in rng.sample(sorted(books), per_edit):
            copy = f"{key}~{edit}"
            docs[copy] = fn(books[key], rng)
            truth.append((copy, key, edit))
    return docs, sorted(truth)


def kjv_books(path: str | Path) -> dict[str, str]:
    """The King James Bible file of the shared data (`Ge1:1 In the beginning ...`) cut into its books.

    Books are keyed "kjv-NN-<abbreviation>" in order; a run of verses with one prefix is one book.
    """
    books: dict[str, list[str]] = {}
    prev = None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = re.match(r"([1-3]?[A-Za-z]+)\d+:\d+ ", line)
        if not m:
            continue
        if m.group(1) != prev:
            prev = m.group(1)
            books[f"kjv-{len(books):02d}-{prev}"] = []
        books[next(reversed(books))].append(line)
    return {k: "\n".join(v) for k, v in books.items()}


def chunked_books(path: str | Path, prefix: str, words: int) -> dict[str, str]:
    """A text cut at line boundaries into books of about `words` words, keyed "<prefix>-NN"."""
    books: dict[str, str] = {}
    lines: list[str] = []
    count = 0
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        lines.append(line)
        count += len(line.split())
        if count >= words:
            books[f"{prefix}-{len(books):02d}"] = "\n".join(lines)
            lines, count = [], 0
    if lines:
        books[f"{prefix}-{len(books):02d}"] = "\n".join(lines)
    return books
