"""Faults: transient ones are retried without duplicates, permanent ones land in failures, a killed run resumes."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import textwrap

import pytest
from lwmkit.packing import ShardDataSource
from lwmkit.pipelines import BooksOptions, run_books
from lwmkit.pipelines.books import job as books_lib

from .faults import Faulty
from .helpers import book, record, write_jsonl

SEQ = 512


def write_two_files(tmp_path):
    """a.jsonl (books 1-6) and b.jsonl (books 7-11) under tmp_path/in; returns the folder."""
    d = tmp_path / "in"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [record(book(i, 5)) for i in range(1, 7)])
    write_jsonl(d / "b.jsonl", [record(book(i, 5)) for i in range(7, 12)])
    return d


@pytest.fixture
def corpus(tmp_path):
    return write_two_files(tmp_path)


def books_options(corpus, out, tokenizer, **kw) -> BooksOptions:
    """The fault and resume tests' books job over `corpus`; `kw` overrides any option."""
    kw = {"seq_lens": (SEQ,), "shard_tokens": 2048, "direct_running_mode": "in_memory", **kw}
    return BooksOptions(inputs=(str(corpus / "*.jsonl"),), output=str(out), tokenizer=tokenizer, **kw)


_options = books_options


def _docs(out) -> dict[tuple[str, int], list[int]]:
    src = ShardDataSource(str(out / "documents"))
    import pyarrow.parquet as pq

    t = pq.read_table(out / "documents" / "documents.parquet", columns=["doc_id", "source_file", "source_line"])
    where = {d: (os.path.basename(f), n) for d, f, n in zip(*t.to_pydict().values(), strict=True)}
    return {where[int(r["doc_id"])]: r["tokens"].tolist() for r in (src[i] for i in range(len(src)))}


def test_transient_faults_are_retried_and_permanent_ones_become_failures(corpus, tmp_path, bpe_model, monkeypatch):
    clean = _docs_of_run(corpus, tmp_path / "clean", bpe_model)
    state = tmp_path / "faults"
    state.mkdir()
    real = books_lib.Tokenize
    injected = {}

    def faulty_tokenize(tokenizer):
        injected["fn"] = Faulty(real(tokenizer), str(state), fail_on={("b.jsonl", 2): 2, ("a.jsonl", 3): None})
        return injected["fn"]

    monkeypatch.setattr(books_lib, "Tokenize", faulty_tokenize)
    manifest = run_books(_options(corpus, tmp_path / "out", bpe_model))
    docs = _docs(tmp_path / "out")

    # b.jsonl:2 failed twice, then went through once: present exactly once, identical to a clean run.
    assert injected["fn"].attempts("b.jsonl", 2) == 3
    assert docs[("b.jsonl", 2)] == clean[("b.jsonl", 2)]
    # a.jsonl:3 failed on every attempt: dropped with its reason, the job went on.
    assert injected["fn"].attempts("a.jsonl", 3) == 3
    assert ("a.jsonl", 3) not in docs
    assert {k: v for k, v in clean.items() if k != ("a.jsonl", 3)} == docs
    rows = [json.loads(x) for x in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert [(r["stage"], os.path.basename(r["file"]), r["line"], r["reason"]) for r in rows] == [
        ("tokenize", "a.jsonl", 3, "stage_error")]
    assert "InjectedFault" in rows[0]["detail"] and "3 attempts" in rows[0]["detail"]
    assert manifest["stages"]["tokenize"] == {"seen": 11, "kept": 10, "dropped": 1}
    assert manifest["documents"] == 10


def _docs_of_run(corpus, out, tokenizer):
    run_books(_options(corpus, out, tokenizer))
    return _docs(out)


KILLED_RUN = textwrap.dedent("""
    import sys
    from lwmkit.pipelines.books import job as books_lib
    from lwmkit.pipelines import BooksOptions, run_books
    sys.path.insert(0, {tests!r})
    from pipelines.faults import Faulty

    real = books_lib.Tokenize
    books_lib.Tokenize = lambda tok: Faulty(real(tok), {state!r}, after=4, kill=True)
    run_books(BooksOptions(inputs=({inputs!r},), output={out!r}, tokenizer={tok!r}, seq_lens=({seq},),
                           shard_tokens=2048, direct_running_mode="in_memory", force=True))
""")


def test_a_killed_run_leaves_nothing_that_looks_complete_and_a_rerun_finishes_it(corpus, tmp_path, bpe_model):
    out = tmp_path / "out"
    state = tmp_path / "faults"
    state.mkdir()
    # First a complete run into `out`, then one killed mid-way over it (the worker dies on the
    # fifth record): the old manifests must be gone before anything is rewritten.
    run_books(_options(corpus, out, bpe_model, force=True))
    script = KILLED_RUN.format(tests=os.path.dirname(os.path.dirname(__file__)), state=str(state),
                               inputs=str(corpus / "*.jsonl"), out=str(out), tok=bpe_model, seq=SEQ)
    env = {**os.environ, "PYTHONPATH": ""}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*/manifest.json"))

    # The rerun (same options) completes, and equals an uninterrupted run byte for byte.
    run_books(_options(corpus, out, bpe_model))
    run_books(_options(corpus, tmp_path / "clean", bpe_model))
    for dataset in ("documents", f"packed-{SEQ}"):
        names = sorted(p.name for p in (out / dataset).iterdir() if ".array_record-" in p.name)
        assert names == sorted(p.name for p in (tmp_path / "clean" / dataset).iterdir() if ".array_record-" in p.name)
        match, mismatch, errors = filecmp.cmpfiles(out / dataset, tmp_path / "clean" / dataset, names, shallow=False)
        assert not mismatch and not errors, (dataset, mismatch, errors)
