"""The video job's download stage: yt-dlp as a library, a download cache, retries, per-host rate limits.

`fetch_video(url, key, options)` downloads one video into the work directory (any Beam filesystem)
and returns its path there; a video already in the cache (its `<key>.json` marker, written after
the file) is not downloaded again, so a rerun downloads nothing it already has. yt-dlp runs with:

- a format capped at `max_height` (frames are cropped to 256 anyway): `bv*[height<=?H]/b[height<=?H]/bv*/b`;
- the clip's time range only, when `time_ranges` is on (needs ffmpeg; sites that cannot cut are
  downloaded whole and cut when decoding);
- no retries of its own: transient failures (timeout, connection_error, rate_limited, http_5xx)
  are retried here `retries` times, waiting `backoff_s * 2**attempt`;
- at most one request start per `host_interval_s` per host in each worker process;
- a progress hook that aborts a transfer passing `max_bytes`, and a wall-clock deadline of
  `total_timeout_s` on the sockets themselves (`videos/transport.py`);
- direct media URLs (`.mp4`, `.webm`, ...) fetched by our own client: one GET per download.

Failure reasons (from yt-dlp's errors and messages, see `classify`):
    unavailable       HTTP 404/410, removed, deleted or nonexistent videos
    private           private or members-only videos
    geo_blocked       not available from this country
    bot_check         "confirm you're not a bot", captchas
    login_required    age-gated or sign-in-only videos
    rate_limited      HTTP 429 (retried)
    timeout           no answer within `timeout_s`, or a transfer longer than `total_timeout_s`
    too_large         more than `max_bytes` (declared or streamed)
    unsupported       no video found at the URL (an HTML page, an unknown site, no format)
    http_<code>       any other HTTP status
    connection_error  refused, reset, DNS, TLS
    blocked_address   a connection (first, redirected, via a proxy) would reach a private, loopback,
                      link-local or reserved address (allow hosts with `allowed_hosts`, all with
                      `allow_private`); checked on every connection, pinned (`videos/transport.py`)
    invalid_url, unsupported_scheme, missing_file   as in the image job (`engine.web.url_guard.check_url`)
    download_error    anything else (the detail has yt-dlp's message)

Example, the stage on one row:
    before {"key": "1056", "url": "https://example.com/1056.mp4", "path": None, ...}
    after  {"key": "1056", "url": "https://example.com/1056.mp4", "path": None,
            "video_path": "out/video-cache/3f9c...e1.mp4", "downloaded": True, ...}
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from lwmkit.pipelines.engine.drops import DropRecord
from lwmkit.pipelines.engine.job_options import check_ranges
from lwmkit.pipelines.engine.outputs import is_local, join, read_output_bytes, write_output_bytes
from lwmkit.pipelines.engine.web.url_guard import DownloadError, DownloadOptions, check_url
from lwmkit.pipelines.videos.transport import (
    direct_media,
    fetch_direct,
    fetch_unclaimed,
    guarded_ytdlp,
    site_extractor,
)

RETRYABLE = frozenset({"timeout", "connection_error", "rate_limited"})
# (reason, lower-case fragments of yt-dlp's messages), checked in order: the first match wins.
_MESSAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bot_check", ("not a bot", "captcha", "unusual traffic", "bot detection")),
    ("geo_blocked", ("your country", "geo restrict", "geo-restrict", "not available in your location",
                     "from your location", "available in your region")),
    ("private", ("private video", "video is private", "members-only", "members only", "join this channel")),
    ("login_required", ("confirm your age", "age-restricted", "sign in to", "login required", "requires login",
                        "account credentials", "cookies")),
    ("rate_limited", ("http error 429", "too many requests")),
    ("unsupported", ("unsupported url", "no video formats", "requested format is not available",
                     "no suitable formats", "unable to extract")),
    ("unavailable", ("http error 404", "http error 410", "video unavailable", "is not available",
                     "has been removed", "no longer available", "does not exist", "been terminated", "deleted")),
    ("too_large", ("larger than max-filesize",)),
    ("timeout", ("timed out", "timeout")),
    ("connection_error", ("connection refused", "connection reset", "name or service not known",
                          "temporary failure in name resolution", "ssl", "certificate", "remote end closed",
                          "connection aborted", "network is unreachable", "transporterror")),
)


@dataclass(frozen=True)
class VideoDownloadOptions:
    """How videos are fetched.

    Attributes:
      work_dir: where downloads land (local or any Beam filesystem); None = `<output>/video-cache`.
      max_height: the format cap, in pixels of height.
      timeout_s: socket timeout of each connect and read.
      total_timeout_s: limit on one attempt's transfer.
      retries: further attempts after a transient failure.
      backoff_s: wait before retry k is backoff_s * 2**k.
      max_bytes: the largest video accepted.
      host_interval_s: least time between request starts to one host, per worker process.
      allow_file: also accept file:// URLs.
      allow_private: also download from private, loopback, link-local and reserved addresses.
      allowed_hosts: host names or IP addresses allowed even so (e.g. ("127.0.0.1",) in tests).
      time_ranges: download only the row's [start, end) where the site allows (needs ffmpeg).
      ca_bundle: PEM CA certificates trusted besides the system store (default `$SSL_CERT_FILE`).
    """

    work_dir: str | None = None
    max_height: int = 360
    timeout_s: float = 20.0
    total_timeout_s: float = 900.0
    retries: int = 2
    backoff_s: float = 2.0
    max_bytes: int = 1 << 31
    host_interval_s: float = 0.0
    allow_file: bool = False
    time_ranges: bool = False
    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()
    ca_bundle: str | None = None

    def __post_init__(self):
        DownloadOptions(self.timeout_s, self.total_timeout_s, self.retries, self.backoff_s, self.max_bytes)
        check_ranges(self, max_height="16..8640", host_interval_s="[0, 3600]")

    def recorded(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("work_dir")
        d.pop("ca_bundle")  # where trust comes from, not what is made
        return d


class _Abort(Exception):
    """Raised from the progress hook to stop a transfer (yt-dlp lets it through)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Log:
    """yt-dlp's logger: keeps every message, prints none."""

    def __init__(self):
        self.lines: list[str] = []

    def debug(self, msg: str) -> None:
        self.lines.append(msg)

    info = warning = error = debug


