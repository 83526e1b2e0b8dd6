"""The quick no-op answer of `lwm-pack books` (books/options.py): a rerun over a complete local
output is answered before Beam loads, with what the full launch would say, and anything that
changed falls through to the full launch, which rebuilds."""

from __future__ import annotations

import os

import pytest
from apache_beam.io.filesystems import FileSystems
from lwmkit.pipelines.books import job as books_lib
from lwmkit.pipelines.books import options as options_lib
from lwmkit.pipelines.cli import main
from lwmkit.pipelines.engine.inputs import local_matches

from .helpers import (
    book,
    inodes,
    record,
    run_cli_child,
    touch_later,
    work_copy,
    write_jsonl,
    write_jsonl_zst,
)


def _command(bpe_model: str, *extra: str) -> list[str]:
    # Relative paths: each test reruns over its own copy of the same folder.
    return ["books", "--input", "raw/*.jsonl.zst", "--input", "raw/notes.txt", "--tokenizer", bpe_model,
            "--seq-len", "512", "--output", "out", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def built(bpe_model, tmp_path_factory) -> str:
    """A folder with raw/ inputs and out/, the complete output of `_command`."""
    base = tmp_path_factory.mktemp("noop")
    (base / "raw").mkdir()
    write_jsonl_zst(base / "raw" / "books.jsonl.zst", [record(book(i, 6 + 4 * i), {"n": i}) for i in range(3)])
    (base / "raw" / "notes.txt").write_text(book(9, 8), encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(base)
    try:
        assert main([*_command(bpe_model), "--quiet"]) == 0
    finally:
        os.chdir(cwd)
    return str(base)


@pytest.fixture
def here(built, tmp_path, monkeypatch) -> str:
    return work_copy(built, tmp_path, monkeypatch)


_REAL = (books_lib.build_pipeline, options_lib.complete_books)


class _Calls:
    """Counts pipeline builds of the books job and records the quick check's answers."""

    def __init__(self, monkeypatch, quick: bool = True):
        self.builds, self.answers = 0, []
        real_build, real_complete = _REAL

        def build(*args, **kw):
            self.builds += 1
            return real_build(*args, **kw)

        def complete(options):
            self.answers.append(real_complete(options) if quick else None)
            return self.answers[-1]

        monkeypatch.setattr(books_lib, "build_pipeline", build)
        monkeypatch.setattr(options_lib, "complete_books", complete)


def test_the_quick_answer_is_the_full_paths_answer(here, bpe_model, monkeypatch, capsys):
    before = inodes("out")
    full = _Calls(monkeypatch, quick=False)  # the launch's own complete check
    assert main(_command(bpe_model)) == 0
    full_out = capsys.readouterr()
    assert full.builds == 0 and full.answers == [None]
    quick = _Calls(monkeypatch)
    assert main(_command(bpe_model)) == 0
    quick_out = capsys.readouterr()
    assert quick.builds == 0 and quick.answers[0]["documents"] == 4
    assert (quick_out.out, quick_out.err) == (full_out.out, full_out.err)
    assert "out is already complete for these inputs and options" in quick_out.err
    assert inodes("out") == before  # nothing rewritten


@pytest.mark.parametrize("change", ["input mtime", "input size", "option", "missing shard", "lock held"])
def test_a_change_falls_through_to_the_launch(here, bpe_model, monkeypatch, change):
    extra = []
    if change == "input mtime":
        touch_later("raw/notes.txt")
    elif change == "input size":
        with open("raw/notes.txt", "a", encoding="utf-8") as f:
            f.write(" more")
    elif change == "option":
        extra = ["--min-chars", "2"]
    elif change == "missing shard":
        os.remove(os.path.join("out/packed-512", sorted(p for p in os.listdir("out/packed-512") if ".array_record-" in p)[0]))
    else:
        os.makedirs("out/.lwm-pack", exist_ok=True)
        with open("out/.lwm-pack/lock.json", "w") as f:  # stale: no such pid; the launch takes it over
            f.write('{"owner": "x", "host": "elsewhere", "pid": 1, "started": 0, "heartbeat": 0}')
    calls = _Calls(monkeypatch)
    assert main([*_command(bpe_model, *extra), "--quiet"]) == 0
    assert calls.answers == [None]
    assert calls.builds == (0 if change == "lock held" else 1)  # a stale lock alone changes nothing
    if change != "lock held":  # the rebuilt output is complete again: the next rerun is quick
        again = _Calls(monkeypatch)
        assert main([*_command(bpe_model, *extra), "--quiet"]) == 0
        assert again.builds == 0 and again.answers[0] is not None


def test_a_no_op_rerun_does_not_import_beam(here, bpe_model):
    proc, cpu = run_cli_child([*_command(bpe_model), "--quiet"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["4 documents -> documents: 4 records, packed-512: "
                                        f"{proc.stdout.split('packed-512: ')[1].split()[0]} records; 0 failures", "[]"]
    assert cpu < 1.0, f"{cpu:.2f} CPU-s for a no-op rerun (Beam loaded?)"


def test_local_matches_is_beams_local_match(tmp_path, monkeypatch):
    for name in ("a.jsonl", "b.jsonl", ".hidden.jsonl", "c.txt", "sub/d.jsonl", "sub/deeper/e.jsonl", "x1.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(tmp_path / name, [record("text")])
    monkeypatch.chdir(tmp_path)
    d = str(tmp_path)
    patterns = [f"{d}/*.jsonl", f"{d}/**.jsonl", f"{d}/sub/", f"{d}/?1.txt", f"{d}/c.txt", "sub/*.jsonl", "*.jsonl",
                f"{d}/nowhere/*.jsonl", f"{d}/*/*.jsonl"]
    for pattern in patterns:
        beam = sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
        assert local_matches([pattern]) == beam, pattern
    assert local_matches([f"{d}/[ab].jsonl"]) is None  # a class: not sure, so the launch decides
    assert local_matches([f"{d}/sub"]) is None  # a folder named without a glob
    assert local_matches(["gs://bucket/*.jsonl"]) is None
