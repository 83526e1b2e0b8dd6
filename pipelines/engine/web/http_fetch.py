"""The http(s) client both downloaders fetch with: one GET, every hop checked, one deadline.

`fetch_into(url, options, open_sink)` GETs `url` and streams the body into the file-like
`open_sink()` returns (a fresh one per attempt), retrying transient failures; `fetch_bytes` is the
same into memory. Every connection is resolved once, checked and pinned (`url_guard.connect_checked`),
each redirect is a new connection checked the same way and may go to http(s) only, at most
`max_redirects` times; through an HTTP proxy (from the environment, as urllib reads it) the proxy's
address and the request's target are both checked, and an https tunnel is pinned to the checked
address (`url_guard`). The whole fetch, retries and backoff included,
runs under one wall-clock `Deadline(total_timeout_s)` enforced on the sockets: a trickling server
ends as `timeout` however it sends its bytes. https verifies against `url_guard.ssl_context`.
Failures are `DownloadError(reason, detail)` (reasons in `images/download.py`).
"""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import BinaryIO

from lwmkit.pipelines.engine.web.url_guard import (
    Deadline,
    DownloadError,
    DownloadOptions,
    connect_checked,
    guarded,
    ssl_context,
)

_CHUNK = 1 << 16


class _Pinned:
    """Mixin: the socket comes from `connect_checked` (resolved once, checked, pinned, timed)."""

    def __init__(self, *args, options: DownloadOptions, deadline: Deadline | None, **kwargs):
        super().__init__(*args, **kwargs)
        self._options = options
        self._deadline = deadline

    def _create_connection(self, address, timeout=None, source_address=None):
        return connect_checked(address[0], address[1], self._options, timeout, self._deadline, source_address)


class _PinnedHTTP(_Pinned, http.client.HTTPConnection):
    pass


class _PinnedHTTPS(_Pinned, http.client.HTTPSConnection):
    pass


class _Handler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    def __init__(self, options: DownloadOptions):
        urllib.request.HTTPHandler.__init__(self)
        urllib.request.HTTPSHandler.__init__(self, context=ssl_context(options.ca_bundle))
        self._options = options
        self.deadline: Deadline | None = None

    def _conn(self, cls):
        def make(host, **kwargs):
            return cls(host, options=self._options, deadline=self.deadline, **kwargs)
        return make

    def http_open(self, req):
        return self.do_open(self._conn(_PinnedHTTP), req)

    def https_open(self, req):
        return self.do_open(self._conn(_PinnedHTTPS), req, context=self._context)

    http_request = urllib.request.HTTPHandler.http_request
    https_request = urllib.request.HTTPSHandler.https_request


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
        try:
            return super().http_error_302(req, fp, code, msg, headers)
        except urllib.error.HTTPError as e:
            if not str(e.msg).startswith(self.inf_msg):
                raise
            e.close()
            raise DownloadError("too_many_redirects", f"a redirect loop at {req.full_url}") from None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def guarded_opener(options: DownloadOptions) -> urllib.request.OpenerDirector:
    """A urllib opener with pinned, checked connections and http(s)-only redirects."""
    handlers = [
        urllib.request.ProxyHandler(),  # from the environment; file:, ftp: and data: handlers are left out
        _Handler(options),
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


class NotAccepted(DownloadError):
    """The response's headers were not what the caller accepts (`fetch_into(accept=...)`): its body
    was not read. Never retried."""

    def __init__(self, headers: dict[str, str]):
        super().__init__("not_accepted", f"Content-Type {headers.get('content-type', '')!r}")
        self.headers = headers


def _attempt(url: str, options: DownloadOptions, opener, deadline: Deadline, sink: BinaryIO,
             accept: Callable[[dict[str, str]], bool] | None = None) -> dict[str, str]:
    request = urllib.request.Request(url, headers={"User-Agent": options.user_agent, "Accept": "*/*"})
    for h in opener.handlers:
        if isinstance(h, _Handler):
            h.deadline = deadline
    try:
        with opener.open(request, timeout=min(options.timeout_s, deadline.remaining()) or 0.001) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > options.max_bytes:
                raise DownloadError("too_large", f"Content-Length {int(length)} exceeds {options.max_bytes} bytes")
            headers = {k.lower(): v for k, v in response.headers.items()}
            if accept is not None and not accept(headers):
                raise NotAccepted(headers)
            size = 0
            while chunk := response.read1(_CHUNK) if hasattr(response, "read1") else response.read(_CHUNK):
                size += len(chunk)
                if size > options.max_bytes:
                    raise DownloadError("too_large", f"more than {options.max_bytes} bytes streamed from {url}")
                sink.write(chunk)
            deadline.check(f"transfer ({size} bytes read)")  # a shut-down socket reads as an early end
            if length is not None and length.strip().isdigit() and size != int(length):
                raise DownloadError("connection_error", f"{size} bytes of a declared {int(length)} arrived")
            return headers
    except DownloadError:
        raise
    except urllib.error.HTTPError as e:
        e.close()
        raise DownloadError(f"http_{e.code}", f"{e.code} {e.reason}") from e
    except Exception as e:
        if deadline.expired or _is_timeout(e):
            raise DownloadError("timeout", f"no complete answer within the timeouts ({type(e).__name__})") from e
        if isinstance(e, urllib.error.URLError) and isinstance(e.reason, DownloadError):
            raise e.reason from e
        if isinstance(e, urllib.error.URLError | OSError | http.client.HTTPException | ssl.SSLError | ValueError):
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            raise DownloadError("connection_error", f"{type(e).__name__}: {reason}") from e
        raise


def fetch_into(url: str, options: DownloadOptions, open_sink: Callable[[], BinaryIO], *,
               sleep: Callable[[float], None] = time.sleep, opener=None,
               accept: Callable[[dict[str, str]], bool] | None = None) -> dict[str, str]:
    """Streams `url`'s body into `open_sink()` (one per attempt); returns the response headers
    (lower-case names). `accept(headers)`, if given, sees the headers first: False stops there.

    Raises:
      NotAccepted: `accept` refused the response (nothing of the body was read or written).
      DownloadError: with the reason of the last attempt (`timeout` once `total_timeout_s` passed).
    """
    opener = opener or guarded_opener(options)
    deadline = Deadline(options.total_timeout_s)
    attempt = 0
    try:
        with guarded(options, deadline):
            while True:
                try:
                    return _attempt(url, options, opener, deadline, open_sink(), accept)
                except DownloadError as e:
                    if not e.retryable or attempt >= options.retries or deadline.expired:
                        if attempt:
                            e.detail = f"{e.detail} (after {attempt + 1} attempts)"
                        raise
                    wait = options.backoff_s * 2**attempt
                    if wait >= deadline.remaining():  # no retry fits in the deadline: the last reason stands
                        e.detail = f"{e.detail} (after {attempt + 1} attempts; no time left for another)"
                        raise
                sleep(wait)
                attempt += 1
    finally:
        deadline.cancel()


def fetch_bytes(url: str, options: DownloadOptions, *, sleep: Callable[[float], None] = time.sleep,
                opener=None) -> bytes:
    """The body at `url` (see `fetch_into`)."""
    sinks: list[io.BytesIO] = []

    def open_sink() -> io.BytesIO:
        sinks.append(io.BytesIO())
        return sinks[-1]

    fetch_into(url, options, open_sink, sleep=sleep, opener=opener)
    return sinks[-1].getvalue()

