"""The books job end to end: read -> normalize -> filter -> dedup -> tokenize -> plan -> shards -> finalize.

One module-scoped run over a corpus of good and bad records (`built`) backs most checks; the
others run the job on small corpora of their own. Every run stays on the in-memory DirectRunner
except the one that is about multi_processing.
"""

from __future__ import annotations

import collections
import filecmp
import json
import math
import os
import random
import shutil
import unicodedata

import numpy as np
import pytest
from lwmkit.packing import (
    ShardDataSource,
    check_packed,
    decode_record,
    document_id,
    read_shard,
    verify_directory,
)
from lwmkit.pipelines import BooksOptions, NoValidDocumentsError, run_books
from lwmkit.pipelines.books import job as books_lib
from lwmkit.pipelines.engine.normalize import normalize_text
from lwmkit.pipelines.writing.plan import PackOptions
from lwmkit.tokenizers import SentencePieceTokenizer

from .helpers import (
    SHARED_DATA,
    book,
    read_failures,
    read_json,
    record,
    write_jsonl,
    write_jsonl_zst,
    write_parquet,
)

SEQ_LENS = (256, 1024)
MIN_CHARS = 20
MAX_CHARS = 50_000
SHARD_TOKENS = 4096


# --- the mixed corpus ------------------------------------------------------------------------------


class Corpus:
    """Input files with what the job must make of them.

    Attributes:
      dir: the input directory.
      texts: (file, line) -> raw text of every record that must become a document.
      failures: (stage, file, line, reason) of every record that must be dropped.
      read_kept: records the read stage must emit.
    """

    def __init__(self, directory):
        self.dir = str(directory)
        self.texts: dict[tuple[str, int], str] = {}
        self.metas: dict[tuple[str, int], str | None] = {}
        self.failures: list[tuple[str, str, int, str]] = []
        self.files: list[str] = []
        self.read_kept = 0

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def good(self, name: str, line: int, text: str, meta=None):
        self.texts[(self.path(name), line)] = text
        self.metas[(self.path(name), line)] = None if meta is None else json.dumps(meta, sort_keys=True)
        self.read_kept += 1

    def bad(self, stage: str, name: str, line: int, reason: str):
        self.failures.append((stage, self.path(name), line, reason))
        if stage != "read":
            self.read_kept += 1


def make_mixed_corpus(directory) -> Corpus:
    c = Corpus(directory)
    os.makedirs(c.dir, exist_ok=True)
    b1, b2, b3, b4 = book(1, 8), book(2, 30), book(3, 4), book(4, 12)
    crlf = b3.replace("\n", "\r\n") + "\x00\x0c caf" + "e\u0301"  # normalization has work to do

    c.files.append(write_jsonl_zst(c.path("a.jsonl.zst"), [
        record(b1, {"title": "one", "n": 1}),  # 1
        b'{"text": "a line cut short by a broken export',  # 2
        record(b2, {"title": "two"}),  # 3
        b'{"text": "not utf-8 \xff\xfe here"}',  # 4
        b"",  # 5 blank
        record("too short"),  # 6
        record(crlf),  # 7
        record("word " * 12_000),  # 8 too long
    ]))
    c.good("a.jsonl.zst", 1, b1, {"title": "one", "n": 1})
    c.bad("read", "a.jsonl.zst", 2, "invalid_json")
    c.good("a.jsonl.zst", 3, b2, {"title": "two"})
    c.bad("read", "a.jsonl.zst", 4, "invalid_utf8")
    c.bad("filter", "a.jsonl.zst", 6, "too_short")
    c.good("a.jsonl.zst", 7, crlf)
    c.bad("filter", "a.jsonl.zst", 8, "too_long")

    c.files.append(write_jsonl(c.path("b.jsonl"), [
        b"[1, 2, 3]",  # 1
        b'{"meta": {"title": "no text"}}',  # 2
        b'{"text": 7}',  # 3
        record(b4),  # 4
        record(b1.replace("\n", "\r\n")),  # 5 the same as a.jsonl.zst:1 once normalized
        record(b4, {"title": "copy"}),  # 6 exact copy of line 4 (meta differs)
    ]))
    c.bad("read", "b.jsonl", 1, "not_an_object")
    c.bad("read", "b.jsonl", 2, "missing_text")
    c.bad("read", "b.jsonl", 3, "text_not_string")
    c.good("b.jsonl", 4, b4)
    c.bad("dedup", "b.jsonl", 5, "duplicate")
    c.bad("dedup", "b.jsonl", 6, "duplicate")

    b5 = book(5, 10)
    with open(c.path("c.txt"), "w", encoding="utf-8") as f:
        f.write(b5)
    c.files.append(c.path("c.txt"))
    c.good("c.txt", 1, b5)

    b6, b7 = book(6, 5), book(7, 20)
    c.files.append(write_parquet(c.path("d.parquet"), [b6, None, b7], [{"title": "six"}, None, None]))
    c.good("d.parquet", 1, b6, {"title": "six"})
    c.bad("read", "d.parquet", 2, "missing_text")
    c.good("d.parquet", 3, b7)

    with open(c.path("e.jsonl.zst"), "wb") as f:
        f.write(b"this was never zstd compressed\n")
    c.files.append(c.path("e.jsonl.zst"))
    c.bad("read", "e.jsonl.zst", 1, "corrupt_zstd")

    open(c.path("empty.txt"), "w").close()
    c.files.append(c.path("empty.txt"))
    c.bad("read", "empty.txt", 0, "empty_file")  # counted at read (issue 17), no longer a too-short document
    return c


