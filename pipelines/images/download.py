"""Fetching image bytes by URL for the image-text job: timeouts, retries, a size cap, one reason per failure.

`fetch(url, options)` returns the body of an http(s) URL or raises `DownloadError(reason, detail)`.
Reasons (the `failures.jsonl` vocabulary of the download stage):
    invalid_url         not a URL with a scheme and a host
    unsupported_scheme  not http/https (file:// only with `allow_file`)
    http_<code>         the final response's status, e.g. http_404, http_503
    timeout             no answer within `timeout_s`, or the whole fetch (retries included) took
                        longer than `total_timeout_s`, however the bytes arrived
    too_large           Content-Length or the streamed byte count exceeds `max_bytes`
    connection_error    refused, reset, DNS failure, TLS error, a bad redirect, ...
    missing_file        file:// (when allowed) names no readable file
    blocked_address     the host resolves to a private, loopback, link-local, multicast or
                        reserved address (a URL list from elsewhere must not reach the worker's
                        own network: cloud metadata servers, internal services); allow hosts
                        with `allowed_hosts` or all of them with `allow_private`
    too_many_redirects  more than `max_redirects` redirects
Transient failures (timeout, connection_error, http_408/425/429/5xx) are retried `retries` times
with exponential backoff `backoff_s * 2**attempt` (no jitter: a rerun behaves the same) while the
deadline allows; the reason reported is the last attempt's. One GET per attempt; redirects go to
http(s) only, at most `max_redirects`, and every hop's address is checked and the connection
pinned to it (`engine/web/http_fetch.py`, `engine/web/url_guard.py`, shared with the video downloader;
the security model is `docs/security.md`).

Example, a pair with a URL becomes a pair with image bytes (the download stage):
    before {"key": "000001", "url": "https://example.com/cat.jpg", "image": None, ...}
    after  {"key": "000001", "url": "https://example.com/cat.jpg", "image": b"\\xff\\xd8...", ...}
"""

from __future__ import annotations

import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from lwmkit.pipelines.engine.drops import DropRecord
from lwmkit.pipelines.engine.web.http_fetch import fetch_bytes, guarded_opener
from lwmkit.pipelines.engine.web.url_guard import DownloadError as DownloadError
from lwmkit.pipelines.engine.web.url_guard import DownloadOptions as DownloadOptions
from lwmkit.pipelines.engine.web.url_guard import check_address as check_address
from lwmkit.pipelines.engine.web.url_guard import check_url as check_url


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
    return fetch_bytes(url, options, sleep=sleep, opener=opener)


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
