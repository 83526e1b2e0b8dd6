"""Resume and retry: a killed job redoes only unfinished work; --retry-failures redoes only failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from lwmkit.pipelines import run_books
from lwmkit.pipelines.books import job as books_lib
from lwmkit.pipelines.engine import work_store
from lwmkit.pipelines.engine.work_store import (
    ReadReceipt,
    UnitReader,
    WorkStoreError,
    receipt_paths,
)

from .faults import Faulty
from .test_books import compare_outputs
from .test_faults import SEQ, books_options, write_two_files

_options = books_options


@pytest.fixture
def corpus(tmp_path):
    return write_two_files(tmp_path)


def _reset(state) -> None:
    for f in os.listdir(state):
        os.remove(state / f)


def _tokenize_calls(state) -> int:
    return sum(os.path.getsize(state / f) for f in os.listdir(state) if f.startswith("attempt-"))


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """Counts the tokenize stage's calls (and can fail chosen records) through `Faulty`."""
    state = tmp_path / "calls"
    state.mkdir()
    real = books_lib.Tokenize
    fail_on: dict = {}
    monkeypatch.setattr(
        books_lib, "Tokenize", lambda tok: Faulty(real(tok), str(state), fail_on=fail_on)
    )
    return state, fail_on


def _shard_stats(out) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in out.glob("*/*.array_record-*")
    }


KILLED_RUN = textwrap.dedent("""
    import sys
    from lwmkit.pipelines.books import job as books_lib
    from lwmkit.pipelines import BooksOptions, run_books
    sys.path.insert(0, {tests!r})
    from pipelines.faults import Faulty

    real = books_lib.Tokenize
    books_lib.Tokenize = lambda tok: Faulty(real(tok), {state!r}, after={after}, kill=True)
    run_books(BooksOptions(inputs=({inputs!r},), output={out!r}, tokenizer={tok!r}, seq_lens=({seq},),
                           shard_tokens=2048, direct_running_mode="in_memory", unit_bytes=1))
""")


def test_a_killed_run_resumes_and_redoes_only_unfinished_records(
    corpus, tmp_path, bpe_model, counted
):
    clean = tmp_path / "clean"
    run_books(_options(corpus, clean, bpe_model))
    out = tmp_path / "out"
    kill_state = tmp_path / "kill"
    kill_state.mkdir()
    # The worker dies on the 7th document it tokenizes; units of one document each (unit_bytes=1)
    # hold the 6 before it.
    script = KILLED_RUN.format(
        tests=os.path.dirname(os.path.dirname(__file__)),
        state=str(kill_state),
        after=6,
        inputs=str(corpus / "*.jsonl"),
        out=str(out),
        tok=bpe_model,
        seq=SEQ,
    )
    killed = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "manifest.json").exists()
    assert len(receipt_paths(str(out))) == 6

    state, _ = counted
    _reset(state)
    manifest = run_books(_options(corpus, out, bpe_model))
    assert _tokenize_calls(state) == 11 - 6  # only the records the killed run had not stored
    compare_outputs(str(out), str(clean))
    assert manifest["stages"] == json.loads((clean / "manifest.json").read_text())["stages"]


def test_shards_already_written_are_kept_and_missing_or_damaged_ones_rewritten(
    corpus, tmp_path, bpe_model, counted
):
    out = tmp_path / "out"
    run_books(_options(corpus, out, bpe_model))
    before = _shard_stats(out)
    packed = sorted(k for k in before if k.startswith(f"packed-{SEQ}/"))
    assert len(packed) >= 3
    # As if the job died while writing shards: no manifests, one shard missing, one damaged
    # (same size, one byte changed).
    (out / "manifest.json").unlink()
    (out / packed[0]).unlink()
    damaged = out / packed[1]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    damaged_stat = (damaged.stat().st_ino, damaged.stat().st_mtime_ns)

    state, _ = counted
    _reset(state)
    run_books(_options(corpus, out, bpe_model))
    assert _tokenize_calls(state) == 0  # every document came from the work store
    after = _shard_stats(out)
    assert set(after) == set(before)
    rewritten = {k for k in after if after[k] != before[k]}
    assert packed[0] in rewritten and after[packed[1]] != damaged_stat
    assert rewritten == {packed[0], packed[1]}  # every other shard was left as it was
    run_books(_options(corpus, tmp_path / "clean", bpe_model, keep_work=False))
    compare_outputs(str(out), str(tmp_path / "clean"))
    assert not (tmp_path / "clean" / ".work").exists()


