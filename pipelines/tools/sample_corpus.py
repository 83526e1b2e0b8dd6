"""A built-in sample corpus, generated on the spot: Books3-style `jsonl.zst` with no download.

The books are made from a fixed word list and sentence templates by a seeded generator, so the same
seed always gives the same bytes. They read like plain, repetitive prose: enough for a tokenizer to
learn real merges and for packing to see a spread of lengths (from a short story to books longer
than a 16K-token record). One deliberately malformed line shows how failures are reported.

Example:
    >>> paths = write_sample_corpus("raw/", books=4, seed=0)
    >>> paths
    ['raw/books-00000.jsonl.zst', 'raw/notes.txt']
"""

from __future__ import annotations

import json
import os
import random

_NAMES = ["Ada", "Basil", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Lorenz"]
_PLACES = ["the harbour", "the old mill", "the library", "the northern road", "the market square",
           "the lighthouse", "the orchard", "the river crossing", "the observatory", "the station"]
_NOUNS = ["letter", "lantern", "map", "clock", "river", "winter", "garden", "promise", "ship", "song",
          "window", "bridge", "journal", "storm", "key", "field", "mountain", "secret", "voice", "road"]
_ADJS = ["quiet", "bright", "ancient", "narrow", "restless", "golden", "cold", "patient", "distant",
         "hidden", "gentle", "heavy", "strange", "familiar", "broken", "silver"]
_VERBS = ["remembered", "carried", "opened", "followed", "watched", "found", "answered", "crossed",
          "studied", "repaired", "described", "forgot", "returned to", "painted", "measured"]
_TEMPLATES = [
    "{n1} {v} the {a} {o} near {p}.",
    "In the {a} light of morning, {n1} and {n2} {v} the {o}.",
    "Nobody at {p} knew why the {o} was so {a}.",
    '"We should leave before the {o} turns {a}," said {n1}.',
    "{n2} wrote in the journal that the {o} had been {a} for {k} days.",
    "By evening the {a} {o} at {p} had changed everything {n1} believed.",
    "There were {k} steps between {p} and the {o}, and {n2} counted every one.",
    "{n1} asked {n2} whether the {o} could still be {v2}.",
]


def _sentence(rng: random.Random) -> str:
    n1, n2 = rng.sample(_NAMES, 2)
    return rng.choice(_TEMPLATES).format(
        n1=n1, n2=n2, v=rng.choice(_VERBS), v2=rng.choice(["saved", "trusted", "found", "read"]),
        a=rng.choice(_ADJS), o=rng.choice(_NOUNS), p=rng.choice(_PLACES), k=rng.randint(2, 999),
    )


def sample_book(rng: random.Random, paragraphs: int) -> str:
    """One book: a title line and `paragraphs` paragraphs in chapters of about 12."""
    title = f"The {rng.choice(_ADJS).title()} {rng.choice(_NOUNS).title()}"
    parts = [title, ""]
    for i in range(paragraphs):
        if i % 12 == 0:
            parts += [f"Chapter {i // 12 + 1}", ""]
        parts += [" ".join(_sentence(rng) for _ in range(rng.randint(3, 9))), ""]
    return "\n".join(parts)


def write_sample_corpus(directory: str, books: int = 24, seed: int = 0) -> list[str]:
    """Writes the sample corpus: one `jsonl.zst` of books (plus one malformed line) and one `.txt`.

    Returns:
      The written file paths.
    """
    import zstandard

    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    lines = []
    for i in range(books):
        # Mostly short books, a few long ones: a spread of lengths like a real shelf.
        paragraphs = rng.choice([8, 20, 40, 60, 120]) if i % 6 else rng.randint(300, 500)
        text = sample_book(rng, paragraphs)
        lines.append(json.dumps({"text": text, "meta": {"title": text.split("\n", 1)[0], "sample_id": i}}))
        if i == books // 2:
            lines.append('{"text": "a line cut short by a broken export')  # shows up in failures.jsonl
    data = ("\n".join(lines) + "\n").encode("utf-8")
    jsonl = os.path.join(directory, "books-00000.jsonl.zst")
    with open(jsonl, "wb") as f:
        f.write(zstandard.ZstdCompressor(level=3).compress(data))
    txt = os.path.join(directory, "notes.txt")
    with open(txt, "w", encoding="utf-8") as f:
        f.write(sample_book(rng, 30))
    return [jsonl, txt]


def sample_training_lines(paths: list[str]) -> list[str]:
    """Lines of the sample corpus for tokenizer training."""
    from lwmkit.pipelines.books.sources import iter_texts

    return [line for p in paths for text in iter_texts(p) for line in text.split("\n") if line]
