"""A deterministic OpenAI-compatible chat-completions server for the QA tests, on 127.0.0.1 (port 0).

Each request's behaviour comes from `script(passage, n)`: the passage (the user message after
"Passage:\\n", or all of it) and how many requests for that passage came before. Behaviours:

    ok                 200, a pair whose answer is the passage's first three words
    unsupported        200, a pair whose answer has no word of the passage
    malformed_content  200, a chat completion whose content is prose, not a pair
    malformed_body     200, a body that is not JSON
    slow               sleeps `slow_s` before answering ok (past the client's timeout)
    429 / 503 / 401    that status (429 with `Retry-After: retry_after`)

`PIPELINE_SCRIPT` is the mix the pipeline test uses; `expected(passage)` says what it makes of a
passage. The server records every request (passage, n, behaviour, auth header, usage sent).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .local_server import ServedInThread

_WORDS = re.compile(r"[A-Za-z0-9']+")


def passage_of(messages: list[dict]) -> str:
    user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    return user.rsplit("Passage:\n", 1)[-1]


def bucket(passage: str) -> int:
    """A stable number 0..9 for a passage (its sha256)."""
    return int(hashlib.sha256(passage.encode("utf-8")).hexdigest()[:8], 16) % 10


# What the pipeline test's server does with the n-th request for a passage, by bucket.
_PLAN = {
    0: ["429"],  # then ok
    1: ["malformed_content"],  # then ok, on the next attempt
    2: ["slow"],  # then ok
    3: ["malformed_content"] * 99,  # never valid: the chunk fails after max_attempts
    4: ["malformed_body"],  # then ok, on the next attempt
    5: ["503", "503"],  # then ok, within the client's retries
    6: ["unsupported"] * 99,  # never valid
}


def pipeline_script(passage: str, n: int) -> str:
    plan = _PLAN.get(bucket(passage), [])
    return plan[n] if n < len(plan) else "ok"


@dataclass(frozen=True)
class Expected:
    """What the pipeline script makes of one passage with max_attempts 3 and >= 2 client retries."""

    requests: int  # HTTP requests
    calls: int  # 200 replies (each one cached, each one an attempt)
    failure: str | None  # the chunk's failure reason


def expected(passage: str) -> Expected:
    return {
        0: Expected(2, 1, None),
        1: Expected(2, 2, None),
        2: Expected(2, 1, None),
        3: Expected(3, 3, "malformed_reply"),
        4: Expected(2, 2, None),
        5: Expected(3, 1, None),
        6: Expected(3, 3, "unsupported_answer"),
    }.get(bucket(passage), Expected(1, 1, None))


def ok_pair(passage: str) -> dict[str, str]:
    words = _WORDS.findall(passage)[:3]
    return {"question": f"Which three words open passage {bucket(passage)}?", "answer": " ".join(words)}


@dataclass
class Logged:
    passage: str
    n: int
    behaviour: str
    authorization: str | None
    usage: dict[str, int] | None
    client_port: int


@dataclass
class FakeChatServer(ServedInThread):
    """The server; use as a context manager. `url` is the API root to give the client."""

    script: Callable[[str, int], str] = pipeline_script
    latency_s: float = 0.0
    slow_s: float = 1.0
    retry_after: str = "0"
    log: list[Logged] = field(default_factory=list)
    in_flight_max: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._in_flight = 0
        self._connections: list[socket.socket] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                with server._lock:
                    server._connections.append(self.connection)

            def do_POST(self):  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    server._handle(self, json.loads(body))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a slow reply past its timeout)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def drop_connections(self) -> None:
        """Closes every open connection, as a server does with idle kept-alive ones."""
        with self._lock:
            conns, self._connections = self._connections, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def requests(self) -> int:
        """Requests received (a slow one counts at once; it reaches `log` only once it is answered)."""
        with self._lock:
            return sum(self._seen.values())

    def answered(self) -> list[Logged]:
        """A snapshot of the log."""
        with self._lock:
            return list(self.log)

    def requests_for(self, passage: str) -> int:
        with self._lock:
            return self._seen.get(passage, 0)

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None):
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h: BaseHTTPRequestHandler, request: dict):
        passage = passage_of(request["messages"])
        with self._lock:
            n = self._seen.get(passage, 0)
            self._seen[passage] = n + 1
            self._in_flight += 1
            self.in_flight_max = max(self.in_flight_max, self._in_flight)
        behaviour = self.script(passage, n)
        try:
            status, body, headers, usage = self._response(request, passage, behaviour)
        finally:
            # Logged before the reply leaves, so a client that has its reply finds the request logged.
            with self._lock:
                self._in_flight -= 1
                self.log.append(Logged(passage, n, behaviour, h.headers.get("Authorization"), None, h.client_address[1]))
                logged = self.log[-1]
        logged.usage = usage
        self._send(h, status, body, headers)

    def _response(self, request: dict, passage: str, behaviour: str) -> tuple[int, bytes, dict, dict | None]:
        """(status, body, extra headers, usage sent) for a behaviour, after its delays."""
        if self.latency_s:
            time.sleep(self.latency_s)
        if behaviour in ("429", "503", "401"):
            headers = {"Retry-After": self.retry_after} if behaviour == "429" else {}
            return int(behaviour), json.dumps({"error": {"message": behaviour}}).encode(), headers, None
        if behaviour == "malformed_body":
            return 200, b'{"choices": [{"message": {"content": "cut sh', {}, None
        if behaviour == "slow":
            time.sleep(self.slow_s)
        if behaviour in ("ok", "slow"):
            content = json.dumps([ok_pair(passage)])
        elif behaviour == "unsupported":
            content = json.dumps([{"question": "What is this passage about?", "answer": "zebra quantum xylophone"}])
        elif behaviour == "malformed_content":
            content = "Sorry, I would rather talk about something else."
        else:
            raise ValueError(f"unknown behaviour {behaviour!r}")
        prompt = sum(len(m["content"]) for m in request["messages"]) // 4
        usage = {"prompt_tokens": prompt, "completion_tokens": len(content) // 4, "total_tokens": prompt + len(content) // 4}
        reply = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": usage,
        }
        return 200, json.dumps(reply).encode(), {}, usage
