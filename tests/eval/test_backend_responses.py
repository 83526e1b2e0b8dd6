"""OpenAIBackend against an endpoint whose bodies are hostile: a clear BackendError, never a raw one."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from lwmkit.eval.backends import BackendError, OpenAIBackend


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 100_000, "nested too deeply"),
        (b'{"choices": "\xff\xfe"}', "not JSON"),
        (b"<html>", "not JSON"),
    ],
)
def test_a_hostile_response_body_is_a_backend_error(body, reason):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        with pytest.raises(BackendError, match=reason) as caught:
            OpenAIBackend(url, "m", retries=0, timeout=10).generate("hello", 4)
        assert "127.0.0.1" in str(caught.value)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