def options(corpus: Corpus, output, tokenizer: str, **kw) -> BooksOptions:
    defaults = dict(
        # Overlapping globs: every file is read once.
        inputs=(os.path.join(corpus.dir, "*"), os.path.join(corpus.dir, "a.jsonl.zst")),
        output=str(output),
        tokenizer=tokenizer,
        seq_lens=SEQ_LENS,
        min_chars=MIN_CHARS,
        max_chars=MAX_CHARS,
        shard_tokens=SHARD_TOKENS,
        direct_running_mode="in_memory",
    )
    return BooksOptions(**{**defaults, **kw})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return make_mixed_corpus(tmp_path_factory.mktemp("mixed") / "in")


@pytest.fixture(scope="module")
def built(corpus, bpe_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "out"
    manifest = run_books(options(corpus, out, bpe_model))
    return str(out), manifest


# --- reading an output back ------------------------------------------------------------------------


def parquet_rows(path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def shard_records(directory) -> list[list[bytes]]:
    """The raw records of each shard of a dataset directory, by manifest shard number."""
    manifest = read_json(os.path.join(directory, "manifest.json"))
    return [list(read_shard(os.path.join(directory, s["file"]))) for s in manifest["shards"]]


def without_timestamps(manifest: dict, *also: str) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("timestamps", *also)}


def document_records(out) -> dict[int, dict]:
    src = ShardDataSource(os.path.join(out, "documents"))
    docs = {}
    for i in range(len(src)):
        rec = src[i]
        assert rec["doc_id"] not in docs
        docs[rec["doc_id"]] = rec
    return docs


def verify_output(out: str, seq_lens, bos_id: int = 1, eos_id: int = 2) -> dict[int, dict]:
    """Checks an output directory against itself: records, segments, manifests and indexes.

    Returns:
      The document records by doc id.
    """
    job = read_json(os.path.join(out, "manifest.json"))
    docs = document_records(out)
    assert job["documents"] == len(docs) > 0
    total = sum(d["tokens"].shape[0] for d in docs.values())

    # Document records: [BOS] ... [EOS], text only, loss weight 0 on BOS.
    for rec in docs.values():
        n = rec["tokens"].shape[0]
        assert rec["tokens"][0] == bos_id and rec["tokens"][-1] == eos_id
        assert not rec["vision_mask"].any()
        np.testing.assert_array_equal(rec["loss_weights"], np.r_[0.0, np.ones(n - 1)].astype(np.float32))

    # documents/: manifest, and documents.parquet pointing at the right (shard, record).
    ddir = os.path.join(out, "documents")
    dman = read_json(os.path.join(ddir, "manifest.json"))
    assert dman["kind"] == "document" and dman["records"] == dman["documents"] == len(docs)
    assert dman["tokens"] == {"total": total, "text": total, "vision": 0}
    assert job["datasets"]["documents"] == {"records": len(docs), "fill": None}
    assert verify_directory(ddir) == []
    raw = shard_records(ddir)
    src = ShardDataSource(ddir)
    rows = parquet_rows(os.path.join(ddir, "documents.parquet"))
    assert [r["index"] for r in rows] == list(range(len(docs)))
    assert [(r["source_file"], r["source_line"]) for r in rows] == sorted((r["source_file"], r["source_line"]) for r in rows)
    for r in rows:
        rec = decode_record(raw[r["shard"]][r["record"]])
        assert rec["doc_id"] == r["doc_id"] == src[r["index"]]["doc_id"]
        assert (rec["source_file"], rec["source_line"]) == (r["source_file"], r["source_line"])
        assert rec["tokens"].shape[0] == r["tokens"]
    assert [len(s) for s in raw] == [s["records"] for s in dman["shards"]]

    for seq_len in seq_lens:
        name = f"packed-{seq_len}"
        pdir = os.path.join(out, name)
        man = read_json(os.path.join(pdir, "manifest.json"))
        assert verify_directory(pdir) == []
        src = ShardDataSource(pdir)
        pieces: dict[int, list] = collections.defaultdict(list)
        segments = 0
        weight = 0.0
        for i in range(len(src)):
            rec = src[i]
            assert check_packed(rec, seq_len) == [], (name, i)
            start = 0
            for j, (doc, offset, n) in enumerate(
                zip(rec["segment_doc_ids"].tolist(), rec["segment_offsets"].tolist(), rec["segment_lengths"].tolist(), strict=True)
            ):
                end = start + n
                pieces[doc].append((offset, n, i, j, rec["tokens"][start:end], rec["vision_mask"][start:end],
                                    rec["loss_weights"][start:end]))
                start = end
            assert not rec["tokens"][start:].any()  # padding is token 0
            segments += len(rec["segment_lengths"])
            weight += float(rec["loss_weights"].sum(dtype=np.float64))

        # The segments re-assemble every document exactly, each token in exactly one place.
        assert set(pieces) == set(docs)
        split = 0
        for doc_id, parts in pieces.items():
            rec = docs[doc_id]
            n = rec["tokens"].shape[0]
            parts.sort(key=lambda p: p[0])
            assert [p[0] for p in parts] == list(range(0, n, seq_len)), (name, doc_id)  # split policy
            assert [p[1] for p in parts] == [min(seq_len, n - o) for o in range(0, n, seq_len)]
            np.testing.assert_array_equal(np.concatenate([p[4] for p in parts]), rec["tokens"])
            np.testing.assert_array_equal(np.concatenate([p[5] for p in parts]), rec["vision_mask"])
            np.testing.assert_array_equal(np.concatenate([p[6] for p in parts]), rec["loss_weights"])
            split += n > seq_len

        records = len(src)
        assert man["kind"] == "packed" and man["seq_len"] == seq_len
        assert man["records"] == records and man["documents"] == len(docs)
        assert man["tokens"] == {"total": total, "text": total, "vision": 0, "padding": records * seq_len - total}
        assert man["fill"] == round(total / (records * seq_len), 6)
        assert man["segments"] == segments == sum(len(p) for p in pieces.values())
        assert man["loss_weight_sum"] == pytest.approx(round(weight, 3), abs=1e-3)
        assert man["packing"]["documents_split"] == split
        assert job["datasets"][name] == {"records": records, "fill": man["fill"]}
        assert records >= math.ceil(total / seq_len)

        # documents.parquet: each document's pieces point at the right (shard, record, segment).
        raw = shard_records(pdir)
        rows = parquet_rows(os.path.join(pdir, "documents.parquet"))
        assert sorted(r["doc_id"] for r in rows) == sorted(docs)
        for r in rows:
            assert r["tokens"] == docs[r["doc_id"]]["tokens"].shape[0]
            got = [(p["offset"], p["length"], p["index"], p["segment"]) for p in r["pieces"]]
            assert got == [(p[0], p[1], p[2], p[3]) for p in pieces[r["doc_id"]]]
            for p in r["pieces"]:
                rec = decode_record(raw[p["shard"]][p["record"]])
                assert rec["segment_doc_ids"][p["segment"]] == r["doc_id"]
                assert rec["segment_offsets"][p["segment"]] == p["offset"]
                assert rec["segment_lengths"][p["segment"]] == p["length"]
                np.testing.assert_array_equal(rec["tokens"], src[p["index"]]["tokens"])
    return docs


# --- the mixed corpus: what comes out ----------------------------------------------------------------


def test_every_good_document_comes_out(built, corpus):
    out, manifest = built
    docs = document_records(out)
    assert manifest["documents"] == len(docs) == len(corpus.texts) == 7
    assert {(d["source_file"], d["source_line"]) for d in docs.values()} == set(corpus.texts)


def test_documents_are_the_tokenized_normalized_texts(built, corpus, bpe_model):
    out, _ = built
    tok = SentencePieceTokenizer.from_file(bpe_model)
    docs = document_records(out)
    for rec in docs.values():
        text = normalize_text(corpus.texts[(rec["source_file"], rec["source_line"])])
        assert rec["doc_id"] == document_id(text)
        np.testing.assert_array_equal(rec["tokens"], tok.encode_document(text))
    rows = parquet_rows(os.path.join(out, "documents", "documents.parquet"))
    for r in rows:
        key = (r["source_file"], r["source_line"])
        assert r["chars"] == len(normalize_text(corpus.texts[key]))
        assert r["meta"] == corpus.metas[key]


def test_failures_file_has_one_row_per_bad_record(built, corpus):
    out, _ = built
    rows = read_failures(out)
    assert all(set(r) == {"stage", "file", "line", "reason", "detail"} for r in rows)
    got = collections.Counter((r["stage"], r["file"], r["line"], r["reason"]) for r in rows)
    assert got == collections.Counter(corpus.failures)
    assert rows == sorted(rows, key=lambda r: (r["file"], r["line"], r["stage"], r["reason"], r["detail"]))
    dup = [r for r in rows if r["reason"] == "duplicate"]
    assert all(f"{corpus.path('a.jsonl.zst')}:1" in r["detail"] or f"{corpus.path('b.jsonl')}:4" in r["detail"] for r in dup)


def test_manifest_counts_agree_with_failures(built, corpus):
    out, manifest = built
    by_reason = collections.Counter(f"{s}:{r}" for s, _, _, r in corpus.failures)
    assert manifest["failures"] == {"file": "failures.jsonl", "total": len(corpus.failures), "by_reason": dict(by_reason)}
    drops = collections.Counter(s for s, _, _, _ in corpus.failures)
    stages = manifest["stages"]
    assert stages["read"] == {"seen": len(corpus.files), "kept": corpus.read_kept, "dropped": drops["read"]}
    assert stages["normalize"] == {"seen": corpus.read_kept, "kept": corpus.read_kept, "dropped": 0}
    filtered = corpus.read_kept - drops["filter"]
    assert stages["filter"] == {"seen": corpus.read_kept, "kept": filtered, "dropped": drops["filter"]}
    assert stages["dedup"]["kept"] == len(corpus.texts) and stages["dedup"]["dropped"] == drops["dedup"]
    # Dedup runs on the tokenized documents' references, so tokenize sees the duplicates too.
    assert stages["tokenize"] == {"seen": filtered, "kept": filtered, "dropped": 0}
    assert stages["dedup"]["kept"] + stages["dedup"]["dropped"] == filtered
    assert manifest["input_files"] == sorted(corpus.files)
    for name in manifest["datasets"]:
        ds = read_json(os.path.join(out, name, "manifest.json"))
        assert ds["stages"] == stages
        assert ds["failures"] == {**manifest["failures"], "file": "../failures.jsonl"}


def test_packed_records_segments_and_indexes(built):
    out, manifest = built
    docs = verify_output(out, SEQ_LENS)
    assert sorted(manifest["datasets"]) == ["documents", "packed-1024", "packed-256"]
    # The corpus is built so that packing has to split documents at both lengths, over several shards.
    for seq_len in SEQ_LENS:
        man = read_json(os.path.join(out, f"packed-{seq_len}", "manifest.json"))
        longest = max(d["tokens"].shape[0] for d in docs.values())
        assert longest > seq_len and man["packing"]["documents_split"] >= 1
        assert len(man["shards"]) >= 2
    assert len(read_json(os.path.join(out, "documents", "manifest.json"))["shards"]) >= 2


def test_manifest_records_the_job(built, corpus, bpe_model):
    out, manifest = built
    tok = SentencePieceTokenizer.from_file(bpe_model)
    assert manifest["kind"] == "job" and manifest["format_version"] == 2
    assert manifest["tokenizer"] == {**tok.fingerprint(), "path": bpe_model}
    assert manifest["runner"] == "DirectRunner (in_memory)"
    assert manifest["options"]["seq_lens"] == list(SEQ_LENS)
    assert "output" not in manifest["options"]  # where it went does not shape what it is
    assert read_json(os.path.join(out, "manifest.json")) == manifest


def test_tfds_reads_the_same_records(built):
    import tensorflow_datasets as tfds

    out, _ = built
    for name in ("documents", "packed-256"):
        d = os.path.join(out, name)
        ours = ShardDataSource(d)
        theirs = tfds.builder_from_directory(d).as_data_source()["train"]
        assert len(theirs) == len(ours)
        for i in range(len(ours)):
            a, b = ours[i], theirs[i]
            assert set(b) == set(a)
            for k, v in a.items():
                if isinstance(v, np.ndarray):
                    assert b[k].dtype == v.dtype, k
                    np.testing.assert_array_equal(b[k], v, err_msg=k)
                elif isinstance(v, str):
                    assert b[k].decode() == v, k
                else:
                    assert b[k] == v, k


def test_grain_loader_reads_a_batch(built):
    from lwmkit.packing import make_loader

    out, _ = built
    d = os.path.join(out, "packed-256")
    src = ShardDataSource(d)
    by_tokens = {src[i]["tokens"].tobytes(): src[i] for i in range(len(src))}
    batch = next(make_loader(d, batch_size=4, seed=0))
    assert batch["tokens"].shape == (4, 256)
    assert batch["tokens_segment_ids"].shape == (4, 256)
    for row in range(4):
        rec = by_tokens[batch["tokens"][row].tobytes()]
        for k in ("loss_weights", "tokens_positions", "tokens_segment_ids", "vision_mask"):
            np.testing.assert_array_equal(batch[k][row], rec[k])


# --- determinism, runners, reruns ----------------------------------------------------------------------


def output_files(root: str) -> list[str]:
    """Relative paths of a job's outputs (the work store under .work/ is not output)."""
    return sorted(
        os.path.relpath(os.path.join(r, f), root)
        for r, _, fs in os.walk(root) for f in fs
        if not os.path.relpath(r, root).split(os.sep)[0] == ".work"
    )


def compare_outputs(a: str, b: str, ignore: tuple[str, ...] = ()) -> None:
    """Every output file byte-identical, manifests equal but for `timestamps` (and `ignore`)."""
    names_a = output_files(a)
    names_b = output_files(b)
    assert names_a == names_b
    assert any(".array_record-" in n for n in names_a)
    for name in names_a:
        pa, pb = os.path.join(a, name), os.path.join(b, name)
        if os.path.basename(name) == "manifest.json":
            assert without_timestamps(read_json(pa), *ignore) == without_timestamps(read_json(pb), *ignore), name
        else:
            assert filecmp.cmp(pa, pb, shallow=False), name


def test_same_inputs_and_options_give_identical_outputs(built, corpus, bpe_model, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    run_books(options(corpus, again, bpe_model))
    compare_outputs(out, str(again))


def test_multi_processing_matches_in_memory(built, corpus, bpe_model, tmp_path):
    out, _ = built
    mp = tmp_path / "mp"
    manifest = run_books(options(corpus, mp, bpe_model, direct_running_mode="multi_processing", direct_num_workers=2))
    assert manifest["runner"] == "DirectRunner (multi_processing)"
    compare_outputs(out, str(mp), ignore=("runner",))


class _CountingBuild:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = books_lib.build_pipeline

        def build(*args, **kw):
            self.calls += 1
            return real(*args, **kw)

        monkeypatch.setattr(books_lib, "build_pipeline", build)


def test_rerun_returns_without_running_and_force_rebuilds(built, corpus, bpe_model, tmp_path, monkeypatch, capsys):
    src, _ = built
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    before = {p: os.stat(os.path.join(out, p)).st_ino for p in ("manifest.json", "packed-256/manifest.json")}
    counting = _CountingBuild(monkeypatch)

    manifest = run_books(options(corpus, out, bpe_model, progress=True))
    assert counting.calls == 0
    assert manifest == read_json(out / "manifest.json")
    assert "already complete" in capsys.readouterr().err
    assert {p: os.stat(os.path.join(out, p)).st_ino for p in before} == before  # nothing rewritten

    rebuilt = run_books(options(corpus, out, bpe_model, force=True))
    assert counting.calls == 1
    assert {p: os.stat(os.path.join(out, p)).st_ino for p in before} != before
    compare_outputs(src, str(out))
    assert without_timestamps(rebuilt) == without_timestamps(manifest)


def test_incomplete_or_changed_output_is_rebuilt(built, corpus, bpe_model, tmp_path, monkeypatch):
    src, _ = built
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    counting = _CountingBuild(monkeypatch)
    os.remove(out / "packed-1024" / "manifest.json")  # a dataset directory left incomplete
    run_books(options(corpus, out, bpe_model))
    assert counting.calls == 1
    compare_outputs(src, str(out))
    run_books(options(corpus, out, bpe_model, seq_lens=(1024, 256)))  # different options
    assert counting.calls == 2
    verify_output(str(out), (1024, 256))


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_missing_or_damaged_shard_makes_the_output_incomplete(built, corpus, bpe_model, tmp_path, monkeypatch, damage):
    src, _ = built
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    counting = _CountingBuild(monkeypatch)
    shard = sorted((out / "packed-256").glob("*.array_record-*"))[0]
    if damage == "delete":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:-10])
    run_books(options(corpus, out, bpe_model))
    assert counting.calls == 1  # the manifests alone no longer vouch for it: rebuilt
    compare_outputs(src, str(out))


