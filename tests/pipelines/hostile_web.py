"""The hostile-web harness: servers on 127.0.0.0/8 that behave the way the web does.

`HostileServer(host, files, ca=None)` serves over plain http, or over TLS with a certificate from a
`trustme.CA` made in the test (its PEM goes to `SSL_CERT_FILE` or `ca_bundle`). Paths:

    /f/<name>            the file `<name>` (Content-Type from its suffix)
    /m/<name>            the file `<name>` as video/mp4 (a media URL without a media suffix)
    /w/<name>            an HTML page with a <video> of /m/<name> (what only yt-dlp can download)
    /trickle[.mp4]       declares 4096 bytes, sends one byte every 0.2 s
    /hang[.mp4]          sends headers, then nothing until the server stops
    /lie[.mp4]           declares 4096 bytes, sends 10 and closes
    /to?u=<url>          302 to <url>
    /loop                302 to /loop, forever
    /page                an HTML page (what yt-dlp's generic extractor reads first)

Every request is counted in `hits` (path without query) by method, e.g. hits["GET /f/a.mp4"].
`Proxy()` is an HTTP proxy on 127.0.0.1: a plain-http request (absolute URL) is forwarded, a
CONNECT is tunnelled; `proxy.seen` lists each request line. `rebinding(monkeypatch, name, first,
then)` makes `name` resolve (at the lowest layer, `_socket.getaddrinfo`, which urllib, urllib3 and
yt-dlp all reach) to `first` on the first look-up and to `then` on every later one.
"""

from __future__ import annotations

import _socket
import socket
import socketserver
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8  # what the servers serve as an image
_TYPES = {".mp4": "video/mp4", ".png": "image/png", ".jpg": "image/jpeg", ".html": "text/html"}


class _Handler(BaseHTTPRequestHandler):
    server_ref: HostileServer

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv = self.server_ref
        path = urllib.parse.urlsplit(self.path).path
        srv.hits[f"{self.command} {path}"] += 1
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        try:
            if path.startswith(("/f/", "/m/")) and path[3:] in srv.files:
                body = srv.files[path[3:]]
                kind = "video/mp4" if path.startswith("/m/") else _TYPES.get(path[path.rfind("."):], "")
                self._head(200, len(body), kind or "application/octet-stream")
                if self.command == "GET":
                    self.wfile.write(body)
            elif path.startswith("/trickle"):
                self._head(200, 4096, "image/png")
                for _ in range(4096):
                    if srv.stopping.is_set():
                        return
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif path.startswith("/hang"):
                self._head(200, 4096, "image/png")
                srv.stopping.wait(120)
            elif path.startswith("/lie"):
                self._head(200, 4096, "image/png")
                self.wfile.write(b"0123456789")
                self.close_connection = True
            elif path == "/to":
                self._redirect(query["u"][0])
            elif path == "/loop":
                self._redirect("/loop")
            elif path.startswith("/w/") and path[3:] in srv.files:
                body = f'<html><body><video src="/m/{path[3:]}"></video></body></html>'.encode()
                self._head(200, len(body), "text/html")
                if self.command == "GET":
                    self.wfile.write(body)
            elif path == "/page":
                body = b"<html><head><title>nothing here</title></head><body>no video</body></html>"
                self._head(200, len(body), "text/html")
                self.wfile.write(body)
            else:
                self._head(404, 0, "text/plain")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass

    do_HEAD = do_GET

    def _head(self, code: int, length: int, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.flush()

    def _redirect(self, to: str) -> None:
        self.send_response(302)
        self.send_header("Location", to)
        self.send_header("Content-Length", "0")
        self.end_headers()


class HostileServer:
    """One server of the harness (see the module docstring)."""

    def __init__(self, host: str = "127.0.0.1", files: dict[str, bytes] | None = None, ca=None, port: int = 0):
        self.files = dict(files or {})
        self.hits: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.scheme = "https" if ca is not None else "http"
        handler = type("Handler", (_Handler,), {"server_ref": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        if ca is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert(host, "localhost", "rebind.test").configure_cert(ctx)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.host = host
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def gets(self, path: str) -> int:
        return self.hits[f"GET {path}"]

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class _ProxyHandler(socketserver.StreamRequestHandler):
    proxy: Proxy

    def handle(self):
        line = self.rfile.readline(65537).decode("latin-1").strip()
        self.proxy.seen.append(line)
        headers = []
        while (h := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
            headers.append(h)
        method, target, _ = line.split(" ", 2)
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)), timeout=10)
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pipe(upstream)
            return
        parts = urllib.parse.urlsplit(target)
        upstream = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        kept = b"".join(h for h in headers if not h.lower().startswith((b"proxy-", b"connection")))
        upstream.sendall(f"{method} {path} HTTP/1.1\r\n".encode() + kept + b"Connection: close\r\n\r\n")
        while data := upstream.recv(65536):
            self.wfile.write(data)
        upstream.close()

    def _pipe(self, upstream: socket.socket) -> None:
        def back():
            try:
                while data := upstream.recv(65536):
                    self.connection.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        t = threading.Thread(target=back, daemon=True)
        t.start()
        try:
            while data := self.connection.recv(65536):
                upstream.sendall(data)
        except OSError:
            pass
        t.join(10)
        upstream.close()


class Proxy:
    """An HTTP proxy on 127.0.0.1 (plain forwarding and CONNECT); `seen` holds the request lines."""

    def __init__(self):
        self.seen: list[str] = []
        handler = type("Handler", (_ProxyHandler,), {"proxy": self})
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def rebinding(monkeypatch, name: str, first: str, then: str) -> list[str]:
    """Makes `name` resolve to `first`, then to `then`; returns the answers given, in order."""
    real = _socket.getaddrinfo
    answers: list[str] = []

    def fake(host, port, *args, **kwargs):
        if host != name:
            return real(host, port, *args, **kwargs)
        ip = first if not answers else then
        answers.append(ip)
        return real(ip, port, *args, **kwargs)

    monkeypatch.setattr(_socket, "getaddrinfo", fake)
    return answers
