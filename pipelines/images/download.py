"""Fetching image bytes by URL for the image-text job: timeouts, retries, a size cap, one reason per failure.

`fetch(url, options)` returns the body of an http(s) URL or raises `DownloadError(reason, detail)`.
Reasons (the `failures.jsonl` vocabulary of the download stage):
    invalid_url         not a URL with a scheme and a host
    unsupported_scheme  not http/https (file:// only with `allow_file`)
    http_<code>         the final response's status, e.g. http_404, http_503
    timeout             no answer, or the whole transfer took longer than `total_timeout_s`
    too_large           Content-Length or the streamed byte count exceeds `max_bytes`
    connection_error    refused, reset, DNS failure, TLS error, a bad redirect, ...
    missing_file        file:// (when allowed) names no readable file
    blocked_address     the host resolves to a private, loopback, link-local, multicast or
                        reserved address (a URL list from elsewhere must not reach the worker's
                        own network: cloud metadata servers, internal services); allow hosts
                        with `allowed_hosts` or all of them with `allow_private`
    too_many_redirects  more than `max_redirects` redirects
Transient failures (timeout, connection_error, http_408/425/429/5xx) are retried `retries` times
with exponential backoff `backoff_s * 2**attempt` (no jitter: a rerun behaves the same); the
reason reported is the last attempt's. Redirects are followed to http(s) targets only, at most
`max_redirects` of them. The address check runs when each connection is made, on the address
actually connected to (so a redirect or a DNS answer that changes between check and use cannot
slip past it); behind an HTTP proxy it checks what the host name resolves to here.

Example, a pair with a URL becomes a pair with image bytes (the download stage):
    before {"key": "000001", "url": "https://example.com/cat.jpg", "image": None, ...}
    after  {"key": "000001", "url": "https://example.com/cat.jpg", "image": b"\\xff\\xd8...", ...}
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lwmkit.pipelines.engine.stages import DropRecord

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHUNK = 1 << 16


class DownloadError(Exception):
    """A URL could not be fetched; `reason` is one of the module docstring's reasons."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    @property
    def retryable(self) -> bool:
        if self.reason in ("timeout", "connection_error"):
            return True
        return self.reason.startswith("http_") and self.reason[5:].isdigit() and int(self.reason[5:]) in RETRY_STATUS


@dataclass(frozen=True)
class DownloadOptions:
    """How URLs are fetched.

    Attributes:
      timeout_s: socket timeout of each connect and read (seconds).
      total_timeout_s: limit on one attempt's whole transfer, so a slow trickle cannot hold a worker.
      retries: further attempts after a transient failure.
      backoff_s: wait before retry k is backoff_s * 2**k.
      max_bytes: the largest body accepted.
      allow_file: also accept file:// URLs (off: a URL list from elsewhere must not read local files).
      allow_private: also connect to private, loopback, link-local and reserved addresses.
      allowed_hosts: host names or IP addresses allowed even so (e.g. ("127.0.0.1",) in tests).
      max_redirects: redirects followed per request.
      user_agent: the User-Agent header sent.
    """

    timeout_s: float = 10.0
    total_timeout_s: float = 60.0
    retries: int = 2
    backoff_s: float = 1.0
    max_bytes: int = 32 << 20
    allow_file: bool = False
    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()
    max_redirects: int = 5
    user_agent: str = "lwmkit-image-download/1 (+https://github.com/LargeWorldModel)"

    def __post_init__(self):
        if not 0 < self.timeout_s <= 3600:
            raise ValueError(f"timeout_s: {self.timeout_s} is outside (0, 3600]")
        if not self.timeout_s <= self.total_timeout_s <= 86400:
            raise ValueError(f"total_timeout_s: {self.total_timeout_s} is outside [timeout_s={self.timeout_s}, 86400]")
        if not 0 <= self.retries <= 10:
            raise ValueError(f"retries: {self.retries} is outside 0..10")
        if not 0 <= self.backoff_s <= 600:
            raise ValueError(f"backoff_s: {self.backoff_s} is outside [0, 600]")
        if not 1 <= self.max_bytes <= 1 << 31:
            raise ValueError(f"max_bytes: {self.max_bytes} is outside 1..{1 << 31}")
        if not 0 <= self.max_redirects <= 30:
            raise ValueError(f"max_redirects: {self.max_redirects} is outside 0..30")
        if isinstance(self.allowed_hosts, str):
            raise ValueError(f"allowed_hosts: give a tuple of hosts, not the string {self.allowed_hosts!r}")