# --- failing runs ----------------------------------------------------------------------------------------


def test_all_bad_inputs_raise_and_write_no_dataset(tmp_path, bpe_model):
    indir = tmp_path / "in"
    indir.mkdir()
    write_jsonl(indir / "bad.jsonl", [b"{broken", b'{"text": 1}', record("x")])
    (indir / "broken.jsonl.zst").write_bytes(b"not zstd")
    out = tmp_path / "out"
    with pytest.raises(NoValidDocumentsError) as e:
        run_books(BooksOptions(inputs=(str(indir / "*"),), output=str(out), tokenizer=bpe_model, seq_lens=(64,),
                               min_chars=5))
    msg = str(e.value)
    for reason in ("read:invalid_json x1", "read:text_not_string x1", "read:corrupt_zstd x1", "filter:too_short x1"):
        assert reason in msg
    assert "failures.jsonl" in msg and "2 input files" in msg
    assert sorted(os.listdir(out)) == [".lwm-pack", "failures.jsonl", "manifest.json"]  # the job's lock folder
    job = read_json(out / "manifest.json")
    assert job["documents"] == 0 and job["datasets"] == {}
    assert job["failures"]["total"] == len(read_failures(out)) == 4


def test_glob_that_matches_nothing_names_the_pattern(tmp_path, bpe_model, corpus):
    pattern = str(tmp_path / "nothing-here" / "*.jsonl.zst")
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError) as e:
        run_books(BooksOptions(inputs=(os.path.join(corpus.dir, "*"), pattern), output=str(out), tokenizer=bpe_model))
    assert pattern in str(e.value)
    assert not out.exists()


