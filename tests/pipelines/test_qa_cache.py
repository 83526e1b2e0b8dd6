"""The reply cache and the call loop around it: keys, atomic JSON entries, validation retries, resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from lwmkit.pipelines.qa.cache import ReplyCache, cache_key, cache_request
from lwmkit.pipelines.qa.calls import ChunkResult, generate_all, generate_pairs
from lwmkit.pipelines.qa.chunks import Chunk
from lwmkit.pipelines.qa.client import CallError
from lwmkit.pipelines.qa.generators import QAPair, Reply, parse_pairs, validate_pairs


def chunk(i: int, text: str | None = None) -> Chunk:
    text = text or f"Ada found key number {i} near the harbour."
    return Chunk(f"book-{i:05d}", 1, i, 0, len(text), text, np.arange(5, dtype=np.int32))


def good(c: Chunk) -> str:
    return json.dumps([{"question": f"What did Ada find ({c.index})?", "answer": f"key number {c.index}"}])


class Scripted:
    """A paid generator whose replies follow a per-chunk script: 'good', 'bad', or an exception to raise."""

    concurrency = 4

    def __init__(self, script: dict[int, list]):
        self.script = script
        self.calls: list[tuple[str, int]] = []

    def describe(self):
        return {"kind": "scripted"}

    def cache_identity(self):
        return {"kind": "scripted", "model": "m", "prompt": "p", "params": {"t": 0}}

    def reply(self, c: Chunk, attempt: int) -> Reply:
        self.calls.append((c.chunk_id, attempt))
        plan = self.script.get(c.index, [])
        step = plan[attempt] if attempt < len(plan) else "good"
        if isinstance(step, Exception):
            raise step
        body = good(c) if step == "good" else "no pairs here, sorry"
        return Reply(body, {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}, requests=1 + attempt)

    def parse(self, reply: Reply, c: Chunk) -> list[QAPair]:
        return validate_pairs(parse_pairs(reply.body), c.text, support="exact", min_support=1.0, max_chars=200, limit=1)


def test_key_covers_chunk_generator_and_attempt():
    ident = {"model": "m", "prompt": "p", "params": {"temperature": 0.7}}
    base = cache_key(cache_request("a" * 64, ident, 0))
    assert base == cache_key(cache_request("a" * 64, dict(reversed(list(ident.items()))), 0))  # canonical JSON
    assert len(base) == 64 and int(base, 16) >= 0
    others = [
        cache_request("b" * 64, ident, 0),
        cache_request("a" * 64, {**ident, "model": "m2"}, 0),
        cache_request("a" * 64, {**ident, "prompt": "q"}, 0),
        cache_request("a" * 64, {**ident, "params": {"temperature": 0.8}}, 0),
        cache_request("a" * 64, ident, 1),
    ]
    assert len({base, *(cache_key(r) for r in others)}) == 6


def test_entries_are_plain_json_written_atomically(tmp_path):
    cache = ReplyCache(str(tmp_path / "c"))
    req = cache_request("a" * 64, {"model": "m"}, 0)
    key = cache_key(req)
    assert cache.get(key) is None
    cache.put(key, req, Reply('{"x": 1}', {"total_tokens": 5}, requests=3, waited_s=1.0))
    path = cache.path(key)
    assert path == str(tmp_path / "c" / key[:2] / f"{key}.json")
    assert os.listdir(os.path.dirname(path)) == [f"{key}.json"]  # no temporary file left behind
    entry = json.loads(open(path, encoding="utf-8").read())
    assert entry == {
        "version": 1,
        "key": key,
        "request": req,
        "reply": {"body": '{"x": 1}', "usage": {"total_tokens": 5}},
    }
    got = cache.get(key)
    assert (got.body, got.usage, got.requests) == ('{"x": 1}', {"total_tokens": 5}, 0)


@pytest.mark.parametrize(
    "content",
    [
        b"{truncated",
        b'{"key": "other", "reply": {"body": "x", "usage": {}}}',
        b"[]",
        b'{"key": "K", "reply": {"body": 3, "usage": {}}}',
    ],
)
def test_unreadable_entries_count_as_absent(tmp_path, content):
    cache = ReplyCache(str(tmp_path))
    key = "K" + "0" * 63
    os.makedirs(os.path.dirname(cache.path(key)))
    with open(cache.path(key), "wb") as f:
        f.write(content.replace(b'"K"', json.dumps(key).encode()))
    assert cache.get(key) is None


def test_invalid_replies_are_retried_as_new_attempts_and_a_rerun_pays_nothing(tmp_path):
    cache = ReplyCache(str(tmp_path))
    gen = Scripted({0: ["bad"], 1: ["bad", "bad", "bad"]})
    r0, r1, r2 = generate_all(gen, [chunk(0), chunk(1), chunk(2)], cache, max_attempts=3)
    assert (r0.pairs, r0.attempts, r0.calls, r0.cache_hits, r0.requests) == (
        [QAPair("What did Ada find (0)?", "key number 0")],
        2,
        2,
        0,
        1 + 2,
    )
    assert r0.usage == {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26}
    assert (r1.pairs, r1.reason, r1.attempts, r1.calls) == ([], "malformed_reply", 3, 3)
    assert r1.raw == ["no pairs here, sorry"] * 3
    assert (r2.attempts, r2.calls, r2.reason) == (1, 1, None)
    assert len(gen.calls) == 6

    again = Scripted({})  # would now answer well: but every attempt is already paid for
    s0, s1, s2 = generate_all(again, [chunk(0), chunk(1), chunk(2)], cache, max_attempts=3)
    assert again.calls == []
    assert [(s.calls, s.cache_hits, s.attempts) for s in (s0, s1, s2)] == [(0, 2, 2), (0, 3, 3), (0, 1, 1)]
    assert s0.pairs == r0.pairs and s1.reason == "malformed_reply" and s1.raw == r1.raw
    assert s0.cached_usage == r0.usage and s0.usage == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

    more = Scripted({})  # one more attempt allowed: only chunk 1 calls, for attempt 3
    generate_all(more, [chunk(0), chunk(1), chunk(2)], cache, max_attempts=4)
    assert more.calls == [("book-00001", 3)]


def test_failed_calls_are_not_cached_so_a_rerun_resumes(tmp_path):
    cache = ReplyCache(str(tmp_path))
    down = Scripted({1: [CallError("http_503", "busy", requests=6)], 2: [CallError("timeout", "", requests=2)]})
    results = generate_all(down, [chunk(i) for i in range(4)], cache, max_attempts=3)
    assert [(r.reason, r.requests, r.calls) for r in results] == [
        (None, 1, 1),
        ("http_503", 6, 0),
        ("timeout", 2, 0),
        (None, 1, 1),
    ]
    assert results[1].detail == "busy" and results[1].raw == []
    up = Scripted({})
    again = generate_all(up, [chunk(i) for i in range(4)], cache, max_attempts=3)
    assert sorted(up.calls) == [("book-00001", 0), ("book-00002", 0)]
    assert [r.reason for r in again] == [None] * 4


def test_a_generator_bug_fails_its_chunk_only(tmp_path):
    gen = Scripted({1: [RuntimeError("boom")]})
    results = generate_all(gen, [chunk(0), chunk(1), chunk(2)], ReplyCache(str(tmp_path)), max_attempts=2)
    assert [r.reason for r in results] == [None, "generator_error", None]
    assert "RuntimeError: boom" in results[1].detail


def test_without_a_cache_every_run_calls():
    gen = Scripted({})
    generate_pairs(gen, chunk(0), None, 2)
    generate_pairs(gen, chunk(0), None, 2)
    assert gen.calls == [("book-00000", 0), ("book-00000", 0)]


def test_results_round_trip_through_json():
    r = ChunkResult(
        "c",
        [QAPair("q", "a")],
        attempts=2,
        calls=1,
        usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    )
    assert ChunkResult.from_json(json.loads(json.dumps(r.to_json()))) == r