def classify(message: str) -> str:
    """The failure reason of a yt-dlp error message (see the module docstring)."""
    lower = message.lower()
    for reason, fragments in _MESSAGES:
        if any(f in lower for f in fragments):
            return reason
    if "http error " in lower:
        code = lower.split("http error ", 1)[1][:3]
        if code.isdigit():
            return f"http_{code}"
    return "download_error"


def retryable(reason: str) -> bool:
    return reason in RETRYABLE or (reason.startswith("http_5") and reason[5:].isdigit())


class HostRateLimiter:
    """At most one request start per `interval_s` per host (thread-safe; one per process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    def wait(self, host: str, interval_s: float) -> float:
        """Blocks until `host` may be asked again; returns the seconds waited."""
        if interval_s <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            start = max(now, self._next.get(host, now))
            self._next[host] = start + interval_s
        if start > now:
            self._sleep(start - now)
        return start - now


_LIMITER = HostRateLimiter()


def cache_key(url: str, options: VideoDownloadOptions, clip: tuple[float | None, float | None]) -> str:
    """The cache name of a download: what was asked for, not where it went."""
    asked = [url, options.max_height, list(clip) if options.time_ranges else None]
    return hashlib.sha256(json.dumps(asked).encode()).hexdigest()[:32]


def _ydl_options(target: str, options: VideoDownloadOptions, clip, log: _Log, hook) -> dict[str, Any]:
    h = options.max_height
    opts: dict[str, Any] = {
        "format": f"bv*[height<=?{h}]/b[height<=?{h}]/bv*/b",
        "outtmpl": {"default": target + ".%(ext)s"},
        "logger": log,
        "quiet": True,
        "noprogress": True,
        "noplaylist": True,
        "socket_timeout": options.timeout_s,
        "retries": 0,
        "fragment_retries": 0,
        "extractor_retries": 0,
        "file_access_retries": 0,
        "max_filesize": options.max_bytes,
        "progress_hooks": [hook],
        "cachedir": False,
        "overwrites": True,
        "noresizebuffer": True,
        "nocheckcertificate": False,
    }
    if options.time_ranges and (clip[0] is not None or clip[1] is not None):
        from yt_dlp.utils import download_range_func

        opts["download_ranges"] = download_range_func(None, [(clip[0] or 0.0, clip[1] or float("inf"))])
        opts["force_keyframes_at_cuts"] = True
    return opts


def _attempt(url: str, target: str, options: VideoDownloadOptions, clip) -> str:
    """One yt-dlp run; returns the local file it wrote.

    Raises:
      DownloadError: with the reason of this attempt.
    """
    import yt_dlp

    log = _Log()
    deadline = time.monotonic() + options.total_timeout_s

    def hook(d: dict[str, Any]) -> None:
        done = d.get("downloaded_bytes") or 0
        if done > options.max_bytes:
            raise _Abort("too_large", f"more than {options.max_bytes} bytes streamed")
        if time.monotonic() > deadline:
            raise _Abort("timeout", f"transfer not finished within {options.total_timeout_s:g}s ({done} bytes)")

    whole = not (options.time_ranges and (clip[0] is not None or clip[1] is not None))
    if whole and (suffix := direct_media(url)):
        return fetch_direct(url, target, suffix, options)
    if whole and site_extractor(url) is None and (path := fetch_unclaimed(url, target, options)):
        return path
    try:
        with guarded_ytdlp(options), yt_dlp.YoutubeDL(_ydl_options(target, options, clip, log, hook)) as ydl:
            info = ydl.extract_info(url, download=True)
    except _Abort as e:
        raise DownloadError(e.reason, e.detail) from e
    except yt_dlp.utils.YoutubeDLError as e:
        cause = getattr(e, "exc_info", None)
        cause = cause[1] if cause else None
        if isinstance(cause, _Abort):
            raise DownloadError(cause.reason, cause.detail) from e
        message = str(e).removeprefix("ERROR: ")
        reason = "geo_blocked" if isinstance(cause, yt_dlp.utils.GeoRestrictedError) else classify(message)
        raise DownloadError(reason, message[:500]) from e
    downloads = (info or {}).get("requested_downloads") or []
    path = downloads[0].get("filepath") if downloads else None
    if not path or not os.path.exists(path):
        said = " | ".join(line for line in log.lines if "max-filesize" in line or "ERROR" in line)[:500]
        reason = classify(said) if said else "download_error"
        raise DownloadError(reason, said or "yt-dlp finished without writing a file")
    return path


def _cleanup(prefix: str) -> None:
    folder, base = os.path.split(prefix)
    for name in os.listdir(folder or "."):
        if name.startswith(base):
            os.remove(os.path.join(folder, name))


def fetch_video(
    url: str,
    key: str,
    options: VideoDownloadOptions,
    clip: tuple[float | None, float | None] = (None, None),
    *,
    sleep: Callable[[float], None] = time.sleep,
    limiter: HostRateLimiter | None = None,
) -> tuple[str, bool]:
    """Downloads `url` into `options.work_dir` (cached); returns (its path there, downloaded now).

    Raises:
      DownloadError: with the reason of the last attempt (see the module docstring).
    """
    from apache_beam.io.filesystems import FileSystems

    work = options.work_dir
    if work is None:
        raise ValueError("VideoDownloadOptions.work_dir is not set")
    marker = read_output_bytes(join(work, key + ".json"))
    if marker is not None:
        cached = join(work, json.loads(marker)["file"])
        if FileSystems.exists(cached):
            return cached, False
    host = urllib.parse.urlsplit(url).hostname or ""  # addresses are checked on every connection
    limiter = limiter or _LIMITER
    local_dir = work if is_local(work) else tempfile.mkdtemp(prefix="lwmkit-video-")
    os.makedirs(local_dir, exist_ok=True)
    # A private name while downloading: two workers fetching the same URL never share a partial file.
    target = os.path.join(local_dir, f"{key}.part-{uuid.uuid4().hex[:12]}")
    attempt = 0
    try:
        while True:
            limiter.wait(host, options.host_interval_s)
            try:
                path = _attempt(url, target, options, clip)
                break
            except DownloadError as e:
                _cleanup(target)
                if not retryable(e.reason) or attempt >= options.retries:
                    if attempt:
                        e.detail = f"{e.detail} (after {attempt + 1} attempts)"
                    raise
            sleep(options.backoff_s * 2**attempt)
            attempt += 1
        name = key + os.path.splitext(path)[1]
        if is_local(work):
            os.replace(path, os.path.join(work, name))
        else:
            _upload(path, join(work, name))
        size = os.path.getsize(join(work, name)) if is_local(work) else os.path.getsize(path)
        write_output_bytes(join(work, key + ".json"), json.dumps({"url": url, "file": name, "bytes": size}).encode())
        return join(work, name), True
    finally:
        if not is_local(work):
            shutil.rmtree(local_dir, ignore_errors=True)


def _upload(local: str, dest: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    with open(local, "rb") as src, FileSystems.create(dest) as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _file_url_path(url: str) -> str:
    return urllib.request.url2pathname(urllib.parse.urlsplit(url).path)


class DownloadVideo:
    """The download stage: sets `video_path` (a local or work-directory path) on every video.

    Rows with a `path` are checked for existence; file:// URLs (when allowed) are read in place;
    http(s) URLs go through `fetch_video`.
    """

    def __init__(self, options: VideoDownloadOptions):
        self.options = options

    def __call__(self, video: dict) -> Iterator[dict]:
        from apache_beam.io.filesystems import FileSystems

        if video.get("path") is not None:
            if not FileSystems.exists(video["path"]):
                raise DropRecord("missing_file", f"{video['path']}: no such file")
            yield {**video, "video_path": video["path"], "downloaded": False}
            return
        url = video["url"]
        try:
            scheme = check_url(url, DownloadOptions(allow_file=self.options.allow_file))
        except DownloadError as e:
            raise DropRecord(e.reason, e.detail) from e
        url = url.strip()
        if scheme == "file":
            path = _file_url_path(url)
            if not os.path.isfile(path):
                raise DropRecord("missing_file", f"{url}: no such file")
            yield {**video, "video_path": path, "downloaded": False}
            return
        clip = (video.get("start"), video.get("end"))
        try:
            path, fresh = fetch_video(url, cache_key(url, self.options, clip), self.options, clip)
        except DownloadError as e:
            raise DropRecord(e.reason, f"{url}: {e.detail}") from e
        cut = self.options.time_ranges and (clip[0] is not None or clip[1] is not None)
        yield {**video, "video_path": path, "downloaded": fresh, "clip_cut": cut}