def test_unsupported_input_file_raises(tmp_path, bpe_model):
    (tmp_path / "notes.md").write_text("# not an input type")
    with pytest.raises(ValueError, match="unsupported input type"):
        run_books(BooksOptions(inputs=(str(tmp_path / "*"),), output=str(tmp_path / "out"), tokenizer=bpe_model))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(inputs=()), "inputs"),
        (dict(seq_lens=()), "seq_lens"),
        (dict(seq_lens=(1,)), "outside"),
        (dict(seq_lens=(64, 64)), "repeats"),
        (dict(min_chars=-1), "min_chars"),
        (dict(min_chars=10, max_chars=5), "max_chars"),
        (dict(shard_tokens=0), "shard_tokens"),
        (dict(direct_running_mode="multi_threading"), "direct_running_mode"),
    ],
)
def test_bad_options_raise(kw, match):
    base = dict(inputs=("x.jsonl",), output="out", tokenizer="t.model")
    with pytest.raises(ValueError, match=match):
        BooksOptions(**{**base, **kw})


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(policy="shorten"), "policy"),
        (dict(piece_positions="keep"), "piece_positions"),
        (dict(loss_policy="vision_only"), "loss policy"),
        (dict(window=0), "window"),
        (dict(top_up_below=1.5), "top_up_below"),
    ],
)
def test_bad_pack_options_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        PackOptions(**kw)


