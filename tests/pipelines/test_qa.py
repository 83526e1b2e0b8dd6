"""The QA job end to end, against a deterministic OpenAI-compatible server started here on 127.0.0.1.

The server (`qa_server.pipeline_script`) answers by passage: some with 429s, 503s, slow replies
past the client's timeout, malformed bodies or content, or answers the passage does not support;
`qa_server.expected` says what each passage must cost and whether its chunk must fail. One
module-scoped run (`served`) backs most checks; the others run the job on their own.
"""

from __future__ import annotations

import collections
import dataclasses
import filecmp
import json
import os

import numpy as np
import pytest
from lwmkit.packing import ShardDataSource, verify_directory
from lwmkit.packing.records import document_id
from lwmkit.pipelines.engine.normalize import normalize_text
from lwmkit.pipelines.qa.assembly import ContextOptions
from lwmkit.pipelines.qa.chunks import chunk_text
from lwmkit.pipelines.qa.client import ClientOptions
from lwmkit.pipelines.qa.extractive import ExtractiveOptions
from lwmkit.pipelines.qa.generators import ChatGeneratorOptions, collapse_space
from lwmkit.pipelines.qa.job import NoValidContextsError, QAOptions, run_qa
from lwmkit.tokenizers import SentencePieceTokenizer

from .helpers import book, read_failures, read_json, record, write_jsonl
from .qa_server import FakeChatServer, expected, ok_pair

SEQ_LEN = 2048
CHUNK_TOKENS = 100
CONTEXT = ContextOptions.preset("tiny")  # 100-token chunks, 2048-token contexts, min_fill 0.8


def make_corpus(directory, books: int = 3, seed: int = 100) -> tuple[str, dict[tuple[str, int], str]]:
    """A jsonl file of books plus a broken line and a book too short for a context; returns (glob, texts)."""
    os.makedirs(directory, exist_ok=True)
    texts = [book(seed + i, 40) for i in range(books)]
    path = os.path.join(directory, "books.jsonl")
    lines = [record(t, {"title": f"book {i}"}) for i, t in enumerate(texts)]
    write_jsonl(path, lines[:1] + [b'{"text": "cut short', record("A tiny story. It ends at once.")] + lines[1:])
    where = {(path, 1): texts[0], **{(path, i + 3): t for i, t in enumerate(texts[1:], start=1)}}
    return os.path.join(directory, "*.jsonl"), where


def chat_options(url: str, **client) -> ChatGeneratorOptions:
    c = dict(
        base_url=url, model="fake-llm", timeout_s=3.0, retries=3, backoff_s=0.01, max_backoff_s=0.05, concurrency=8
    )
    return ChatGeneratorOptions(client=ClientOptions(**{**c, **client}), temperature=0.0)


def context_metas(out) -> dict[int, dict]:
    import pyarrow.parquet as pq

    rows = pq.read_table(os.path.join(out, "documents", "documents.parquet")).to_pylist()
    return {r["doc_id"]: json.loads(r["meta"]) for r in rows}


def book_chunks(texts: dict, tok) -> dict[str, object]:
    """Every chunk of the corpus by id, cut independently of the job."""
    out = {}
    for text in texts.values():
        norm = normalize_text(text)
        for c in chunk_text(norm, document_id(norm), tok, CHUNK_TOKENS):
            out[c.chunk_id] = c
    return out


@pytest.fixture(scope="module")
def tok(bpe_model):
    return SentencePieceTokenizer.from_file(bpe_model)


@pytest.fixture(scope="module")
def served(tmp_path_factory, bpe_model, tok):
    base = tmp_path_factory.mktemp("qa")
    pattern, texts = make_corpus(base / "in")
    # A 3 s client timeout: an ordinary reply on a loaded 2-core CI machine must never time out
    # (that would add a request the script does not expect); a slow reply (4 s) always does.
    with FakeChatServer(slow_s=4.0) as server:
        options = QAOptions(
            inputs=(pattern,),
            output=str(base / "out"),
            tokenizer=bpe_model,
            generator=chat_options(server.url),
            context=CONTEXT,
            cache_dir=str(base / "cache"),
        )
        manifest = run_qa(options)
        yield {
            "options": options,
            "manifest": manifest,
            "server": server,
            "texts": texts,
            "chunks": book_chunks(texts, tok),
            "requests": server.requests,
            "log": server.answered(),
            "base": base,
        }


