"""Fetching URLs against a local HTTP server: each failure gets its reason, transient ones are retried."""

from __future__ import annotations

import time

import pytest
from lwmkit.pipelines.engine.stages import DropRecord
from lwmkit.pipelines.images.download import (
    Download,
    DownloadError,
    DownloadOptions,
    check_url,
    fetch,
)

from .image_inputs import SLOW_S, rgb, serve

PNG = rgb(40, 30, seed=3)
LOCAL = ("127.0.0.1",)  # the test server; any other non-public address stays blocked
FAST = DownloadOptions(timeout_s=0.5, total_timeout_s=5.0, retries=1, backoff_s=0.01, max_bytes=100_000, allowed_hosts=LOCAL)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="module")
def server():
    with serve({"a.png": PNG, "flaky": PNG}) as s:
        yield s


def reason_of(url: str, options: DownloadOptions = FAST, **kw) -> str:
    with pytest.raises(DownloadError) as e:
        fetch(url, options, **kw)
    return e.value.reason


def test_fetch_returns_the_body(server):
    assert fetch(server.url("/img/a.png"), FAST) == PNG


def test_http_errors_are_named_by_status_and_not_retried(server):
    sleeps = []
    assert reason_of(server.url("/img/missing.png"), sleep=sleeps.append) == "http_404"
    assert sleeps == []  # a 404 will not change on retry
    assert server.hits["/img/missing.png"] == 1


def test_a_hanging_server_times_out_after_each_retry(server):
    sleeps = []
    start = time.monotonic()
    assert reason_of(server.url("/slow"), sleep=sleeps.append) == "timeout"
    took = time.monotonic() - start
    assert sleeps == [FAST.backoff_s]  # one retry, backoff 0.01 * 2**0
    assert took < 2 * SLOW_S  # gave up at the socket timeout, did not wait for the answer


def test_transient_errors_are_retried_with_exponential_backoff(server):
    sleeps = []
    options = DownloadOptions(timeout_s=1.0, retries=3, backoff_s=0.5, allowed_hosts=LOCAL)
    assert fetch(server.url("/flaky"), options, sleep=sleeps.append) == PNG  # 503, 503, then 200
    assert sleeps == [0.5, 1.0]


def test_retries_exhausted_report_the_last_status(server):
    server.handler.hits.pop("/flaky", None)
    with pytest.raises(DownloadError) as e:
        fetch(server.url("/flaky"), DownloadOptions(timeout_s=1.0, retries=1, backoff_s=0, allowed_hosts=LOCAL), sleep=lambda s: None)
    assert e.value.reason == "http_503"
    assert "after 2 attempts" in e.value.detail


def test_size_cap_by_content_length_and_by_counting(server):
    assert reason_of(server.url("/big")) == "too_large"  # refused from the header, body never read
    assert reason_of(server.url("/stream")) == "too_large"  # 256 KiB streamed with no length, cap 100 KB
    roomy = DownloadOptions(max_bytes=1 << 20, allowed_hosts=LOCAL)
    assert len(fetch(server.url("/stream"), roomy)) == 64 * 4096


def test_redirects_only_to_http(server):
    assert fetch(server.url("/to-img"), FAST) == PNG
    assert reason_of(server.url("/to-ftp")) == "connection_error"


def test_connection_refused():
    import socket

    with socket.socket() as s:  # a port nobody listens on: bind, then close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert reason_of(f"http://127.0.0.1:{port}/x.png", sleep=lambda s: None) == "connection_error"


@pytest.mark.parametrize(
    "url, reason",
    [
        ("", "invalid_url"),
        (None, "invalid_url"),
        ("just words", "invalid_url"),
        ("http:///nohost.png", "invalid_url"),
        ("ftp://example.com/a.png", "unsupported_scheme"),
        ("data:image/png;base64,AAAA", "unsupported_scheme"),
        ("file:///etc/passwd", "unsupported_scheme"),
    ],
)
def test_urls_that_are_never_fetched(url, reason):
    with pytest.raises(DownloadError) as e:
        check_url(url, DownloadOptions())
    assert e.value.reason == reason


