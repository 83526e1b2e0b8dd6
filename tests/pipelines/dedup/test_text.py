"""Books: planted near-copies are removed, non-copies (other chapters of one book) are kept.

Each test runs the real Beam stages (TextSketches -> NearDuplicates) at the default thresholds.
"""

import random

import pytest
from lwmkit.pipelines.dedup import MinHashConfig, TextMatcher, shingles, text_sketch, words
from lwmkit.pipelines.dedup.planted import change_words, kjv_books, plant_copies, reflow, shorten
from lwmkit.pipelines.dedup.text import exact_jaccard, shingle_hashes

from tests.pipelines.dedup.runs import run_text
from tests.pipelines.helpers import SHARED_DATA

KJV = SHARED_DATA / "text" / "kjv_bible.txt"
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_VOCAB = sorted({"".join(random.Random(i).choices(_LETTERS, k=3 + i % 6)) for i in range(5000)})


def random_book(rng: random.Random, n_words: int) -> str:
    lines = []
    for _ in range(n_words // 12):
        lines.append(" ".join(rng.choice(_VOCAB) for _ in range(12)) + rng.choice([".", ",", "!", ";"]))
    return "\n".join(lines)


def test_simplification_ignores_case_punctuation_digits_and_line_breaks():
    assert words("It was the BEST of times,\nit was 1,999!") == ["it", "was", "the", "best", "of", "times", "it", "was", "0", "0"]
    assert shingles("a b c d e f", 5) == ["a b c d e", "b c d e f"]
    assert shingles("too short", 5) == ["too short"] and shingles(" ,; ", 5) == []
    cfg = MinHashConfig()
    a = text_sketch("a", "The cat sat; on the mat.\nThen it slept, soundly!", cfg)
    b = text_sketch("b", "the  cat sat on the mat then\r\nit slept soundly", cfg)
    assert TextMatcher(cfg).similarity(a, b) == 1.0 and a.size == b.size == 10


def test_config_is_validated_and_recorded():
    for bad, match in [(dict(threshold=1.2), "threshold"), (dict(bands=3), "bands and rows"),
                       (dict(bands=20, rows=10), "exceeds num_perm"), (dict(verify="magic"), "verify")]:
        with pytest.raises(ValueError, match=match):
            MinHashConfig(**bad)
    p = TextMatcher().params()
    assert (p["bands"], p["rows"], p["threshold"], p["num_perm"], p["shingle"]) == (14, 9, 0.8, 128, "word 5-gram")
    assert p["library"] == "rensa.RMinHash" and p["candidate_probability_at_threshold"] > 0.85
    # A changed threshold reuses stored signatures; another num_perm does not.
    assert TextMatcher(MinHashConfig(threshold=0.7)).fingerprint == TextMatcher().fingerprint
    assert TextMatcher(MinHashConfig(num_perm=256)).fingerprint != TextMatcher().fingerprint


def test_estimate_tracks_exact_jaccard():
    rng = random.Random(3)
    base = random_book(rng, 6000)
    cfg = MinHashConfig()
    for share in (0.002, 0.01, 0.03):
        copy = change_words(base, random.Random(1), share)
        exact = exact_jaccard(shingle_hashes(base), shingle_hashes(copy))
        est = TextMatcher(cfg).similarity(text_sketch("a", base, cfg), text_sketch("b", copy, cfg))
        assert abs(est - exact) < 0.1, (share, est, exact)


def test_planted_copies_of_generated_books(tmp_path):
    rng = random.Random(0)
    books = {f"book-{i:02d}": random_book(rng, 3000 + 500 * i) for i in range(10)}
    docs, truth = plant_copies(books, per_edit=2, seed=1)
    rows = run_text(sorted(docs.items()), TextMatcher(), tmp_path / "dups.jsonl")
    assert {(r["key"], r["kept"]) for r in rows} == {(c, o) for c, o, _ in truth}
    copies_of = {o: sum(1 for _, t, _ in truth if t == o) for _, o, _ in truth}
    assert all(0.8 <= r["similarity"] <= 1.0 for r in rows)
    assert all(r["cluster_size"] == 1 + copies_of[r["kept"]] for r in rows)


def test_two_copies_of_one_book_make_one_cluster_around_the_longest(tmp_path):
    rng = random.Random(5)
    book = random_book(rng, 4000)
    docs = {"z-original": book, "a-reflowed": reflow(book, rng), "m-edited": change_words(book, rng),
            "other": random_book(rng, 4000)}
    docs["z-original"] += "\nAn afterword of a few more words."  # the longest survives, whatever its key
    rows = run_text(sorted(docs.items()), TextMatcher(), tmp_path / "dups.jsonl")
    assert [(r["key"], r["kept"], r["cluster_size"]) for r in rows] == [
        ("a-reflowed", "z-original", 3), ("m-edited", "z-original", 3)]


@pytest.mark.realdata
def test_kjv_planted_copies_removed_other_chapters_kept(tmp_path):
    if not KJV.is_file():
        pytest.skip(f"real sample text not found at {KJV} (the shared data folder beside the checkout)")
    books = kjv_books(KJV)
    # Non-copies: chapters of one book (same style, names and formulas) are separate documents.
    chapters: dict[str, list[str]] = {}
    for line in books["kjv-00-Ge"].split("\n") + books["kjv-18-Psa"].split("\n"):
        ref = line.split(" ", 1)[0]
        chapters.setdefault(f"{ref.split(':')[0]}", []).append(line)
    pool = {k: "\n".join(v) for k, v in chapters.items() if len(v) >= 20}  # Genesis 1-50, long psalms
    pool.update({k: v for k, v in books.items() if k.split("-", 2)[2] in ("Exo", "Ruth", "Job", "Mat", "Mark", "Luke")})
    rng = random.Random(7)
    docs = dict(pool)
    truth = set()
    for edit in (change_words, reflow, shorten):
        for key in rng.sample(sorted(pool), 4):
            docs[f"{key}~{edit.__name__}"] = edit(pool[key], rng)
            truth.add((f"{key}~{edit.__name__}", key))
    rows = run_text(sorted(docs.items()), TextMatcher(), tmp_path / "dups.jsonl")
    assert {(r["key"], r["kept"]) for r in rows} == truth
