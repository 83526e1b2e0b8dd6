"""How the video downloader reaches the network: direct media by our own client, the rest via yt-dlp, both guarded.

- A URL whose path ends in a media suffix (`.mp4`, `.webm`, `.mkv`, `.mov`, `.m4v`, `.avi`, `.flv`,
  `.ts`, `.mpg`, `.mpeg`, `.ogv`) is fetched with `engine.web.http_fetch` (one GET per attempt, every hop
  checked and pinned, TLS with the system store plus `ca_bundle`/`$SSL_CERT_FILE`) when no clip cut
  is asked for. yt-dlp's generic extractor would GET such a file twice (once to look at it, once to
  download it).
- Anything else goes to yt-dlp inside `engine.web.url_guard.guarded`: every connection yt-dlp (or
  urllib3 under it) makes in this thread is checked on the address it connects to (redirects,
  DNS answers that change, proxies and a plain-http proxy's target included), and the whole run
  is under one wall-clock deadline enforced on its sockets. yt-dlp builds its own TLS contexts
  (certifi's roots when certifi is installed, which ignores `$SSL_CERT_FILE`); inside the block
  each one also trusts `ca_bundle` or `$SSL_CERT_FILE`, as lwmkit's own client does.
"""

from __future__ import annotations

import contextlib
import os
import threading
import urllib.parse
from collections.abc import Iterator

from lwmkit.pipelines.engine.web.http_fetch import fetch_into
from lwmkit.pipelines.engine.web.url_guard import (
    Deadline,
    DownloadError,
    DownloadOptions,
    Guard,
    guarded,
)

MEDIA_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".m4v", ".avi", ".flv", ".ts", ".mpg", ".mpeg", ".ogv")


_EXTRA_CA = threading.local()  # the CA bundle yt-dlp's TLS contexts trust in this thread, inside the block
_PATCH = threading.Lock()


def _trust_extra_ca() -> None:
    """Wraps yt-dlp's certificate loading once: a context made while a bundle is set also trusts it."""
    from yt_dlp.networking import _helper

    with _PATCH:
        if getattr(_helper.ssl_load_certs, "lwmkit_extra_ca", False):
            return
        original = _helper.ssl_load_certs

        def ssl_load_certs(context, *args, **kwargs):
            original(context, *args, **kwargs)
            bundle = getattr(_EXTRA_CA, "path", None)
            if bundle:
                context.load_verify_locations(cafile=bundle)

        ssl_load_certs.lwmkit_extra_ca = True
        _helper.ssl_load_certs = ssl_load_certs


def net_options(options) -> DownloadOptions:
    """The URL-guard options of `VideoDownloadOptions` (one attempt: retries are the caller's)."""
    return DownloadOptions(
        timeout_s=options.timeout_s, total_timeout_s=options.total_timeout_s, retries=0,
        max_bytes=options.max_bytes, allow_private=options.allow_private,
        allowed_hosts=tuple(options.allowed_hosts), ca_bundle=options.ca_bundle,
    )


def direct_media(url: str) -> str | None:
    """The suffix of a direct media URL (fetched without yt-dlp), else None."""
    path = urllib.parse.urlsplit(url).path.lower()
    suffix = os.path.splitext(path)[1]
    return suffix if suffix in MEDIA_SUFFIXES else None


_REASONS = {"http_404": "unavailable", "http_410": "unavailable", "http_429": "rate_limited"}


def fetch_direct(url: str, target: str, suffix: str, options) -> str:
    """GETs a media file to `target + suffix`; returns that path (reasons as yt-dlp's are named)."""
    path = target + suffix
    try:
        with contextlib.ExitStack() as files:
            fetch_into(url, net_options(options), lambda: files.enter_context(open(path, "wb")))
    except DownloadError as e:
        raise DownloadError(_REASONS.get(e.reason, e.reason), e.detail) from e
    return path


@contextlib.contextmanager
def guarded_ytdlp(options) -> Iterator[Guard]:
    """The guard yt-dlp runs in; a refusal or the deadline becomes the attempt's DownloadError."""
    net = net_options(options)
    deadline = Deadline(net.total_timeout_s)
    _trust_extra_ca()
    outer_ca = getattr(_EXTRA_CA, "path", None)
    _EXTRA_CA.path = net.ca_bundle or os.environ.get("SSL_CERT_FILE") or None
    try:
        with guarded(net, deadline) as guard:
            try:
                yield guard
            except DownloadError:
                raise
            except Exception as e:
                if guard.refused is not None:
                    raise DownloadError(guard.refused.reason, guard.refused.detail) from e
                if deadline.expired:
                    raise DownloadError("timeout", f"download not finished within {net.total_timeout_s:g}s") from e
                raise
            if guard.refused is not None:  # yt-dlp logged the failure instead of raising
                raise DownloadError(guard.refused.reason, guard.refused.detail)
            deadline.check("download")
    finally:
        _EXTRA_CA.path = outer_ca
        deadline.cancel()
