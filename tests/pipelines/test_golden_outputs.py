"""Every job's outputs stay byte-identical: one golden run (`golden.py`) against committed SHA-256s.

The committed values (`golden_outputs.json`) were written by this run on a layout known to be good;
a change of the package's layout must leave every shard, index, failures file and manifest (without
its `timestamps`) as it was. A change that means to change outputs regenerates them (see golden.py)
and says why in its commit.
"""

from __future__ import annotations

import pytest

from . import golden
from .helpers import unset_proxies


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        unset_proxies(mp)
        golden.build_all(root)
    return golden.digests(root)


def test_every_job_writes_what_the_golden_run_wrote(golden_run):
    if golden.writing_requested():
        golden.write_golden(golden_run)
    expected = golden.load_golden()
    assert sorted(golden_run) == sorted(expected), "the jobs wrote other files than the golden run"
    changed = [p for p in sorted(expected) if golden_run[p] != expected[p]]
    assert changed == [], f"{len(changed)} of {len(expected)} files differ from the golden run"


def test_the_golden_run_covers_every_job(golden_run):
    # The comparison above is only as wide as what the run writes: every job and both export files.
    tops = {p.split("/", 1)[0] for p in golden_run}
    assert tops == {"books", "books-window", "stages", "images", "videos", "qa", "export"}
    for job in ("books", "images", "videos", "qa"):
        assert any(p.startswith(f"{job}/documents/documents-train.array_record-") for p in golden_run), job
        assert any(p.startswith(f"{job}/packed-") and "/packed-train.array_record-" in p for p in golden_run), job
        assert f"{job}/failures.jsonl" in golden_run
    assert {"export/books.jsonl", "export/images.jsonl", "stages/manifest.json"} <= set(golden_run)
