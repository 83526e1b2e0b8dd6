"""The Beam stages: the same bytes on every runner and for every input order; exact verification;
bad input named."""

import random

import apache_beam as beam
import numpy as np
import pytest
from lwmkit.pipelines.dedup import MinHashConfig, NearDuplicates, Sketch, TextMatcher
from lwmkit.pipelines.dedup.planted import plant_copies

from tests.pipelines.dedup.runs import run_sketches, run_text
from tests.pipelines.dedup.test_text import random_book


def _corpus(seed: int = 0):
    rng = random.Random(seed)
    books = {f"book-{i:02d}": random_book(rng, 2500) for i in range(8)}
    return plant_copies(books, per_edit=2, seed=seed)


@pytest.mark.slow
def test_in_memory_and_multi_processing_write_identical_bytes(tmp_path):
    docs, truth = _corpus()
    items = sorted(docs.items())
    a = run_text(items, TextMatcher(), tmp_path / "in_memory.jsonl", mode="in_memory")
    b = run_text(items, TextMatcher(), tmp_path / "multi.jsonl", mode="multi_processing")
    assert (tmp_path / "in_memory.jsonl").read_bytes() == (tmp_path / "multi.jsonl").read_bytes()
    assert {(c, o) for c, o, _ in truth} <= {(r["key"], r["kept"]) for r in a} and a == b


def test_input_order_does_not_change_the_result(tmp_path):
    docs, _ = _corpus(1)
    items = sorted(docs.items())
    first = run_text(items, TextMatcher(), tmp_path / "a.jsonl")
    random.Random(2).shuffle(items)
    second = run_text(items, TextMatcher(), tmp_path / "b.jsonl")
    assert first == second and (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_exact_verification_reports_exact_jaccard_edges(tmp_path):
    docs, truth = _corpus(2)
    exact = TextMatcher(MinHashConfig(verify="exact"))
    rows = run_text(sorted(docs.items()), exact, tmp_path / "exact.jsonl", exact=True)
    assert {(c, o) for c, o, _ in truth} <= {(r["key"], r["kept"]) for r in rows}
    with pytest.raises(ValueError, match="needs the texts"):
        NearDuplicates(exact)


def test_a_bucket_of_unrelated_documents_removes_nothing(tmp_path):
    # Identical first band, different everything else: a candidate pair that verification refuses.
    base = np.arange(128, dtype=np.uint32)
    other = base.copy()
    other[TextMatcher().banding.rows:] += 1000
    rows = run_sketches([Sketch("a", 10, base), Sketch("b", 10, other)], TextMatcher(), tmp_path / "d.jsonl")
    assert rows == []


def test_empty_documents_match_nothing(tmp_path):
    rows = run_text([("a", ""), ("b", " ... "), ("c", "")], TextMatcher(), tmp_path / "e.jsonl")
    assert rows == []


def test_one_key_for_two_documents_is_an_error():
    sketches = [Sketch("same", 5, np.zeros(128, dtype=np.uint32)), Sketch("same", 6, np.zeros(128, dtype=np.uint32))]
    with pytest.raises(Exception, match="'same' names two different documents"):
        with beam.Pipeline() as p:
            _ = p | beam.Create(sketches) | NearDuplicates(TextMatcher())
