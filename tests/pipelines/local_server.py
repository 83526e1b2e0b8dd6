"""A threaded HTTP server on 127.0.0.1 for the download tests (images and videos).

Each test module writes only its request handler (a `BaseHTTPRequestHandler` that serves from
`self.files` and counts requests in `self.hits`, optionally timing them in `self.times`); this
module runs it on a free port and stops it.

Example:
    with serve_with(ImageHandler, {"a.png": b"..."}) as server:
        fetch(server.url("/img/a.png")); assert server.hits["/img/a.png"] == 1

The fake model servers (`qa_server`, `vqa_server`, `tests/eval/openai_server`) build their own
`ThreadingHTTPServer` and share `ServedInThread` (their `with` block) and `send_json`; every
handler answers with `send_body`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalServer:
    """A running test server: `url(path)`, `hits`, `times`, `handler.files`, `stop()`."""

    def __init__(self, handler_base: type[BaseHTTPRequestHandler], files: dict[str, bytes]):
        # A subclass per server, so servers never share their files or counts.
        handler = type("Handler", (handler_base,), {"files": dict(files), "hits": {}, "times": {}})
        self.handler = handler
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def hits(self) -> dict[str, int]:
        return self.handler.hits

    @property
    def times(self) -> dict[str, list[float]]:
        return self.handler.times

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def serve_with(handler_base: type[BaseHTTPRequestHandler], files: dict[str, bytes]) -> Iterator[LocalServer]:
    """Runs `handler_base` over `files` until the block ends."""
    server = LocalServer(handler_base, files)
    try:
        yield server
    finally:
        server.stop()


class ServedInThread:
    """`with server:` of a fake server object that built `self._httpd`: serves it from a daemon
    thread until the block ends."""

    _httpd: ThreadingHTTPServer

    def __enter__(self):
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()


def send_body(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict | None = None,
              length: int | None = None) -> None:
    """Answers the request `handler` is serving with `status`, `headers`, a Content-Length (of
    `body`, or `length` to claim another size) and `body`; a client that hung up is no error."""
    handler.send_response(status)
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    with contextlib.suppress(OSError):
        handler.wfile.write(body)


def send_json(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    """Answers the request `handler` is serving with `status` and the JSON bytes `body`."""
    send_body(handler, status, body, {"Content-Type": "application/json"})
