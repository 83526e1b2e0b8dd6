"""Packing at the limit, end to end: offline vs online packer, the distributed form, the stages job."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from lwmkit.packing import ShardDataSource, check_packed, plan_packing
from lwmkit.packing.online import online_packed_dataset
from lwmkit.pipelines import BooksOptions, run_books
from lwmkit.pipelines.cli import main
from lwmkit.pipelines.pack.job import StagesOptions, parse_schedule, run_stages
from lwmkit.pipelines.tools.sample_corpus import write_sample_corpus
from lwmkit.pipelines.writing.plan import PackOptions

FIELDS = (
    "tokens", "vision_mask", "loss_weights", "tokens_segment_ids", "tokens_positions",
    "segment_doc_ids", "segment_offsets", "segment_lengths",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_sample_corpus(str(tmp_path_factory.mktemp("raw")), books=8, seed=4)


def _books(tmp_path, corpus, bpe_model, pack: PackOptions, seq_lens=(512,)):
    out = str(tmp_path / "out")
    run_books(BooksOptions(inputs=tuple(corpus), output=out, tokenizer=bpe_model, seq_lens=seq_lens, pack=pack))
    return out


def _records(directory):
    src = ShardDataSource(directory)
    return [src[i] for i in range(len(src))]


def test_online_packer_gives_the_offline_jobs_records(tmp_path, corpus, bpe_model):
    pack = PackOptions(window=3, seed=5, top_up_below=None, piece_positions="continue", loss_policy="per_document")
    out = _books(tmp_path, corpus, bpe_model, pack)
    offline = _records(os.path.join(out, "packed-512"))
    online = list(
        online_packed_dataset(
            os.path.join(out, "documents"), 512, window=3, seed=5, piece_positions="continue", loss_policy="per_document"
        )
    )
    assert len(online) == len(offline) > 10
    for a, b in zip(offline, online, strict=True):
        for f in FIELDS:
            assert np.array_equal(a[f], b[f]), f
        assert check_packed(a, 512, "continue") == []


def test_online_iterator_restores_mid_window(tmp_path, corpus, bpe_model):
    out = _books(tmp_path, corpus, bpe_model, PackOptions())
    ds = online_packed_dataset(os.path.join(out, "documents"), 512, window=4, seed=1)
    it = iter(ds)
    for _ in range(7):
        next(it)
    state = it.get_state()
    rest = list(it)
    again = iter(ds)
    again.set_state(state)
    restored = list(again)
    assert len(restored) == len(rest) > 0
    assert all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(rest, restored, strict=True))


def test_distributed_form_equals_plan_packing(tmp_path, corpus, bpe_model):
    pack = PackOptions(window=2, top_up_below=0.99, seed=3)
    out = _books(tmp_path, corpus, bpe_model, pack)
    docs = _records(os.path.join(out, "documents"))
    expected = plan_packing([len(d["tokens"]) for d in docs], 512, window=2, top_up_below=0.99, seed=3)
    got = [
        [(int(d), int(o), int(n)) for d, o, n in zip(r["segment_doc_ids"], r["segment_offsets"], r["segment_lengths"], strict=True)]
        for r in _records(os.path.join(out, "packed-512"))
    ]
    ids = [d["doc_id"] for d in docs]
    assert got == [[(ids[p.doc], p.offset, p.length) for p in b] for b in expected.bins]
    manifest = json.load(open(os.path.join(out, "packed-512", "manifest.json")))
    assert manifest["packing"]["window"] == 2 and manifest["packing"]["top_up_below"] == 0.99
    assert manifest["fill"] == pytest.approx(expected.fill, abs=1e-6)


def test_truncate_and_drop_policies_are_counted_and_reported(tmp_path, corpus, bpe_model):
    out = _books(tmp_path, corpus, bpe_model, PackOptions(policy="drop"), seq_lens=(1024,))
    manifest = json.load(open(os.path.join(out, "packed-1024", "manifest.json")))
    docs = _records(os.path.join(out, "documents"))
    long_docs = [d for d in docs if len(d["tokens"]) > 1024]
    assert long_docs and manifest["cuts"]["documents_dropped"] == len(long_docs)
    assert manifest["cuts"]["tokens_dropped"] == sum(len(d["tokens"]) for d in long_docs)
    rows = [json.loads(x) for x in open(os.path.join(out, "failures.jsonl"))]
    dropped = [(r["file"], r["line"]) for r in rows if r["stage"] == "pack-1024"]
    assert sorted(dropped) == sorted((d["source_file"], d["source_line"]) for d in long_docs)
    assert all(r["reason"] == "too_long" for r in rows if r["stage"] == "pack-1024")
    assert manifest["tokens"]["total"] == sum(len(d["tokens"]) for d in docs) - manifest["cuts"]["tokens_dropped"]


def test_stages_job_packs_every_stage_with_its_minimum(tmp_path, corpus, bpe_model):
    out = _books(tmp_path, corpus, bpe_model, PackOptions())
    stages_dir = str(tmp_path / "stages")
    manifest = run_stages(
        StagesOptions(
            documents=os.path.join(out, "documents"), output=stages_dir, schedule=(256, 2048), min_doc_tokens=(0, 1500)
        )
    )
    docs = _records(os.path.join(out, "documents"))
    lengths = [len(d["tokens"]) for d in docs]
    assert manifest["kind"] == "stages"
    by_len = {s["seq_len"]: s for s in manifest["stages_schedule"]}
    assert by_len[256]["rope_theta"] == 1e4 and by_len[2048]["documents_long_enough"] == sum(n >= 2048 for n in lengths)
    assert by_len[256]["tokens"]["total"] == sum(lengths)
    assert by_len[2048]["tokens"]["total"] == sum(n for n in lengths if n >= 1500)
    assert by_len[2048]["documents"] == sum(n >= 1500 for n in lengths)
    for seq_len in (256, 2048):
        for rec in _records(os.path.join(stages_dir, f"packed-{seq_len}")):
            assert check_packed(rec, seq_len) == []
    # The report reads a stages directory too.
    assert main(["report", stages_dir]) == 0
    assert os.path.getsize(os.path.join(stages_dir, "report", "index.html")) > 10_000


def test_named_schedules_and_bad_stage_options():
    assert parse_schedule("lwm-text") == (32768, 131072, 262144, 524288, 1048576)
    assert parse_schedule("1024,8192") == (1024, 8192)
    with pytest.raises(ValueError, match="lwm-text"):
        parse_schedule("huge")
    with pytest.raises(ValueError, match="rise strictly"):
        StagesOptions(documents="d", output="o", schedule=(8192, 1024))
    with pytest.raises(ValueError, match="one per stage"):
        StagesOptions(documents="d", output="o", schedule=(1024, 8192), min_doc_tokens=(1,))


def test_pack_cli_runs_a_schedule(tmp_path, corpus, bpe_model, capsys):
    out = _books(tmp_path, corpus, bpe_model, PackOptions())
    code = main(["pack", "--documents", os.path.join(out, "documents"), "--schedule", "512,1024",
                 "--output", str(tmp_path / "st"), "--quiet", "--loss-policy", "per_document"])
    assert code == 0
    assert "seq_len     1024" in capsys.readouterr().out
    m = json.load(open(tmp_path / "st" / "packed-1024" / "manifest.json"))
    assert m["packing"]["loss_policy"] == "per_document"


@pytest.mark.slow
def test_stages_job_multi_processing_matches_in_memory(tmp_path, corpus, bpe_model):
    import filecmp

    out = _books(tmp_path, corpus, bpe_model, PackOptions())
    runs = {}
    for mode in ("in_memory", "multi_processing"):
        runs[mode] = str(tmp_path / mode)
        run_stages(StagesOptions(documents=os.path.join(out, "documents"), output=runs[mode], schedule=(256, 1024),
                                 direct_running_mode=mode, direct_num_workers=2 if mode == "multi_processing" else 0))
    for seq_len in (256, 1024):
        a, b = (os.path.join(runs[m], f"packed-{seq_len}") for m in ("in_memory", "multi_processing"))
        names = sorted(n for n in os.listdir(a) if ".array_record-" in n)
        assert names and names == sorted(n for n in os.listdir(b) if ".array_record-" in n)
        _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
        assert mismatch == [] and errors == []
