"""A client for OpenAI-compatible chat-completions servers, on the standard library only.

The API that vLLM, llama.cpp's server, TGI and hosted services speak: `POST {base_url}/chat/completions`
with `{"model", "messages", "temperature", "max_tokens", ...}`, answered by
`{"choices": [{"message": {"content": ...}}], "usage": {...}}`.

What the client does for each call:
    retries   429, 408, 409 and 5xx replies, timeouts and dropped connections, up to `retries` times,
              waiting `backoff_s * 2**k` (with jitter, at most `max_backoff_s`), or what a
              `Retry-After` header asks for (capped the same way);
    fails     on other statuses at once (`http_401`, `http_404`, ...), and with the last reason
              (`http_429`, `timeout`, ...) once retries run out: `CallError(reason, detail)`;
    returns   every 200 reply as a `ChatReply` with its raw body, whatever the body holds: whether
              it is a usable chat completion is the caller's question (see `reply_content`).
Connections are kept alive and shared by the threads that call the client; the API key is read
from the environment variable `api_key_env` at call time, so it never travels with the client
(a Beam worker reads its own environment) and is never recorded.

Example:
    >>> client = ChatClient(ClientOptions(base_url="http://127.0.0.1:8000/v1", model="llama-3-8b"))
    >>> reply = client.complete([{"role": "user", "content": "Say hi"}], temperature=0.0)
    >>> reply_content(reply.body)
    ('Hi!', {'prompt_tokens': 9, 'completion_tokens': 3, 'total_tokens': 12})
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from lwmkit.pipelines.engine.drops import ReasonError
from lwmkit.pipelines.engine.job_options import check_ranges

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


@dataclass(frozen=True)
class ClientOptions:
    """Where and how to call the server.

    Attributes:
      base_url: the API root, e.g. `http://127.0.0.1:8000/v1` (vLLM) or `https://api.openai.com/v1`.
      model: the model name the server expects.
      api_key_env: environment variable holding the API key (sent as a Bearer token when set).
      timeout_s: seconds allowed for connecting and for each read of one request.
      retries: further tries of a request after a retryable failure.
      backoff_s: wait before the first retry; doubles with each further one.
      max_backoff_s: longest wait between tries (also caps Retry-After).
      concurrency: requests in flight at once (threads of `generate_all`; per Beam worker).
    """

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    concurrency: int = 8

    def __post_init__(self):
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url: {self.base_url!r} must be an http:// or https:// URL")
        if not self.model:
            raise ValueError("model: give the model name the server expects")
        if not self.api_key_env:
            raise ValueError("api_key_env: give an environment variable name")
        check_ranges(self, timeout_s="(0, 3600]", retries="0..100")
        if not 0 <= self.backoff_s <= self.max_backoff_s:
            raise ValueError(f"backoff_s: {self.backoff_s} must be in [0, max_backoff_s={self.max_backoff_s}]")
        check_ranges(self, concurrency="1..1024")


@dataclass(frozen=True)
class ChatReply:
    """A 200 reply: its raw body, and what the call cost in HTTP requests and waiting."""

    body: str
    requests: int = 1
    waited_s: float = 0.0


class CallError(ReasonError):
    """A call that got no 200 reply: `reason` is e.g. `http_429`, `http_401`, `timeout`, `connection_error`;
    `requests` the HTTP requests it sent, `waited_s` the seconds it spent in backoff before giving up."""

    def __init__(self, reason: str, detail: str = "", requests: int = 0, waited_s: float = 0.0):
        super().__init__(reason, detail)
        self.requests = requests
        self.waited_s = waited_s


class MalformedReply(ValueError):
    """A 200 reply whose body is not a chat completion with message content."""


def reply_content(body: str) -> tuple[str, dict[str, int]]:
    """(message content, token usage) of a chat-completions body.

    Raises:
      MalformedReply: if the body is not JSON or has no `choices[0].message.content` string.
    """
    try:
        obj = json.loads(body)
        content = obj["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise MalformedReply(f"not a chat completion ({type(e).__name__}: {e})") from e
    if not isinstance(content, str):
        raise MalformedReply(f"message content is {type(content).__name__}, not a string")
    return content, usage_of(obj)


def usage_of(obj: Any) -> dict[str, int]:
    """The `usage` token counts of a reply object (zeros where absent)."""
    usage = obj.get("usage") if isinstance(obj, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    out = {}
    for k in USAGE_KEYS:
        v = usage.get(k, 0)
        out[k] = int(v) if isinstance(v, int | float) and v >= 0 else 0
    return out


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds only; an HTTP date is ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class ChatClient:
    """Calls one OpenAI-compatible server; thread-safe; see the module docstring."""

    def __init__(self, options: ClientOptions):
        self.options = options
        parts = urlsplit(options.base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = parts.path.rstrip("/") + "/chat/completions"
        self._setup()

    def _setup(self):
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._rng = random.Random()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_idle", "_rng")}

    def __setstate__(self, state: dict[str, Any]):
        self.__dict__.update(state)
        self._setup()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self.options.timeout_s), False

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append(conn)

    def close(self) -> None:
        """Closes the idle connections (the client stays usable)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "lwmkit-qa"}
        key = os.environ.get(self.options.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post_once(self, payload: bytes) -> tuple[int, str | None, bytes]:
        """(status, Retry-After, body) of one request; a stale kept-alive connection is retried once."""
        for _ in range(2):
            conn, reused = self._connection()
            try:
                conn.request("POST", self._path, body=payload, headers=self._headers())
                resp = conn.getresponse()
                body = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if reused:
                    continue  # the server closed an idle connection: not a failed request
                raise
            except BaseException:
                conn.close()
                raise
            if resp.will_close:
                conn.close()
            else:
                self._release(conn)
            return resp.status, resp.getheader("Retry-After"), body
        raise ConnectionResetError("two kept-alive connections in a row were closed by the server")

    def complete(self, messages: list[dict[str, str]], **params: Any) -> ChatReply:
        """Sends one chat-completions request, retrying as the module docstring says.

        Args:
          messages: the chat messages, `[{"role": ..., "content": ...}, ...]`.
          params: further request fields, e.g. temperature, max_tokens, seed.

        Raises:
          CallError: no 200 reply (reason, detail with the last status or error, requests made).
        """
        o = self.options
        payload = json.dumps({"model": o.model, "messages": messages, **params}).encode("utf-8")
        waited = 0.0
        for attempt in range(o.retries + 1):
            retry_after = None
            try:
                status, retry_after_header, body = self._post_once(payload)
            except TimeoutError as e:
                reason, detail = "timeout", f"no reply within {o.timeout_s}s ({e})"
            except (OSError, http.client.HTTPException) as e:
                reason, detail = "connection_error", f"{type(e).__name__}: {e}"
            else:
                text = body.decode("utf-8", errors="replace")
                if status == 200:
                    return ChatReply(text, attempt + 1, waited)
                reason, detail = f"http_{status}", text[:1000]
                if status not in RETRY_STATUSES:
                    raise CallError(reason, detail, attempt + 1, waited)
                retry_after = _retry_after(retry_after_header)
            if attempt == o.retries:
                raise CallError(reason, detail, attempt + 1, waited)
            if retry_after is None:
                delay = o.backoff_s * (2**attempt) * (0.5 + 0.5 * self._rng.random())
            else:
                delay = retry_after
            delay = min(delay, o.max_backoff_s)
            time.sleep(delay)
            waited += delay
        raise AssertionError("unreachable")  # pragma: no cover


class ChatStep:
    """What every step that asks a chat model holds: its options (whose `client` is `ClientOptions`),
    a `ChatClient` for them, and the requests it keeps in flight (`concurrency`)."""

    def __init__(self, options: Any):
        self.options = options
        self.client = ChatClient(options.client)

    @property
    def concurrency(self) -> int:
        return self.options.client.concurrency
