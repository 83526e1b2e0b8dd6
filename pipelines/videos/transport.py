"""How the video downloader reaches the network: direct media by our own client, the rest via yt-dlp, both guarded.

- A URL whose path ends in a media suffix (`.mp4`, `.webm`, `.mkv`, `.mov`, `.m4v`, `.avi`, `.flv`,
  `.ts`, `.mpg`, `.mpeg`, `.ogv`) is fetched with `engine.web.http_fetch` (one GET per attempt, every hop
  checked and pinned, TLS with the system store plus `ca_bundle`/`$SSL_CERT_FILE`) when no clip cut
  is asked for. yt-dlp's generic extractor would GET such a file twice (once to look at it, once to
  download it).
- So is a URL that no yt-dlp site extractor claims (`site_extractor`: only the generic one would
  take it), when no clip cut is asked for: our client GETs it, and if the answer is served as a
  video type (`MEDIA_TYPES`) that one GET is the download (`fetch_unclaimed`). Anything else (a page)
  is left unread after its headers and goes to yt-dlp's generic extractor, which reads the page
  and fetches the video it finds once.
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

from lwmkit.pipelines.engine.web.http_fetch import NotAccepted, fetch_into
from lwmkit.pipelines.engine.web.url_guard import (
    Deadline,
    DownloadError,
    DownloadOptions,
    Guard,
    guarded,
)

MEDIA_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".m4v", ".avi", ".flv", ".ts", ".mpg", ".mpeg", ".ogv")
# A response served as one of these is the video itself: its file suffix.
MEDIA_TYPES = {
    "video/mp4": ".mp4", "video/webm": ".webm", "video/x-matroska": ".mkv", "video/quicktime": ".mov",
    "video/x-m4v": ".m4v", "video/x-msvideo": ".avi", "video/x-flv": ".flv", "video/mp2t": ".ts",
    "video/mpeg": ".mpg", "video/ogg": ".ogv",
}


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


_EXTRACTORS: list = []


def site_extractor(url: str) -> str | None:
    """The name of the first yt-dlp extractor other than the generic one that claims `url`, or None."""
    if not _EXTRACTORS:
        from yt_dlp.extractor import gen_extractor_classes

        _EXTRACTORS.extend(ie for ie in gen_extractor_classes() if ie.ie_key() != "Generic")
    return next((ie.ie_key() for ie in _EXTRACTORS if ie.suitable(url)), None)


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


def fetch_unclaimed(url: str, target: str, options) -> str | None:
    """One GET of a URL no site extractor claims: the path `target + suffix` it wrote if the answer
    is served as a video type, else None (the body is left unread; yt-dlp reads the page)."""
    found: dict[str, str] = {}

    def accept(headers: dict[str, str]) -> bool:
        kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        found["suffix"] = MEDIA_TYPES.get(kind, "")
        return bool(found["suffix"])

    part = target + ".download"
    try:
        with contextlib.ExitStack() as files:
            fetch_into(url, net_options(options), lambda: files.enter_context(open(part, "wb")), accept=accept)
    except NotAccepted:
        os.remove(part)
        return None
    except DownloadError as e:
        raise DownloadError(_REASONS.get(e.reason, e.reason), e.detail) from e
    os.replace(part, target + found["suffix"])
    return target + found["suffix"]


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