def test_file_urls_only_when_allowed(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(PNG)
    url = path.as_uri()
    assert reason_of(url, DownloadOptions()) == "unsupported_scheme"
    allowed = DownloadOptions(allow_file=True)
    assert fetch(url, allowed) == PNG
    assert reason_of((tmp_path / "nope.png").as_uri(), allowed) == "missing_file"
    assert reason_of(url, DownloadOptions(allow_file=True, max_bytes=10)) == "too_large"


def test_download_stage(server):
    stage = Download(FAST)
    with_bytes = {"file": "f", "line": 1, "key": "k", "image": b"abc", "url": "http://unused.invalid/"}
    assert list(stage(with_bytes)) == [with_bytes]  # bytes already there: nothing fetched
    [out] = stage({**with_bytes, "image": None, "url": server.url("/img/a.png")})
    assert out["image"] == PNG
    with pytest.raises(DropRecord) as e:
        list(stage({**with_bytes, "image": None, "url": server.url("/img/none.png")}))
    assert e.value.reason == "http_404" and "/img/none.png" in e.value.detail
    with pytest.raises(DropRecord) as e:
        list(stage({**with_bytes, "image": None, "url": None}))
    assert e.value.reason == "missing_image"


def test_download_stage_pickles_without_its_opener(server):
    import pickle

    stage = Download(FAST)
    list(stage({"file": "f", "line": 1, "key": "k", "image": None, "url": server.url("/img/a.png")}))
    assert stage._opener is not None
    clone = pickle.loads(pickle.dumps(stage))
    assert clone._opener is None and clone.options == FAST


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": 5, "total_timeout_s": 1}, "total_timeout_s"),
        ({"retries": -1}, "retries"),
        ({"backoff_s": -1}, "backoff_s"),
        ({"max_bytes": 0}, "max_bytes"),
    ],
)
def test_options_are_validated(kw, field):
    with pytest.raises(ValueError, match=field):
        DownloadOptions(**kw)


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "192.168.0.7", "169.254.169.254", "::1", "fe80::1", "0.0.0.0",
                                "::ffff:127.0.0.1", "224.0.0.1"])
def test_non_public_addresses_are_blocked_unless_allowed(ip):
    from lwmkit.pipelines.images.download import check_address

    with pytest.raises(DownloadError) as e:
        check_address("example.test", ip, DownloadOptions())
    assert e.value.reason == "blocked_address" and ip in e.value.detail
    check_address("example.test", ip, DownloadOptions(allowed_hosts=(ip,)))
    check_address("example.test", ip, DownloadOptions(allowed_hosts=("example.test",)))
    check_address("example.test", ip, DownloadOptions(allow_private=True))
    check_address("example.test", "93.184.215.14", DownloadOptions())  # a public address passes


def test_the_local_server_is_refused_by_default_and_nothing_is_sent(server):
    before = server.hits.get("/img/a.png", 0)
    assert reason_of(server.url("/img/a.png"), DownloadOptions(retries=0)) == "blocked_address"
    assert server.hits.get("/img/a.png", 0) == before  # refused before connecting


def test_a_redirect_to_a_blocked_address_is_refused(server):
    # Allowed by name for the first hop only: the redirect target is checked when it is connected to.
    url = server.url("/redirect-to-metadata")
    opts = DownloadOptions(retries=0, allowed_hosts=("localhost",))
    assert reason_of(url.replace("127.0.0.1", "localhost"), opts) == "blocked_address"


def test_redirects_are_bounded(server):
    opts = DownloadOptions(retries=0, allowed_hosts=LOCAL, max_redirects=3)
    assert reason_of(server.url("/redirect-loop/0"), opts) == "too_many_redirects"
    assert server.hits["/redirect-loop/3"] == 1 and "/redirect-loop/4" not in server.hits