def check_address(host: str, ip: str, options: DownloadOptions) -> None:
    """Raises DownloadError('blocked_address') unless `options` allow connecting to `ip` for `host`."""
    if options.allow_private or host in options.allowed_hosts or ip in options.allowed_hosts:
        return
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if not addr.is_global or addr.is_multicast:
        raise DownloadError(
            "blocked_address",
            f"{host} resolves to {ip}, a non-public address (allow it with allowed_hosts / --allow-host {host})",
        )


def _checked_addresses(host: str, port: int, options: DownloadOptions) -> list[tuple]:
    """getaddrinfo results for host:port whose addresses pass `check_address` (raises if none do)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise DownloadError("connection_error", f"cannot resolve {host}: {e}") from e
    for info in infos:
        check_address(host, info[4][0], options)  # any non-public answer blocks the host
    return infos


class _GuardedConnection(http.client.HTTPConnection):
    """Connects only to addresses that pass `check_address`, and to exactly the one it checked."""

    def __init__(self, *args, options: DownloadOptions, **kwargs):
        super().__init__(*args, **kwargs)
        self._options = options

    def connect(self):
        if self._tunnel_host:  # through a proxy: check the target by name, connect to the proxy
            _checked_addresses(self._tunnel_host, self._tunnel_port or 443, self._options)
            return super().connect()
        last: OSError | None = None
        for family, kind, proto, _, address in _checked_addresses(self.host, self.port, self._options):
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(self.timeout)
                if self.source_address:
                    sock.bind(self.source_address)
                sock.connect(address)
            except OSError as e:
                sock.close()
                last = e
                continue
            self.sock = sock
            return
        raise last or OSError(f"no address for {self.host}")


class _GuardedHTTPSConnection(http.client.HTTPSConnection, _GuardedConnection):
    """HTTPS over `_GuardedConnection.connect` (HTTPSConnection.connect wraps what it connects)."""


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, options: DownloadOptions):
        super().__init__()
        self._options = options

    def http_open(self, req):
        return self.do_open(functools.partial(_GuardedConnection, options=self._options), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, options: DownloadOptions):
        super().__init__()
        self._options = options

    def https_open(self, req):
        return self.do_open(functools.partial(_GuardedHTTPSConnection, options=self._options), req,
                            context=self._context)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows at most `max_redirects` redirects, and only to http(s) (urllib would also follow ftp://)."""

    def __init__(self, max_redirects: int):
        super().__init__()
        self.max_redirections = max_redirects
        self.max_repeats = min(self.max_repeats, max_redirects)

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl)).scheme.lower()
        if scheme not in ("http", "https"):
            raise DownloadError("connection_error", f"redirect to a {scheme or 'relative'}:// URL refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)

    def http_error_302(self, req, fp, code, msg, headers):
        visited = getattr(req, "redirect_dict", {})
        if len(visited) >= self.max_redirections:
            fp.close()
            raise DownloadError("too_many_redirects", f"more than {self.max_redirections} redirects from {req.full_url}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(options: DownloadOptions) -> urllib.request.OpenerDirector:
    # Proxies come from the environment as usual; file:, ftp: and data: handlers are left out.
    handlers = [
        urllib.request.ProxyHandler(),
        _GuardedHTTPHandler(options),
        _GuardedHTTPSHandler(options),
        _HttpOnlyRedirects(options.max_redirects),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.HTTPDefaultErrorHandler(),
    ]
    opener = urllib.request.OpenerDirector()
    for h in handlers:
        opener.add_handler(h)
    return opener


def _is_timeout(e: BaseException) -> bool:
    if isinstance(e, TimeoutError | socket.timeout):
        return True
    return isinstance(e, urllib.error.URLError) and isinstance(e.reason, TimeoutError | socket.timeout)


def _read_capped(stream, max_bytes: int, deadline: float, url: str) -> bytes:
    parts: list[bytes] = []
    size = 0
    while chunk := stream.read(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise DownloadError("too_large", f"more than {max_bytes} bytes streamed from {url}")
        if time.monotonic() > deadline:
            raise DownloadError("timeout", f"transfer not finished within the total timeout ({size} bytes read)")
        parts.append(chunk)
    return b"".join(parts)


def _fetch_http(url: str, options: DownloadOptions, opener: urllib.request.OpenerDirector) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": options.user_agent, "Accept": "image/*,*/*;q=0.5"})
    deadline = time.monotonic() + options.total_timeout_s
    try:
        with opener.open(request, timeout=options.timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > options.max_bytes:
                raise DownloadError("too_large", f"Content-Length {int(length)} exceeds {options.max_bytes} bytes")
            return _read_capped(response, options.max_bytes, deadline, url)
    except DownloadError:
        raise
    except urllib.error.HTTPError as e:
        e.close()
        raise DownloadError(f"http_{e.code}", f"{e.code} {e.reason}") from e
    except Exception as e:
        if _is_timeout(e):
            raise DownloadError("timeout", f"no answer within {options.timeout_s:g}s") from e
        if isinstance(e, urllib.error.URLError | OSError | http.client.HTTPException | ssl.SSLError | ValueError):
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            raise DownloadError("connection_error", f"{type(e).__name__}: {reason}") from e
        raise


def _fetch_file(url: str, options: DownloadOptions) -> bytes:
    path = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
    try:
        size = os.path.getsize(path)
        if size > options.max_bytes:
            raise DownloadError("too_large", f"{path} has {size} bytes, more than {options.max_bytes}")
        with open(path, "rb") as f:
            data = f.read(options.max_bytes + 1)
    except OSError as e:
        raise DownloadError("missing_file", f"{path}: {e.strerror or e}") from e
    if len(data) > options.max_bytes:
        raise DownloadError("too_large", f"{path} has more than {options.max_bytes} bytes")
    return data


def check_url(url: Any, options: DownloadOptions) -> str:
    """The URL's scheme if it may be fetched under `options`.

    Raises:
      DownloadError: invalid_url or unsupported_scheme.
    """
    if not isinstance(url, str) or not url.strip():
        raise DownloadError("invalid_url", f"{url!r} is not a URL")
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError as e:
        raise DownloadError("invalid_url", f"{url!r}: {e}") from e
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise DownloadError("invalid_url", f"{url!r} has no host")
        return scheme
    if scheme == "file" and options.allow_file:
        return scheme
    if not scheme:
        raise DownloadError("invalid_url", f"{url!r} has no scheme")
    hint = " (allow it with allow_file / --allow-file-urls)" if scheme == "file" else ""
    raise DownloadError("unsupported_scheme", f"{scheme}:// is not fetched{hint}")


def fetch(url: str, options: DownloadOptions = DownloadOptions(), *, sleep=time.sleep, opener=None) -> bytes:
    """Returns the body at `url`, retrying transient failures; see the module docstring.

    Args:
      url: an http(s) URL (or file:// with `options.allow_file`).
      options: timeouts, retries, size cap.
      sleep: the backoff wait (tests pass a recorder).
      opener: a urllib opener to reuse (default: a new one with http(s)-only redirects).

    Raises:
      DownloadError: with the reason of the last attempt.
    """
    scheme = check_url(url, options)
    url = url.strip()
    if scheme == "file":
        return _fetch_file(url, options)
    opener = opener or _opener(options)
    attempt = 0
    while True:
        try:
            return _fetch_http(url, options, opener)
        except DownloadError as e:
            if not e.retryable or attempt >= options.retries:
                if attempt:
                    e.detail = f"{e.detail} (after {attempt + 1} attempts)"
                raise
        sleep(options.backoff_s * 2**attempt)
        attempt += 1


class Download:
    """The download stage: fills `image` from `url` for pairs that have no image bytes yet.

    Pairs that already carry bytes pass through untouched, so one stage serves every input kind.
    """

    def __init__(self, options: DownloadOptions):
        self.options = options
        self._opener = None

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self.options, "_opener": None}

    def __call__(self, pair: dict) -> Iterator[dict]:
        if pair.get("image") is not None:
            yield pair
            return
        if pair.get("url") is None:
            raise DropRecord("missing_image", "no image bytes and no URL")
        if self._opener is None:
            self._opener = _opener(self.options)
        try:
            data = fetch(pair["url"], self.options, opener=self._opener)
        except DownloadError as e:
            raise DropRecord(e.reason, f"{pair['url']}: {e.detail}") from e
        yield {**pair, "image": data}
