"""One job per output (a lock with owner and heartbeat), stale temporary files removed, and an
output's identity taken from its inputs' contents (size, modification time), not their names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from lwmkit.pipelines import run_books
from lwmkit.pipelines.engine.output_lock import OutputLock, OutputLockedError, lock_path

from .helpers import book, record, write_jsonl
from .test_faults import books_options, write_two_files

HOLDER = textwrap.dedent("""
    import sys, time
    from lwmkit.pipelines.engine.output_lock import OutputLock
    lock = OutputLock({out!r}, heartbeat_s=0.5, stale_s=30)
    lock.acquire()
    print("held", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def corpus(tmp_path):
    return write_two_files(tmp_path)


def test_a_second_job_on_the_same_output_fails_at_once_and_a_killed_owner_is_taken_over(corpus, tmp_path, bpe_model):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(out=str(out))], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": ""})
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with pytest.raises(OutputLockedError, match=r"in use by another lwm-pack job .*:%d:" % holder.pid):
            run_books(books_options(corpus, out, bpe_model))
        assert time.monotonic() - start < 30
        assert not (out / "manifest.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its lock is stale (its pid is gone) and the next job takes it over.
    manifest = run_books(books_options(corpus, out, bpe_model))
    assert manifest["documents"] == 11
    assert not os.path.exists(lock_path(str(out)))  # released when the job ended


def test_a_lock_with_an_old_heartbeat_is_stale_and_a_live_one_is_not(tmp_path):
    out = str(tmp_path / "o")
    first = OutputLock(out, heartbeat_s=0.2, stale_s=1.0)
    first.acquire()
    try:
        with pytest.raises(OutputLockedError, match="in use by another lwm-pack job"):
            OutputLock(out, heartbeat_s=0.2, stale_s=1.0).acquire()
        time.sleep(1.2)  # heartbeats keep it fresh
        with pytest.raises(OutputLockedError):
            OutputLock(out, heartbeat_s=0.2, stale_s=1.0).acquire()
    finally:
        first._stop.set()  # the owner hangs: no more heartbeats, the lock file stays
        first._thread.join()
    time.sleep(1.2)
    second = OutputLock(out, heartbeat_s=0.2, stale_s=1.0)
    assert "heartbeat is" in second.acquire()
    first.release()  # not its lock any more: left alone
    assert json.loads(open(lock_path(out)).read())["owner"] == second.owner
    second.release()
    assert not os.path.exists(lock_path(out))


def test_a_rerun_removes_temporary_files_of_a_killed_run(corpus, tmp_path, bpe_model):
    out = tmp_path / "out"
    (out / "documents").mkdir(parents=True)
    stale = [out / "documents" / ".documents.array_record-00000-of-00001.k2j3h4.tmp",
             out / ".manifest.json.x8a7.tmp",
             out / "documents" / "documents.parquet.tmp-0123abcd"]
    for p in stale:
        p.write_bytes(b"half written")
    run_books(books_options(corpus, out, bpe_model))
    left = [p for p in stale if p.exists()]
    assert left == []
    assert [n for _, _, names in os.walk(out) for n in names if n.endswith(".tmp") or ".tmp-" in n] == []


def _rewrite(path, books):
    before = os.stat(path).st_mtime_ns
    write_jsonl(path, [record(book(i, 5)) for i in books])
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))  # a later mtime, whatever the clock


def test_a_complete_output_whose_inputs_changed_is_rebuilt(corpus, tmp_path, bpe_model):
    out = tmp_path / "out"
    assert run_books(books_options(corpus, out, bpe_model))["documents"] == 11
    _rewrite(corpus / "a.jsonl", range(1, 4))  # 6 books -> 3, same name
    assert run_books(books_options(corpus, out, bpe_model))["documents"] == 8


def test_changed_inputs_never_meet_stale_work_units(corpus, tmp_path, bpe_model):
    out = tmp_path / "out"
    assert run_books(books_options(corpus, out, bpe_model, keep_work=True))["documents"] == 11
    os.remove(out / "manifest.json")  # as if killed after its units were written
    _rewrite(corpus / "a.jsonl", range(20, 22))  # other books under the same name
    _rewrite(corpus / "b.jsonl", range(7, 12))  # same books, rewritten: still a changed input
    fresh = run_books(books_options(corpus, tmp_path / "fresh", bpe_model))
    resumed = run_books(books_options(corpus, out, bpe_model))
    assert resumed["documents"] == fresh["documents"] == 7