# --- bugs --------------------------------------------------------------------------------------------------


def _small_corpus(directory, books: list[int]) -> str:
    os.makedirs(directory, exist_ok=True)
    write_jsonl_zst(os.path.join(directory, "books.jsonl.zst"), [record(book(100 + i, n)) for i, n in enumerate(books)])
    return os.path.join(directory, "*.jsonl.zst")


def test_lone_surrogate_is_dropped_not_fatal(tmp_path, bpe_model):
    write_jsonl(tmp_path / "s.jsonl", [record("a good document here"), b'{"text": "bad \\ud800 half pair"}',
                                       record("another good document")])
    manifest = run_books(BooksOptions(inputs=(str(tmp_path / "s.jsonl"),), output=str(tmp_path / "out"),
                                      tokenizer=bpe_model, seq_lens=(64,)))
    assert manifest["documents"] == 2
    assert [(r["file"], r["line"]) for r in read_failures(tmp_path / "out")] == [(str(tmp_path / "s.jsonl"), 2)]


def test_small_shard_tokens_give_consistent_shards(tmp_path, bpe_model):
    import tensorflow_datasets as tfds

    pattern = _small_corpus(tmp_path / "in", [2, 20, 2])
    out = tmp_path / "out"
    run_books(BooksOptions(inputs=(pattern,), output=str(out), tokenizer=bpe_model, seq_lens=(128,), shard_tokens=300))
    for name in ("documents", "packed-128"):
        d = out / name
        man = read_json(d / "manifest.json")
        assert all(s["file"].endswith(f"-of-{len(man['shards']):05d}") for s in man["shards"]), name
        src = tfds.builder_from_directory(str(d)).as_data_source()["train"]
        assert len(src) == man["records"]
        src[len(src) - 1]