def test_retries_and_failures_follow_the_server(served):
    server, chunks, manifest = served["server"], served["chunks"], served["manifest"]
    from .qa_server import bucket

    assert {bucket(c.text) for c in chunks.values()} >= set(range(7))  # 429s, slow, malformed, 503s... all occur
    exp = {cid: expected(c.text) for cid, c in chunks.items()}
    assert {cid: server.requests_for(c.text) for cid, c in chunks.items()} == {
        cid: e.requests for cid, e in exp.items()
    }
    assert served["requests"] == sum(e.requests for e in exp.values())
    kinds = collections.Counter(e.failure for e in exp.values())
    assert kinds["malformed_reply"] and kinds["unsupported_answer"] and kinds[None] > len(chunks) // 2

    rows = read_failures(served["options"].output)
    gen_rows = [r for r in rows if r["stage"] == "validate"]
    got = {json.loads(r["detail"])["chunk_id"]: r["reason"] for r in gen_rows}
    assert got == {cid: e.failure for cid, e in exp.items() if e.failure}
    for r in gen_rows:
        d = json.loads(r["detail"])
        assert d["attempts"] == 3 and len(d["raw"]) == 3  # every reply is kept, raw
        marker = "Sorry, I would rather" if r["reason"] == "malformed_reply" else "zebra quantum xylophone"
        assert all(marker in raw for raw in d["raw"])
    other = sorted((r["stage"], r["reason"], r["line"]) for r in rows if r["stage"] != "validate")
    assert other == [("chunk", "too_short", 3), ("read", "invalid_json", 2)]

    g = manifest["qa"]["generation"]
    assert g["calls"] == sum(e.calls for e in exp.values())
    assert g["http_requests"] == served["requests"]
    assert g["cache_hits"] == 0
    received = [e.usage for e in served["log"] if e.usage is not None and e.behaviour != "slow"]
    assert g["usage"] == {
        k: sum(u[k] for u in received) for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    assert g["usage"]["total_tokens"] > 0
    c = manifest["qa"]["chunks"]
    assert (c["chunks"], c["failed"]) == (len(chunks), sum(e.failure is not None for e in exp.values()))
    assert c["failures_by_reason"] == {k: v for k, v in kinds.items() if k}
    assert manifest["generator"]["kind"] == "openai_chat" and manifest["generator"]["client"]["model"] == "fake-llm"


def test_contexts_hit_their_length_and_hold_their_evidence(served, tok):
    out, chunks, manifest = served["options"].output, served["chunks"], served["manifest"]
    failed = {cid for cid, c in chunks.items() if expected(c.text).failure}
    metas = context_metas(out)
    assert verify_directory(os.path.join(out, f"packed-{SEQ_LEN}")) == []
    src = ShardDataSource(os.path.join(out, f"packed-{SEQ_LEN}"))
    assert len(src) == len(metas) == manifest["documents"] == manifest["qa"]["contexts"]["count"] >= 5
    turns_seen = 0
    for i in range(len(src)):
        rec = src[i]
        (doc,), (n,) = rec["segment_doc_ids"].tolist(), rec["segment_lengths"].tolist()
        assert 0.8 * SEQ_LEN <= n <= SEQ_LEN  # one context per record, at its target length
        meta = metas[doc]
        ids = [k for k in chunks if meta["chunks"][0] <= k <= meta["chunks"][1]]  # ids sort by book, then index
        assert len(ids) == meta["chunk_count"]
        tokens, weights = rec["tokens"][:n], rec["loss_weights"]
        on = np.zeros(SEQ_LEN, bool)
        for t in meta["turns"]:
            a0, a1 = t["answer"]
            on[a0:a1] = True
            source = chunks[t["chunk_id"]]
            assert meta["chunks"][0] <= t["chunk_id"] <= meta["chunks"][1]  # the source chunk is in this context
            np.testing.assert_array_equal(tokens[t["evidence"][0] : t["evidence"][1]], source.tokens)
            assert tokens[a0:a1].tolist() == tok.encode(ok_pair(source.text)["answer"])  # the server's answer
            assert t["question"] >= t["evidence"][1] and t["distance"] == t["question"] - t["evidence"][1]
        assert {t["chunk_id"] for t in meta["turns"]} == set(ids) - failed  # every good chunk asks once
        assert tokens[n - 1] == tok.eos_id
        on[n - 1] = True  # and on the EOS after the last answer, as LWM's TextProcessor trains it
        np.testing.assert_array_equal(weights > 0, on)  # loss on answer tokens and nowhere else
        assert set(np.unique(weights).tolist()) <= {0.0, 1.0}
        turns_seen += len(meta["turns"])
    depth = manifest["qa"]["depth"]
    assert depth["questions"] == turns_seen == sum(depth["share_of_seq_len"].values())
    assert depth["max"] > SEQ_LEN // 2  # some evidence sits far from its question
    assert manifest["datasets"][f"packed-{SEQ_LEN}"]["fill"] >= 0.8


def test_a_second_run_makes_no_calls_and_writes_the_same_shards(served):
    server, first = served["server"], served["manifest"]
    before = server.requests
    out2 = served["base"] / "out2"
    manifest = run_qa(dataclasses.replace(served["options"], output=str(out2)))
    assert server.requests == before  # zero generator calls
    g, g1 = manifest["qa"]["generation"], first["qa"]["generation"]
    assert g["calls"] == g["http_requests"] == 0 and g["usage"]["total_tokens"] == 0
    assert g["cache_hits"] == g1["calls"] and g["usage_saved_by_cache"] == g1["usage"]
    assert manifest["qa"]["depth"] == first["qa"]["depth"]
    for name in ("documents", f"packed-{SEQ_LEN}"):
        d1, d2 = os.path.join(served["options"].output, name), os.path.join(out2, name)
        shards = [f for f in os.listdir(d1) if ".array_record-" in f]
        assert shards and all(filecmp.cmp(os.path.join(d1, f), os.path.join(d2, f), shallow=False) for f in shards)
    assert read_failures(out2) == read_failures(served["options"].output)

    again = run_qa(served["options"])  # the same output: already complete, nothing runs
    assert server.requests == before and again == read_json(os.path.join(served["options"].output, "manifest.json"))
    assert again["qa"] == first["qa"]


def test_calls_that_got_no_reply_are_made_again_on_rerun(tmp_path, bpe_model, tok):
    from .qa_server import bucket

    pattern, texts = make_corpus(tmp_path / "in", books=1, seed=300)
    chunks = book_chunks(texts, tok)
    down = {c.text for c in chunks.values() if bucket(c.text) < 3}
    out, cache = str(tmp_path / "out"), str(tmp_path / "cache")
    with FakeChatServer(script=lambda p, n: "503" if p in down else "ok") as server:
        opts = QAOptions(
            inputs=(pattern,),
            output=out,
            tokenizer=bpe_model,
            context=CONTEXT,
            cache_dir=cache,
            generator=chat_options(server.url, retries=1),
        )
        first = run_qa(opts)
        assert server.requests == len(chunks) + len(down)  # each down chunk: one try and one retry
    assert first["qa"]["chunks"]["failures_by_reason"] == {"http_503": len(down)}
    with FakeChatServer(script=lambda p, n: "ok") as server:
        second = run_qa(dataclasses.replace(opts, generator=chat_options(server.url), retry_failures=True))
        assert server.requests == len(down)  # only the chunks that never got a reply
        assert {e.passage for e in server.answered()} == down
    assert second["qa"]["chunks"]["failed"] == 0 and second["qa"]["generation"]["cache_hits"] == len(chunks) - len(down)
    # The chunks that failed are recovered; the broken line and the too-short book fail again.
    r = second["retry"]
    assert (r["rows"], r["recovered"], r["still_failing"]) == (len(down) + 2, len(down), 2)
    assert r["chunks"] == {"rows": len(down), "still_failing": 0} and r["generator_calls"] == len(down)


@pytest.fixture(scope="module")
def extractive(tmp_path_factory, bpe_model):
    """The extractive job run through the command line (no server anywhere)."""
    from lwmkit.pipelines.cli import main

    base = tmp_path_factory.mktemp("extractive")
    pattern, texts = make_corpus(base / "in", books=2, seed=400)
    out = base / "out"
    argv = ["qa", "--input", pattern, "--tokenizer", bpe_model, "--output", str(out), "--preset", "tiny"]
    argv += ["--generator", "extractive", "--pairs-per-chunk", "2", "--seed", "5", "--quiet"]
    return {"rc": main(argv), "pattern": pattern, "texts": texts, "out": out}


def test_extractive_job_runs_without_a_server_through_the_cli(extractive, tok):
    assert extractive["rc"] == 0
    out = extractive["out"]
    manifest = read_json(out / "manifest.json")
    assert manifest["generator"]["kind"] == "extractive" and "no language model" in manifest["generator"]["label"]
    assert manifest["qa"]["generation"]["calls"] == 0 and manifest["qa"]["generation"]["pairs"] > 0
    chunks = book_chunks(extractive["texts"], tok)
    for meta in context_metas(str(out)).values():
        assert len(meta["turns"]) == 2 * meta["chunk_count"]
        for t in meta["turns"]:
            assert collapse_space(t["answer_text"]).lower() in collapse_space(chunks[t["chunk_id"]].text).lower()


def test_documents_of_the_books_job_give_the_same_contexts(extractive, tmp_path, bpe_model):
    from lwmkit.pipelines import BooksOptions, run_books

    books = tmp_path / "books"
    run_books(BooksOptions(inputs=(extractive["pattern"],), output=str(books), tokenizer=bpe_model, seq_lens=(SEQ_LEN,)))
    gen = ExtractiveOptions(seed=5, pairs_per_chunk=2)
    docs = run_qa(QAOptions(documents=str(books / "documents"), output=str(tmp_path / "docs"), tokenizer=bpe_model,
                            generator=gen, context=ContextOptions.preset("tiny", seed=5)))
    assert docs["documents"] == read_json(extractive["out"] / "manifest.json")["documents"] > 0
    d1, d2 = extractive["out"] / f"packed-{SEQ_LEN}", tmp_path / "docs" / f"packed-{SEQ_LEN}"
    shards = [f for f in os.listdir(d1) if ".array_record-" in f]
    assert shards and all(filecmp.cmp(d1 / f, d2 / f, shallow=False) for f in shards)
    assert docs["input_files"] == [str(books / "documents" / f) for f in sorted(os.listdir(books / "documents"))
                                   if ".array_record-" in f]


@pytest.mark.slow
def test_multi_processing_matches_in_memory(extractive, tmp_path, bpe_model):
    """Every DoFn pickles and holds no process-global state: worker processes write the same bytes."""
    from lwmkit.pipelines.cli import main

    mp = tmp_path / "mp"
    argv = ["qa", "--input", extractive["pattern"], "--tokenizer", bpe_model, "--output", str(mp), "--preset", "tiny",
            "--generator", "extractive", "--pairs-per-chunk", "2", "--seed", "5", "--quiet",
            "--direct-running-mode", "multi_processing", "--direct-num-workers", "2"]
    assert main(argv) == 0
    assert read_json(mp / "manifest.json")["runner"] == "DirectRunner (multi_processing)"
    for sub in ("documents", f"packed-{SEQ_LEN}"):
        d1, d2 = extractive["out"] / sub, mp / sub
        shards = sorted(f for f in os.listdir(d1) if ".array_record-" in f)
        assert shards and shards == sorted(f for f in os.listdir(d2) if ".array_record-" in f)
        assert all(filecmp.cmp(d1 / f, d2 / f, shallow=False) for f in shards)


def test_no_context_raises_with_the_reasons(tmp_path, bpe_model):
    write_jsonl(tmp_path / "short.jsonl", [record("One short book. Nothing more."), record(book(1, 3))])
    with pytest.raises(NoValidContextsError, match="chunk:too_short x2"):
        run_qa(
            QAOptions(
                inputs=(str(tmp_path / "short.jsonl"),),
                output=str(tmp_path / "out"),
                tokenizer=bpe_model,
                context=CONTEXT,
            )
        )
    assert read_json(tmp_path / "out" / "manifest.json")["qa"]["chunks"]["books"] == 0


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(inputs=()), "inputs/documents"),
        (dict(documents="docs/"), "inputs/documents"),
        (dict(generator="extractive"), "generator"),
        (dict(max_attempts=0), "max_attempts"),
        (dict(books_per_batch=0), "books_per_batch"),
        (dict(min_chars=5, max_chars=2), "max_chars"),
        (dict(direct_running_mode="multi_threading"), "direct_running_mode"),
    ],
)
def test_bad_options_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        QAOptions(**{**dict(inputs=("x.jsonl",), output="out", tokenizer="t.model"), **kw})


def test_grain_loader_reads_a_batch_with_answer_loss(served):
    from lwmkit.packing import make_loader

    d = os.path.join(served["options"].output, f"packed-{SEQ_LEN}")
    src = ShardDataSource(d)
    by_tokens = {src[i]["tokens"].tobytes(): src[i] for i in range(len(src))}
    batch = next(make_loader(d, batch_size=2, seed=0))
    assert batch["tokens"].shape == batch["loss_weights"].shape == (2, SEQ_LEN)
    for row in range(2):
        rec = by_tokens[batch["tokens"][row].tobytes()]
        for k in ("loss_weights", "tokens_positions", "tokens_segment_ids"):
            np.testing.assert_array_equal(batch[k][row], rec[k])
        assert 0 < batch["loss_weights"][row].sum() < 0.2 * SEQ_LEN  # answers are a small share of a context
