"""--retry-failures, stage counts and backoff accounting of the QA job, against the test chat server.

A first run meets a server that answers some passages with malformed or unsupported pairs forever
and others with 503s past the client's retries; the healed server then answers everything but the
unsupported passages. The retry must send new attempts for the chunks whose cached replies failed
validation (not replay them), leave exactly the chunks the healed server still fails, and say so.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os

from lwmkit.pipelines.qa.accounting import retry_line
from lwmkit.pipelines.qa.job import QAOptions, run_qa

from .qa_server import FakeChatServer, bucket
from .test_qa import CONTEXT, book_chunks, chat_options, make_corpus, read_failures


def _first(p: str, n: int) -> str:
    return {1: "malformed_content", 2: "503", 6: "unsupported"}.get(bucket(p), "ok")


def _healed(p: str, n: int) -> str:
    return "unsupported" if bucket(p) == 6 else "ok"


def test_retry_failures_asks_again_for_chunks_that_failed_validation(tmp_path, bpe_model):
    from lwmkit.tokenizers import SentencePieceTokenizer

    tok = SentencePieceTokenizer.from_file(bpe_model)
    pattern, texts = make_corpus(tmp_path / "in", books=2, seed=500)
    chunks = book_chunks(texts, tok)
    by = collections.defaultdict(set)
    for c in chunks.values():
        by[bucket(c.text)].add(c.text)
    assert by[1] and by[2] and by[6]  # every behaviour occurs
    opts = QAOptions(
        inputs=(pattern,),
        output=str(tmp_path / "out"),
        tokenizer=bpe_model,
        context=CONTEXT,
        cache_dir=str(tmp_path / "cache"),
        generator=chat_options("http://127.0.0.1:1", retries=1, backoff_s=0.02, max_backoff_s=0.02),
    )
    with FakeChatServer(script=_first) as server:
        first = run_qa(dataclasses.replace(opts, generator=dataclasses.replace(
            opts.generator, client=dataclasses.replace(opts.generator.client, base_url=server.url))))
    c1 = first["qa"]["chunks"]
    assert c1["failures_by_reason"] == {
        "malformed_reply": len(by[1]), "http_503": len(by[2]), "unsupported_answer": len(by[6])
    }
    # Calls that ran out of retries backed off too (one wait of 0.01-0.02 s each: the backoff's jitter;
    # no other call waited), and count as an attempt.
    assert 0.01 * len(by[2]) - 1e-6 <= first["qa"]["generation"]["backoff_wait_s"] <= 0.02 * len(by[2]) + 1e-6
    http_rows = [json.loads(r["detail"]) for r in read_failures(opts.output) if r["reason"] == "http_503"]
    assert len(http_rows) == len(by[2]) and all(d["attempts"] == 1 for d in http_rows)
    # One unit per stage, and each reconciles.
    for name, s in first["stages"].items():
        assert s["seen"] == s["kept"] + s["dropped"], (name, s)
    assert first["stages"]["validate"]["unit"] == "chunk"
    assert first["stages"]["validate"]["seen"] == c1["chunks"] == len(chunks)
    assert first["stages"]["read"]["files"] == 1 and first["stages"]["read"]["dropped"] == 1
    for name in first["datasets"]:
        with open(os.path.join(opts.output, name, "manifest.json"), encoding="utf-8") as f:
            assert json.load(f)["stages"] == first["stages"]

    with FakeChatServer(script=_healed) as server:
        healed = dataclasses.replace(opts.generator.client, base_url=server.url)
        second = run_qa(dataclasses.replace(
            opts, generator=dataclasses.replace(opts.generator, client=healed), retry_failures=True))
        asked = collections.Counter(e.passage for e in server.answered())
    # Malformed and unsupported chunks got new attempts (3 each for the still unsupported ones, 1 for
    # the healed malformed ones); the 503 chunks one each; nothing else was sent.
    assert asked == {**{p: 1 for p in by[1] | by[2]}, **{p: 3 for p in by[6]}}
    c2 = second["qa"]["chunks"]
    assert c2["failures_by_reason"] == {"unsupported_answer": len(by[6])}
    still = {json.loads(r["detail"])["chunk_id"] for r in read_failures(opts.output) if r["stage"] == "validate"}
    assert still == {cid for cid, c in chunks.items() if bucket(c.text) == 6}
    failed_chunks = len(by[1]) + len(by[2]) + len(by[6])
    r = second["retry"]
    assert r["chunks"] == {"rows": failed_chunks, "still_failing": len(by[6])}
    assert r["rows"] == failed_chunks + 2  # and the broken line and the too-short book, which fail again
    assert (r["recovered"], r["still_failing"]) == (len(by[1]) + len(by[2]), len(by[6]) + 2)
    assert r["generator_calls"] == sum(asked.values()) == second["qa"]["generation"]["calls"]
    line = retry_line(r)
    assert f"{len(by[1]) + len(by[2])} recovered" in line and f"({len(by[6])} chunks)" in line
    for name, s in second["stages"].items():
        assert s["seen"] == s["kept"] + s["dropped"], (name, s)

    # A plain rerun afterwards reads the recovered replies from the cache: no call, the same result.
    with FakeChatServer(script=_healed) as server:
        healed = dataclasses.replace(opts.generator.client, base_url=server.url)
        third = run_qa(dataclasses.replace(
            opts, output=str(tmp_path / "out3"), generator=dataclasses.replace(opts.generator, client=healed)))
        assert server.requests == 0
    assert third["qa"]["chunks"] == c2