def test_rebuild_with_other_shard_count_leaves_a_clean_directory(tmp_path, bpe_model):
    pattern = _small_corpus(tmp_path / "in", [6, 6, 6, 6])
    out = tmp_path / "out"
    base = dict(inputs=(pattern,), output=str(out), tokenizer=bpe_model, seq_lens=(256,))
    first = run_books(BooksOptions(**base))  # one shard per dataset
    total = read_json(out / "documents" / "manifest.json")["tokens"]["total"]
    assert first["documents"] == 4
    run_books(BooksOptions(**base, shard_tokens=total * 3 // 4))  # two shards per dataset
    for name in ("documents", "packed-256"):
        assert len(read_json(out / name / "manifest.json")["shards"]) == 2
        assert verify_directory(str(out / name)) == [], name


def test_missing_tokenizer_raises_file_not_found(tmp_path, corpus):
    with pytest.raises(FileNotFoundError):
        run_books(BooksOptions(inputs=(os.path.join(corpus.dir, "c.txt"),), output=str(tmp_path / "out"),
                               tokenizer=str(tmp_path / "missing.model")))


# --- real data -------------------------------------------------------------------------------------------------

REAL_TEXT = SHARED_DATA / "text"


def _books_from(text: str, parts: int) -> list[str]:
    """Cuts a text into `parts` books at line boundaries."""
    lines = text.split("\n")
    bounds = [len(lines) * i // parts for i in range(parts + 1)]
    return ["\n".join(lines[bounds[i] : bounds[i + 1]]) for i in range(parts)]


@pytest.mark.realdata
@pytest.mark.slow
def test_real_text_end_to_end(tmp_path):
    import sentencepiece as spm
    from lwmkit.tokenizers import train_bpe

    names = ("kjv_bible.txt", "jargon_file.txt", "devils_dictionary.txt")
    if not all((REAL_TEXT / n).is_file() for n in names):
        pytest.skip(f"real sample text not found under {REAL_TEXT} (the shared data folder beside the checkout)")
    raw = {n: (REAL_TEXT / n).read_text(encoding="utf-8") for n in names}

    indir = tmp_path / "in"
    indir.mkdir()
    texts: dict[tuple[str, int], str] = {}
    kjv = _books_from(raw["kjv_bible.txt"], 4)
    kjv[1] = kjv[1].replace("\n", "\r\n")  # Windows line endings: normalized before tokenizing
    jargon = _books_from(raw["jargon_file.txt"], 3)
    jargon[0] = unicodedata.normalize("NFD", jargon[0])  # decomposed accents: NFC before tokenizing
    devils = _books_from(raw["devils_dictionary.txt"], 2)
    jsonl = {"kjv.jsonl.zst": kjv, "jargon.jsonl.zst": jargon[:2], "devils.jsonl.zst": devils[:1]}
    for fname, books in jsonl.items():
        path = write_jsonl_zst(indir / fname, [record(b, {"title": f"{fname} part {i}", "part": i}) for i, b in enumerate(books)])
        texts.update({(path, i + 1): b for i, b in enumerate(books)})
    path = write_parquet(indir / "jargon.parquet", [jargon[2]], [{"title": "jargon part 2"}])
    texts[(path, 1)] = jargon[2]
    path = str(indir / "devils.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(devils[1])
    texts[(path, 1)] = devils[1]

    rng = random.Random(0)
    lines = [line for t in raw.values() for line in t.split("\n") if line.strip()]
    rng.shuffle(lines)
    model = train_bpe(lines, vocab_size=4000, seed=0, input_sentence_size=200_000)
    model_path = tmp_path / "real.model"
    model_path.write_bytes(model)

    seq_lens = (8192, 32768)
    out = tmp_path / "out"
    manifest = run_books(BooksOptions(inputs=(str(indir / "*"),), output=str(out), tokenizer=str(model_path),
                                      seq_lens=seq_lens))
    assert manifest["failures"]["total"] == 0
    assert manifest["documents"] == len(texts) == 9

    # Every document is exactly SentencePiece's encoding of its normalized text.
    sp = spm.SentencePieceProcessor(model_proto=model)
    docs = verify_output(str(out), seq_lens, bos_id=sp.bos_id(), eos_id=sp.eos_id())
    assert {(d["source_file"], d["source_line"]) for d in docs.values()} == set(texts)
    for rec in docs.values():
        text = normalize_text(texts[(rec["source_file"], rec["source_line"])])
        expected = [sp.bos_id()] + sp.encode(text) + [sp.eos_id()]
        assert rec["tokens"].tolist() == expected, rec["source_file"]
        assert rec["doc_id"] == document_id(text)
    assert "\r" not in sp.decode(docs[document_id(normalize_text(kjv[1]))]["tokens"][1:-1].tolist())

    # Long books are split at both lengths and the counts line up with the documents.
    total = sum(d["tokens"].shape[0] for d in docs.values())
    assert total > 1_000_000
    for seq_len in seq_lens:
        man = read_json(out / f"packed-{seq_len}" / "manifest.json")
        assert man["packing"]["documents_split"] == sum(d["tokens"].shape[0] > seq_len for d in docs.values()) > 0
        assert man["tokens"]["total"] == total
        assert man["fill"] > 0.9
    rows = parquet_rows(out / "documents" / "documents.parquet")
    assert sum(r["tokens"] for r in rows) == total
    assert sum(r["chars"] for r in rows) == sum(len(normalize_text(t)) for t in texts.values())
