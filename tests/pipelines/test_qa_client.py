"""The OpenAI-compatible client against a local server: retries, backoff, timeouts, keys, concurrency."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
from lwmkit.pipelines.qa.calls import generate_all
from lwmkit.pipelines.qa.chunks import Chunk
from lwmkit.pipelines.qa.client import (
    CallError,
    ChatClient,
    ClientOptions,
    MalformedReply,
    reply_content,
)
from lwmkit.pipelines.qa.generators import ChatGeneratorOptions, ChatQAGenerator

from .qa_server import FakeChatServer, ok_pair

MESSAGES = [{"role": "user", "content": "Passage:\nAda found the silver key near the harbour."}]
PASSAGE = "Ada found the silver key near the harbour."


def client(server: FakeChatServer, **kw) -> ChatClient:
    defaults = dict(
        base_url=server.url, model="fake-model", timeout_s=2.0, retries=3, backoff_s=0.01, max_backoff_s=0.05
    )
    return ChatClient(ClientOptions(**{**defaults, **kw}))


def sequence(*behaviours: str):
    """A script answering the n-th request for any passage with behaviours[n] (then ok)."""
    return lambda passage, n: behaviours[n] if n < len(behaviours) else "ok"


def test_ok_reply_is_returned_with_content_and_usage():
    with FakeChatServer(script=sequence()) as server:
        reply = client(server).complete(MESSAGES, temperature=0.0, max_tokens=64)
    content, usage = reply_content(reply.body)
    assert json.loads(content) == [ok_pair(PASSAGE)]
    assert usage == server.log[0].usage and usage["total_tokens"] > 0
    assert reply.requests == 1 and reply.waited_s == 0.0


def test_429_is_retried_after_the_retry_after_delay():
    with FakeChatServer(script=sequence("429", "429"), retry_after="0.15") as server:
        start = time.monotonic()
        reply = client(server, max_backoff_s=1.0).complete(MESSAGES)
        elapsed = time.monotonic() - start
    assert [e.behaviour for e in server.log] == ["429", "429", "ok"]
    assert reply.requests == 3
    assert reply.waited_s == pytest.approx(0.3)
    assert elapsed >= 0.3


def test_retry_after_is_capped_by_max_backoff():
    with FakeChatServer(script=sequence("429"), retry_after="30") as server:
        start = time.monotonic()
        reply = client(server, max_backoff_s=0.05).complete(MESSAGES)
    assert time.monotonic() - start < 5 and reply.waited_s == pytest.approx(0.05)


def test_5xx_is_retried_with_backoff_and_gives_up_with_the_last_status():
    with FakeChatServer(script=lambda p, n: "503") as server:
        with pytest.raises(CallError) as e:
            client(server, retries=2).complete(MESSAGES)
    assert e.value.reason == "http_503" and e.value.requests == 3
    assert server.requests == 3


def test_429_that_never_ends_fails_after_all_retries():
    with FakeChatServer(script=lambda p, n: "429") as server:
        with pytest.raises(CallError, match="http_429") as e:
            client(server, retries=4).complete(MESSAGES)
    assert e.value.requests == 5 == server.requests


def test_other_4xx_fail_at_once():
    with FakeChatServer(script=lambda p, n: "401") as server:
        with pytest.raises(CallError) as e:
            client(server).complete(MESSAGES)
    assert e.value.reason == "http_401" and e.value.requests == 1 == server.requests


def test_slow_reply_past_the_timeout_is_retried():
    with FakeChatServer(script=sequence("slow"), slow_s=1.0) as server:
        start = time.monotonic()
        reply = client(server, timeout_s=0.2).complete(MESSAGES)
        elapsed = time.monotonic() - start
        assert server.requests == 2
    assert reply.requests == 2 and elapsed < 0.9
    assert json.loads(reply_content(reply.body)[0]) == [ok_pair(PASSAGE)]


def test_always_slow_fails_with_timeout():
    with FakeChatServer(script=lambda p, n: "slow", slow_s=0.6) as server:
        with pytest.raises(CallError) as e:
            client(server, timeout_s=0.1, retries=1).complete(MESSAGES)
    assert e.value.reason == "timeout" and e.value.requests == 2


def test_refused_connection_is_a_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the client connects: nothing listens there
    c = ChatClient(ClientOptions(base_url=f"http://127.0.0.1:{port}/v1", model="m", retries=1, backoff_s=0.01))
    with pytest.raises(CallError) as e:
        c.complete(MESSAGES)
    assert e.value.reason == "connection_error" and e.value.requests == 2


def test_api_key_comes_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("LWMKIT_TEST_KEY", "sk-test-123")
    monkeypatch.delenv("LWMKIT_NO_SUCH_KEY", raising=False)
    with FakeChatServer(script=sequence()) as server:
        client(server, api_key_env="LWMKIT_TEST_KEY").complete(MESSAGES)
        client(server, api_key_env="LWMKIT_NO_SUCH_KEY").complete(MESSAGES)
    assert [e.authorization for e in server.log] == ["Bearer sk-test-123", None]


def test_connections_are_kept_alive():
    with FakeChatServer(script=sequence()) as server:
        c = client(server)
        for _ in range(10):
            c.complete(MESSAGES)
    assert len({e.client_port for e in server.log}) == 1


def test_a_connection_the_server_closed_is_replaced_without_a_retry():
    with FakeChatServer(script=sequence()) as server:
        c = client(server, retries=0)  # a failed request would raise
        c.complete(MESSAGES)
        server.drop_connections()
        time.sleep(0.05)
        reply = c.complete(MESSAGES)
    assert reply.requests == 1 and server.requests == 2
    assert len({e.client_port for e in server.log}) == 2


def test_client_pickles_without_connections_or_key(monkeypatch):
    import pickle

    monkeypatch.setenv("LWMKIT_TEST_KEY", "sk-secret")
    with FakeChatServer(script=sequence()) as server:
        c = client(server, api_key_env="LWMKIT_TEST_KEY")
        c.complete(MESSAGES)
        data = pickle.dumps(c)
        assert b"sk-secret" not in data
        pickle.loads(data).complete(MESSAGES)
    assert server.requests == 2


def test_malformed_bodies_are_recognised():
    with pytest.raises(MalformedReply):
        reply_content("{not json")
    with pytest.raises(MalformedReply):
        reply_content(json.dumps({"choices": []}))
    with pytest.raises(MalformedReply):
        reply_content(json.dumps({"choices": [{"message": {"content": None}}]}))
    assert reply_content(json.dumps({"choices": [{"message": {"content": "x"}}]})) == (
        "x",
        {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    )


def test_concurrency_limit_holds_and_is_used():
    chunks = [
        Chunk(f"c{i}", 1, i, 0, 10, f"Passage number {i} about a lantern.", np.zeros(3, np.int32)) for i in range(24)
    ]
    with FakeChatServer(script=lambda p, n: "ok", latency_s=0.1) as server:
        opts = ChatGeneratorOptions(client=ClientOptions(base_url=server.url, model="m", concurrency=6))
        start = time.monotonic()
        results = generate_all(ChatQAGenerator(opts), chunks, None, max_attempts=1)
        elapsed = time.monotonic() - start
    assert [r.reason for r in results] == [None] * 24
    assert [r.pairs[0].answer for r in results] == [ok_pair(c.text)["answer"] for c in chunks]
    assert server.in_flight_max == 6
    assert elapsed < 24 * 0.1 / 2  # sequential calls would take 2.4 s


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(base_url="ftp://x/v1"), "base_url"),
        (dict(model=""), "model"),
        (dict(timeout_s=0), "timeout_s"),
        (dict(retries=-1), "retries"),
        (dict(backoff_s=5, max_backoff_s=1), "backoff_s"),
        (dict(concurrency=0), "concurrency"),
    ],
)
def test_bad_client_options_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        ClientOptions(**{**dict(base_url="http://127.0.0.1:1/v1", model="m"), **kw})