def test_retry_failures_processes_only_failed_rows_and_merges_them(
    corpus, tmp_path, bpe_model, counted
):
    state, fail_on = counted
    out = tmp_path / "out"
    fail_on.update({("a.jsonl", 3): None, ("b.jsonl", 2): None, ("b.jsonl", 4): None})
    first = run_books(_options(corpus, out, bpe_model))
    assert first["failures"]["by_reason"] == {"tokenize:stage_error": 3}
    assert "retry" not in first

    # The fault is gone for two records and persists for one: --retry-failures tokenizes exactly
    # the three failed rows again.
    fail_on.clear()
    fail_on[("b.jsonl", 4)] = None
    _reset(state)
    second = run_books(_options(corpus, out, bpe_model, retry_failures=True))
    calls = {f for f in os.listdir(state) if f.startswith("attempt-")}
    assert calls == {"attempt-a.jsonl-3", "attempt-b.jsonl-2", "attempt-b.jsonl-4"}
    assert second["retry"] == {"rows": 3, "recovered": 2, "still_failing": 1}
    rows = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert [(os.path.basename(r["file"]), r["line"], r["reason"]) for r in rows] == [
        ("b.jsonl", 4, "stage_error")
    ]

    # Once the last one succeeds too, the output equals a run that never failed.
    fail_on.clear()
    third = run_books(_options(corpus, out, bpe_model, retry_failures=True))
    assert third["retry"] == {"rows": 1, "recovered": 1, "still_failing": 0}
    run_books(_options(corpus, tmp_path / "clean", bpe_model))
    compare_outputs(str(out), str(tmp_path / "clean"), ignore=("retry",))


def test_retry_failures_needs_an_earlier_run(corpus, tmp_path, bpe_model):
    with pytest.raises(FileNotFoundError, match="failures.jsonl"):
        run_books(_options(corpus, tmp_path / "none", bpe_model, retry_failures=True))


def test_other_packing_options_reuse_the_tokenized_documents(corpus, tmp_path, bpe_model, counted):
    state, _ = counted
    out = tmp_path / "out"
    run_books(_options(corpus, out, bpe_model))
    assert _tokenize_calls(state) == 11
    manifest = run_books(_options(corpus, out, bpe_model, seq_lens=(256,)))
    assert _tokenize_calls(state) == 11  # no record tokenized again
    assert set(manifest["datasets"]) == {"documents", "packed-256"}
    # The earlier length's directory is left without its manifest: nothing there looks complete.
    assert not (out / f"packed-{SEQ}" / "manifest.json").exists()
    import shutil

    shutil.rmtree(out / f"packed-{SEQ}")
    run_books(_options(corpus, tmp_path / "clean", bpe_model, seq_lens=(256,)))
    compare_outputs(str(out), str(tmp_path / "clean"))


def test_options_that_shape_documents_start_from_an_empty_work_store(
    corpus, tmp_path, bpe_model, counted
):
    state, _ = counted
    out = tmp_path / "out"
    run_books(_options(corpus, out, bpe_model))
    stale = out / ".work" / "units" / "stale.json"
    stale.write_text("{}")
    run_books(_options(corpus, out, bpe_model, min_chars=2))  # min_chars shapes documents: no reuse
    assert _tokenize_calls(state) == 22
    assert not stale.exists()


def test_damaged_units_are_named_or_ignored(corpus, tmp_path, bpe_model):
    out = tmp_path / "out"
    run_books(_options(corpus, out, bpe_model))
    receipt = receipt_paths(str(out))[0]
    refs = list(ReadReceipt()(receipt))
    assert refs
    doc_id, ref = refs[0]
    unit = os.path.join(os.path.dirname(receipt), ref["at"][0] + ".bin")
    data = bytearray(open(unit, "rb").read())
    data[ref["at"][1] + ref["at"][2] // 2] ^= 0xFF
    open(unit, "wb").write(bytes(data))
    reader = UnitReader(str(out))
    with pytest.raises(WorkStoreError, match=r"\.bin .*document .* damaged"):
        reader.load(doc_id, ref)
    reader.close()
    # A unit of another size than its receipt says (a write that never finished) is ignored.
    open(unit, "ab").write(b"x")
    assert list(ReadReceipt()(receipt)) == []
    work_store.clear(str(out))
    assert not (out / ".work").exists()


def test_unit_reader_reads_a_document_once_for_consecutive_pieces(corpus, tmp_path, bpe_model, monkeypatch):
    out = tmp_path / "out"
    run_books(_options(corpus, out, bpe_model))
    refs = list(ReadReceipt()(receipt_paths(str(out))[0]))
    assert len(refs) >= 2  # one 64 MiB unit holds every document of this corpus
    (d1, r1), (d2, r2) = refs[:2]
    reader = UnitReader(str(out))
    reads = []
    real = work_store.decode_payload
    monkeypatch.setattr(work_store, "decode_payload", lambda data, where: reads.append(where) or real(data, where))
    first = reader.load(d1, r1)
    assert reader.load(d1, r1) is first and len(reads) == 1  # the next piece of the same document
    assert reader.load(d2, r2)["tokens"] != first["tokens"] and len(reads) == 2
    assert reader.load(d1, r1) == first and len(reads) == 3  # not the last one any more: read again
    reader.close()
