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
slip past it); behind an HTTP proxy it checks what the host name resolves to here. The checks
are `engine/url_guard.py`, which the video downloader uses too.

Example, a pair with a URL becomes a pair with image bytes (the download stage):
    before {"key": "000001", "url": "https://example.com/cat.jpg", "image": None, ...}
    after  {"key": "000001", "url": "https://example.com/cat.jpg", "image": b"\\xff\\xd8...", ...}
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from lwmkit.pipelines.engine.stages import DropRecord
from lwmkit.pipelines.engine.url_guard import DownloadError as DownloadError
from lwmkit.pipelines.engine.url_guard import DownloadOptions as DownloadOptions
from lwmkit.pipelines.engine.url_guard import check_address as check_address
from lwmkit.pipelines.engine.url_guard import check_url as check_url
from lwmkit.pipelines.engine.url_guard import guarded_opener

_CHUNK = 1 << 16


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
    opener = opener or guarded_opener(options)
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
            self._opener = guarded_opener(self.options)
        try:
            data = fetch(pair["url"], self.options, opener=self._opener)
        except DownloadError as e:
            raise DropRecord(e.reason, f"{pair['url']}: {e.detail}") from e
        yield {**pair, "image": data}
