"""The video download stage: yt-dlp's generic extractor against a local server, the cache, retries,
failure reasons, per-host rate limits, and local paths / file:// URLs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from lwmkit.pipelines.engine.stages import DropRecord
from lwmkit.pipelines.images.download import DownloadError
from lwmkit.pipelines.videos.download import (
    DownloadVideo,
    HostRateLimiter,
    VideoDownloadOptions,
    _ydl_options,
    cache_key,
    classify,
    fetch_video,
    retryable,
)

from .helpers import unset_proxies
from .video_inputs import serve, write_clip



@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    unset_proxies(monkeypatch)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    return Path(write_clip(tmp_path_factory.mktemp("dl") / "a.mp4", n=6)).read_bytes()


@pytest.fixture(scope="module")
def server(clip):
    with serve({"a.mp4": clip, "b.mp4": clip + b"", "c.webm": clip}) as s:
        yield s


def _options(tmp_path, **kw) -> VideoDownloadOptions:
    defaults = dict(work_dir=str(tmp_path / "work"), timeout_s=1.0, retries=0, backoff_s=0.01, allowed_hosts=("127.0.0.1",))
    return VideoDownloadOptions(**{**defaults, **kw})


@pytest.mark.parametrize(
    "message,reason",
    [
        ("[youtube] x: Sign in to confirm you\u2019re not a bot. Use --cookies-from-browser or --cookies", "bot_check"),
        ("[youtube] x: Private video. Sign in if you've been granted access to this video", "private"),
        ("[youtube] x: Join this channel to get access to members-only content like this video", "private"),
        ("[youtube] x: Video unavailable. This video has been removed by the uploader", "unavailable"),
        ("[youtube] x: The uploader has not made this video available in your country", "geo_blocked"),
        ("[youtube] x: Sign in to confirm your age. This video may be inappropriate for some users.", "login_required"),
        ("Unsupported URL: https://example.com/", "unsupported"),
        ("[generic] x: Requested format is not available. Use --list-formats", "unsupported"),
        ("[generic] x: Unable to download webpage: HTTP Error 429: Too Many Requests", "rate_limited"),
        ("[generic] x: Unable to download webpage: HTTP Error 403: Forbidden", "http_403"),
        ("[generic] x: Unable to download webpage: HTTP Error 502: Bad Gateway", "http_502"),
        ("[generic] x: HTTPConnectionPool(host='a', port=1): Read timed out. (read timeout=1.0)", "timeout"),
        ("[generic] x: <urlopen error [Errno 111] Connection refused>", "connection_error"),
        ("[download] File is larger than max-filesize (5000 bytes > 100 bytes). Aborting.", "too_large"),
        ("something nobody expected", "download_error"),
    ],
)
def test_classify(message, reason):
    assert classify(message) == reason


def test_retryable():
    reasons = ("timeout", "rate_limited", "http_503", "http_404", "unavailable", "bot_check")
    assert [r for r in reasons if retryable(r)] == ["timeout", "rate_limited", "http_503"]


def test_download_then_cache(server, clip, tmp_path):
    opts = _options(tmp_path)
    url = server.url("/v/a.mp4")
    key = cache_key(url, opts, (None, None))
    path, fresh = fetch_video(url, key, opts)
    assert fresh and Path(path).read_bytes() == clip and path.startswith(opts.work_dir)
    hits = dict(server.hits)
    again, fresh = fetch_video(url, key, opts)
    assert again == path and not fresh and server.hits == hits  # the rerun asked the server nothing
    assert sorted(os.listdir(opts.work_dir)) == sorted([key + ".mp4", key + ".json"]) and path.endswith(key + ".mp4")
    os.remove(path)  # a cache entry whose file went missing is fetched again
    again, fresh = fetch_video(url, key, opts)
    assert again == path and fresh and Path(path).read_bytes() == clip and server.hits["/v/a.mp4"] > hits["/v/a.mp4"]


@pytest.mark.parametrize(
    "route,reason",
    [("/v/nothing.mp4", "unavailable"), ("/page", "unsupported")],
)
def test_failures_have_reasons(server, tmp_path, route, reason):
    opts = _options(tmp_path)
    url = server.url(route)
    with pytest.raises(DownloadError) as e:
        fetch_video(url, cache_key(url, opts, (None, None)), opts)
    assert e.value.reason == reason and e.value.detail
    assert os.listdir(opts.work_dir) == []  # nothing partial is left behind


def test_too_large(server, tmp_path):
    opts = _options(tmp_path, max_bytes=1000)
    url = server.url("/v/b.mp4")
    with pytest.raises(DownloadError, match="exceeds 1000 bytes") as e:
        fetch_video(url, cache_key(url, opts, (None, None)), opts)
    assert e.value.reason == "too_large"


def test_a_hanging_server_times_out_after_retries(server, tmp_path):
    sleeps = []
    opts = _options(tmp_path, timeout_s=0.5, retries=1, backoff_s=0.05)
    url = server.url("/slow/a.mp4")
    with pytest.raises(DownloadError, match="TimeoutError") as e:
        fetch_video(url, "slow", opts, sleep=sleeps.append)
    assert e.value.reason == "timeout" and "after 2 attempts" in e.value.detail and sleeps == [0.05]


def test_transient_failures_are_retried_with_backoff(server, clip, tmp_path):
    sleeps = []
    opts = _options(tmp_path, retries=2, backoff_s=0.25)
    url = server.url("/flaky/2/c.webm")
    path, fresh = fetch_video(url, "flaky", opts, sleep=sleeps.append)
    assert fresh and Path(path).read_bytes() == clip and path.endswith(".webm")
    assert sleeps == [0.25, 0.5] and server.hits["/flaky/2/c.webm"] >= 3


def test_host_rate_limit():
    now = [100.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    limiter = HostRateLimiter(clock=lambda: now[0], sleep=sleep)
    assert limiter.wait("a.org", 2.0) == 0.0
    assert limiter.wait("b.org", 2.0) == 0.0
    assert limiter.wait("a.org", 2.0) == 2.0 and now[0] == 102.0
    now[0] += 5.0
    assert limiter.wait("a.org", 2.0) == 0.0 and limiter.wait("a.org", 0.0) == 0.0 and slept == [2.0]


class _Recording(HostRateLimiter):
    def __init__(self):
        super().__init__()
        self.starts: list[tuple[str, float]] = []

    def wait(self, host, interval_s):
        waited = super().wait(host, interval_s)
        self.starts.append((host, time.monotonic()))
        return waited


def test_rate_limit_spaces_requests_to_a_host(server, tmp_path):
    opts = _options(tmp_path, host_interval_s=0.4)
    limiter = _Recording()
    for name in ("a.mp4", "b.mp4"):
        url = server.url(f"/v/{name}?spaced")
        before = server.hits.get(f"/v/{name}", 0)
        fetch_video(url, cache_key(url, opts, (None, None)), opts, limiter=limiter)
        assert server.hits[f"/v/{name}"] > before
    (h1, t1), (h2, t2) = limiter.starts
    assert h1 == h2 == "127.0.0.1" and t2 - t1 >= 0.4 - 1e-3


def test_cache_key_and_time_ranges():
    opts = VideoDownloadOptions(work_dir="w")
    url = "https://example.com/v.mp4"
    assert cache_key(url, opts, (1.0, 2.0)) == cache_key(url, opts, (None, None))  # whole video either way
    ranged = VideoDownloadOptions(work_dir="w", time_ranges=True)
    assert cache_key(url, ranged, (1.0, 2.0)) != cache_key(url, ranged, (None, None))
    assert cache_key(url, VideoDownloadOptions(max_height=720), (None, None)) != cache_key(url, opts, (None, None))
    ydl = _ydl_options("w/k", ranged, (1.0, 2.0), None, None)
    assert ydl["force_keyframes_at_cuts"] and "download_ranges" in ydl
    assert ydl["format"] == "bv*[height<=?360]/b[height<=?360]/bv*/b" and ydl["retries"] == 0
    assert "download_ranges" not in _ydl_options("w/k", opts, (1.0, 2.0), None, None)


def test_stage_paths_and_file_urls(tmp_path, clip):
    local = tmp_path / "here.mp4"
    local.write_bytes(clip)
    stage = DownloadVideo(_options(tmp_path))
    row = {"file": "l.jsonl", "line": 1, "url": None, "path": str(local)}
    assert next(stage(row))["video_path"] == str(local)
    with pytest.raises(DropRecord) as e:
        next(stage({**row, "path": str(tmp_path / "gone.mp4")}))
    assert e.value.reason == "missing_file"
    file_row = {**row, "path": None, "url": local.as_uri()}
    with pytest.raises(DropRecord, match="allow") as e:
        next(stage(file_row))
    assert e.value.reason == "unsupported_scheme"
    allowed = DownloadVideo(_options(tmp_path, allow_file=True))
    assert next(allowed(file_row))["video_path"] == str(local)
    with pytest.raises(DropRecord) as e:
        next(stage({**row, "path": None, "url": "not a url"}))
    assert e.value.reason == "invalid_url"


@pytest.mark.parametrize("kw,field", [({"max_height": 8}, "max_height"), ({"host_interval_s": -1}, "host_interval_s"),
                                      ({"retries": 11}, "retries"), ({"timeout_s": 0}, "timeout_s")])
def test_options_are_validated(kw, field):
    with pytest.raises(ValueError, match=field):
        VideoDownloadOptions(**kw)


def test_a_loopback_host_is_refused_by_default_before_yt_dlp_connects(server, tmp_path):
    before = dict(server.hits)
    opts = _options(tmp_path, allowed_hosts=())
    with pytest.raises(DownloadError) as e:
        fetch_video(server.url("/img/a.mp4"), "k", opts)
    assert e.value.reason == "blocked_address"
    assert server.hits == before  # nothing was requested
