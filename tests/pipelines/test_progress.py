"""The live progress display (engine/progress.py): worker files and in-process counts summed in stage
order, a books job seen through a fake terminal, worker processes' files adding up to the manifest,
and silence with --quiet or plain lines when stderr is not a terminal."""

from __future__ import annotations

import glob
import json
import os
import re
import time

import pytest
from lwmkit.pipelines import BooksOptions, run_books
from lwmkit.pipelines.books.job import STAGES as BOOK_STAGES
from lwmkit.pipelines.cli import main
from lwmkit.pipelines.engine import progress
from lwmkit.pipelines.engine.progress import ProgressWatch, count_lines, read_totals

from .helpers import write_small_raw_books


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> str:
    return write_small_raw_books(tmp_path_factory.mktemp("progress-raw"))


@pytest.fixture
def terminal(monkeypatch):
    """stderr passes for a terminal (rich reads TTY_COMPATIBLE), whatever the CI sets."""
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")


@pytest.fixture
def not_terminal(monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TTY_COMPATIBLE", "0")


def _books(raw: str, out, *extra: str) -> list[str]:
    return ["books", "--input", os.path.join(raw, "*"), "--tokenizer", "TOKENIZER", "--seq-len", "128",
            "--output", str(out), *extra]


def _manifest_stages(out) -> dict[str, list[int]]:
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
        stages = json.load(f)["stages"]
    return {s: [c["seen"], c["kept"], c["dropped"]] for s, c in stages.items()}


def _final_lines(err: str, stages: dict[str, list[int]]) -> tuple[list[str], list[str]]:
    got = err[err.index("finished in"):].splitlines()[1: 1 + len(BOOK_STAGES)]
    want = [f"[lwm-pack] {s}: {stages[s][0]} in, {stages[s][1]} out, {stages[s][2]} dropped" for s in BOOK_STAGES]
    return got, want


def test_worker_files_and_in_process_counts_add_up_in_stage_order(tmp_path, not_terminal):
    folder = str(tmp_path / "progress")
    with ProgressWatch(folder, ("read", "tokenize", "dedup"), interval_s=3600) as watch:
        # two worker processes' files, one half-written file (ignored) and this process's own counts
        with open(os.path.join(folder, "h-1-a.json"), "w") as f:
            json.dump({"read": [2, 20, 0], "tokenize": [20, 19, 1]}, f)
        with open(os.path.join(folder, "h-2-b.json"), "w") as f:
            json.dump({"read": [1, 5, 1], "extra": [3, 3, 0]}, f)
        with open(os.path.join(folder, "h-3-c.json.part"), "w") as f:
            f.write('{"read": [100')
        for kept, dropped in ((1, 0), (0, 1), (1, 0)):
            progress.count(folder, "tokenize", 1, kept, dropped)
        progress.flush(folder, force=True)  # the watching process keeps its counts in memory: no file
        assert sorted(os.listdir(folder)) == ["h-1-a.json", "h-2-b.json", "h-3-c.json.part"]
        totals = read_totals(folder)
    assert totals == {"read": [3, 25, 1], "tokenize": [23, 21, 2], "extra": [3, 3, 0]}
    assert watch.totals == totals
    lines = count_lines(totals, watch.stages, elapsed=2.0)
    assert [line.split(":")[0] for line in lines] == ["read", "tokenize", "dedup", "extra"]
    assert lines[0] == "read: 3 in, 25 out, 1 dropped, 1.5/s"
    assert lines[2] == "dedup: 0 in, 0 out, 0 dropped, 0.0/s"  # a stage that saw nothing yet is listed
    assert not os.path.exists(folder)  # removed when the watch ends


def test_a_worker_writes_its_file_atomically_and_never_fails(tmp_path):
    folder = str(tmp_path / "p")
    progress.count(folder, "read", 1, 4, 0)
    progress.flush(folder, force=True)  # the folder does not exist (yet, or any more): silence
    os.makedirs(folder)
    progress.count(folder, "read", 1, 2, 1)
    progress.flush(folder, force=True)
    files = glob.glob(os.path.join(folder, "*"))
    assert len(files) == 1 and files[0].endswith(".json") and f"-{os.getpid()}-" in files[0]
    assert read_totals(folder) == {"read": [2, 6, 1]}


def test_a_books_job_on_a_terminal_shows_every_stage_live(raw, bpe_model, tmp_path, capsys, terminal):
    out = tmp_path / "out"
    assert main([a.replace("TOKENIZER", bpe_model) for a in _books(raw, out)]) == 0
    err = capsys.readouterr().err
    live = err[: err.index("finished in")]
    assert "\x1b[" in live and "lwm-pack stages" in live  # rich drew its table
    stages = _manifest_stages(out)
    for s in BOOK_STAGES:  # each stage's row, with its final counts, was drawn during the run
        seen, kept, dropped = stages[s]
        assert re.search(rf"{s}\s*│\s*{seen}\s*│\s*{kept}\s*│\s*{dropped}\s*│", live), s
    got, want = _final_lines(err, stages)
    assert got == want
    assert not os.path.exists(out / ".lwm-pack" / "progress")


def test_worker_processes_report_the_manifest_totals(raw, bpe_model, tmp_path, monkeypatch, not_terminal):
    seen: list = []

    def finished(self, totals):
        seen.append((totals, glob.glob(os.path.join(self.folder, "*.json"))))

    monkeypatch.setattr(ProgressWatch, "finished", finished)
    out = tmp_path / "out"
    options = BooksOptions(inputs=(os.path.join(raw, "*"),), output=str(out), tokenizer=bpe_model, seq_lens=(128,),
                           progress=True, direct_running_mode="multi_processing", direct_num_workers=2)
    run_books(options)
    (totals, files), = seen
    assert files and all(f"-{os.getpid()}-" not in f for f in files)  # written by the worker processes
    assert totals == _manifest_stages(out)
    assert not os.path.exists(out / ".lwm-pack" / "progress")


def test_no_control_codes_off_a_terminal_and_nothing_with_quiet(raw, bpe_model, tmp_path, capsys, monkeypatch,
                                                                  not_terminal):
    out = tmp_path / "plain"
    assert main([a.replace("TOKENIZER", bpe_model) for a in _books(raw, out)]) == 0
    err = capsys.readouterr().err
    assert "\x1b" not in err and "lwm-pack stages" not in err
    got, want = _final_lines(err, _manifest_stages(out))
    assert got == want

    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # even on a terminal
    quiet = tmp_path / "quiet"
    assert main([a.replace("TOKENIZER", bpe_model) for a in _books(raw, quiet, "--quiet")]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "\x1b" not in captured.out


def test_plain_lines_off_a_terminal(tmp_path, capsys, not_terminal):
    folder = str(tmp_path / "progress")
    with ProgressWatch(folder, ("read", "tokenize"), interval_s=0.01, lines_every_s=0):
        progress.count(folder, "read", 1, 7, 0)
        deadline, err = time.monotonic() + 30, ""
        while "tokenize" not in err and time.monotonic() < deadline:  # waits for the first lines, no timing
            time.sleep(0.02)
            err += capsys.readouterr().err
    lines = [line for line in err.splitlines() if line]
    assert lines[:2] and lines[0].startswith("[lwm-pack] read: 1 in, 7 out, 0 dropped, ")
    assert lines[1].startswith("[lwm-pack] tokenize: 0 in, 0 out, 0 dropped")
    assert "\x1b" not in err
