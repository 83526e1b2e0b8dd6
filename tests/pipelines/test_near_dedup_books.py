"""`lwm-pack books --near-dedup`: planted near-copies are removed (each a failures.jsonl row naming its
kept twin and the similarity), different chapters of one book are kept, the manifest records the
parameters, histogram and cluster sizes, and a rerun reads the stored sketches instead of
recomputing them."""

from __future__ import annotations

import json
import random

import pytest
from lwmkit.packing import verify_directory
from lwmkit.pipelines import BooksOptions, run_books
from lwmkit.pipelines.cli import main
from lwmkit.pipelines.dedup.planted import change_words, chunked_books, reflow, shorten

from .helpers import SHARED_DATA, count_sketch_calls, record, write_jsonl

CHAPTERS = 6


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """a.jsonl: six chapters of one book (non-copies of each other); b.jsonl: near-copies of
    chapters 0-2 (a few words changed, re-flowed lines and punctuation, the last 8% cut) and a
    second shortened copy of chapter 3."""
    d = tmp_path_factory.mktemp("planted")
    chapters = list(chunked_books(SHARED_DATA / "text" / "devils_dictionary.txt", "dd", 1200).values())[:CHAPTERS]
    rng = random.Random(7)
    copies = [(change_words(chapters[0], rng), 0), (reflow(chapters[1], rng), 1),
              (shorten(chapters[2], rng), 2), (shorten(chapters[3], rng, keep=0.85), 3)]
    a = write_jsonl(d / "a.jsonl", [record(t) for t in chapters])
    b = write_jsonl(d / "b.jsonl", [record(t) for t, _ in copies])
    return d, a, b, [i for _, i in copies]


def _failures(out) -> list[dict]:
    return [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]


def _run_cli(d, out, bpe_model, *extra) -> dict:
    rc = main(["books", "--input", str(d / "*.jsonl"), "--tokenizer", bpe_model, "--seq-len", "1024",
               "--output", str(out), "--quiet", *extra])
    assert rc in (0, None)
    return json.loads((out / "manifest.json").read_text())


def test_every_planted_copy_is_removed_and_no_chapter(planted, tmp_path, bpe_model):
    d, a, b, originals = planted
    out = tmp_path / "out"
    manifest = _run_cli(d, out, bpe_model, "--near-dedup")
    rows = [r for r in _failures(out) if r["reason"] == "dedup:near_duplicate"]
    removed = sorted((r["file"], r["line"]) for r in rows)
    first_line = min(r["line"] for r in rows)  # the readers' line numbering (1-based)
    assert removed == [(b, first_line + i) for i in range(len(originals))]
    for r in rows:
        twin = originals[r["line"] - first_line]
        assert r["stage"] == "near_dedup"
        assert r["kept"] == f"{a}:{first_line + twin}"
        assert 0.8 <= r["similarity"] <= 1.0
        assert f"near copy of {a}:{first_line + twin} (similarity" in r["detail"]
    assert manifest["documents"] == CHAPTERS
    assert manifest["stages"]["near_dedup"] == {"seen": CHAPTERS + 4, "kept": CHAPTERS, "dropped": 4}
    near = manifest["near_dedup"]
    assert near["removed"] == 4
    assert sum(near["histogram"]["counts"]) == 4
    assert near["cluster_sizes"] == {"2": 4}
    assert near["params"]["threshold"] == 0.8 and near["params"]["method"] == "minhash-lsh"
    assert manifest["options"]["near_dedup"] is True
    verify_directory(str(out / "documents"))


def test_near_dedup_is_off_by_default_and_the_threshold_is_an_option(planted, tmp_path, bpe_model):
    d, *_ = planted
    manifest = _run_cli(d, tmp_path / "off", bpe_model)
    assert manifest["documents"] == CHAPTERS + 4
    assert "near_dedup" not in manifest and "near_dedup" not in manifest["stages"]
    # At 0.95 the copy cut to 85% stays; what goes is at least 0.95 similar.
    strict = _run_cli(d, tmp_path / "strict", bpe_model, "--near-dedup", "--near-threshold", "0.95")
    rows = [r for r in _failures(tmp_path / "strict") if r["reason"] == "dedup:near_duplicate"]
    assert 1 <= strict["near_dedup"]["removed"] == len(rows) < 4
    assert all(r["similarity"] >= 0.95 for r in rows)
    assert strict["near_dedup"]["params"]["threshold"] == 0.95
    with pytest.raises(ValueError, match="near_threshold"):
        BooksOptions(inputs=("x",), output="o", tokenizer="t", near_dedup=True, near_threshold=1.5)


def test_a_rerun_reads_the_stored_sketches(planted, tmp_path, bpe_model, monkeypatch):
    d, *_ = planted
    calls = count_sketch_calls(monkeypatch, "text_sketch")
    out = tmp_path / "out"

    def options(seq_lens):
        return BooksOptions(inputs=(str(d / "*.jsonl"),), output=str(out), tokenizer=bpe_model, seq_lens=seq_lens,
                            near_dedup=True, direct_running_mode="in_memory")

    first = run_books(options((1024,)))
    assert len(calls) == CHAPTERS + 4  # one sketch per document, in the tokenize stage
    rows = [r for r in _failures(out) if r["reason"] == "dedup:near_duplicate"]
    # Other packing options reuse the work store: no document is sketched again, same verdicts.
    second = run_books(options((512,)))
    assert len(calls) == CHAPTERS + 4
    assert [r for r in _failures(out) if r["reason"] == "dedup:near_duplicate"] == rows
    assert second["near_dedup"] == first["near_dedup"]
    assert second["stages"] == first["stages"]


def test_the_report_shows_the_similarity_histogram_and_cluster_sizes(planted, tmp_path, bpe_model):
    d, *_ = planted
    out = tmp_path / "out"
    _run_cli(d, out, bpe_model, "--near-dedup")
    assert main(["report", str(out)]) in (0, None)
    page = (out / "report" / "index.html").read_text()
    section = page[page.index("<h2>Near-duplicates</h2>"):]
    section = section[:section.index("</section>")]
    assert 'alt="Histogram of near-duplicate similarity and bar chart of cluster sizes"' in section
    assert "data:image/png;base64," in section and "4 removed; method minhash-lsh" in section
    _run_cli(d, tmp_path / "off", bpe_model)
    assert main(["report", str(tmp_path / "off")]) in (0, None)
    assert "Near-duplicates" not in (tmp_path / "off" / "report" / "index.html").read_text()
