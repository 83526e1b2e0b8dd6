"""The video downloader against the hostile-web harness (issue 17: findings 2, 4, 5, 11 and rebinding).

URLs with a media suffix are fetched by our own client, the rest by yt-dlp inside the socket guard;
both are run here. All traffic stays on 127.0.0.1 and 127.0.0.2.
"""

from __future__ import annotations

import time

import pytest
from lwmkit.pipelines.engine.web.url_guard import DownloadError
from lwmkit.pipelines.videos.download import VideoDownloadOptions, fetch_video

from tests.pipelines.hostile_web import HostileServer, Proxy, rebinding

pytestmark = pytest.mark.usefixtures("clean_net_env")
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(4000)


def vopts(tmp_path, **kw) -> VideoDownloadOptions:
    kw.setdefault("retries", 0)
    kw.setdefault("allowed_hosts", ("127.0.0.1",))
    return VideoDownloadOptions(work_dir=str(tmp_path / "cache"), **kw)


def reason(url: str, options: VideoDownloadOptions) -> str:
    with pytest.raises(DownloadError) as e:
        fetch_video(url, "k", options)
    return e.value.reason


def test_a_direct_https_video_is_one_get(tls, ca_pem, tmp_path):
    tls.files["v.mp4"] = VIDEO
    path, fresh = fetch_video(tls.url("/f/v.mp4"), "k", vopts(tmp_path, ca_bundle=ca_pem))
    assert fresh and open(path, "rb").read() == VIDEO
    assert tls.gets("/f/v.mp4") == 1


def test_ytdlp_over_https_trusts_the_ca_bundle_and_nothing_less(tls, ca_pem, tmp_path, monkeypatch):
    # yt-dlp builds its own TLS contexts (certifi's roots when certifi is installed, ignoring
    # $SSL_CERT_FILE); --ca-bundle must reach them as it reaches lwmkit's own client.
    tls.files["v"] = VIDEO
    assert reason(tls.url("/w/v"), vopts(tmp_path / "none")) != "ok"  # the test CA is not trusted by default
    path, _ = fetch_video(tls.url("/w/v"), "k", vopts(tmp_path / "bundle", ca_bundle=ca_pem))
    assert open(path, "rb").read() == VIDEO
    monkeypatch.setenv("SSL_CERT_FILE", ca_pem)
    path, _ = fetch_video(tls.url("/w/v"), "k", vopts(tmp_path / "env"))
    assert open(path, "rb").read() == VIDEO


def test_ytdlp_downloads_through_the_guard(plain, tmp_path):
    plain.files["w1"] = VIDEO
    path, _ = fetch_video(plain.url("/w/w1"), "k", vopts(tmp_path))  # a page: only yt-dlp finds its video
    assert open(path, "rb").read() == VIDEO
    assert plain.gets("/m/w1") == 1  # the video itself, once


def test_a_video_served_without_a_media_suffix_is_one_get(plain, tmp_path):
    # No site extractor claims the URL and it answers as video/mp4: our client's one GET is the
    # download (yt-dlp's generic extractor would GET it twice: to look at it, then to download it).
    plain.files["m1"] = VIDEO
    path, fresh = fetch_video(plain.url("/m/m1"), "k", vopts(tmp_path))
    assert fresh and open(path, "rb").read() == VIDEO and path.endswith(".mp4")
    assert plain.gets("/m/m1") == 1


@pytest.mark.parametrize("route", ["/trickle", "/trickle.mp4"])
def test_a_trickle_ends_as_timeout_within_the_total_timeout(plain, tmp_path, route):
    start = time.monotonic()
    assert reason(plain.url(route), vopts(tmp_path, timeout_s=2.0, total_timeout_s=3.0)) == "timeout"
    assert time.monotonic() - start < 3.0 + 2.0


@pytest.mark.parametrize("target", ["/m/v", "/f/v.mp4"])
def test_a_redirect_to_a_refused_address_is_not_followed(plain, other, tmp_path, target):
    other.files["v"] = other.files["v.mp4"] = VIDEO
    assert reason(plain.url(f"/to?u={other.url(target)}"), vopts(tmp_path)) == "blocked_address"


def test_a_rebinding_name_never_reaches_the_second_address(monkeypatch, tmp_path):
    first = HostileServer("127.0.0.1", {"v": VIDEO})
    second = HostileServer("127.0.0.2", {"v": VIDEO}, port=first.port)
    try:
        answers = rebinding(monkeypatch, "rebind.test", "127.0.0.1", "127.0.0.2")
        try:
            fetch_video(first.url("/m/v", host="rebind.test"), "k", vopts(tmp_path))
        except DownloadError as e:
            assert e.reason == "blocked_address"
        assert answers and sum(second.hits.values()) == 0
    finally:
        first.stop()
        second.stop()


def test_through_a_proxy_the_target_is_checked(plain, other, tmp_path, monkeypatch):
    proxy = Proxy()
    try:
        monkeypatch.setenv("http_proxy", proxy.url)
        other.files["v"] = VIDEO
        assert reason(plain.url(f"/to?u={other.url('/m/v')}"), vopts(tmp_path)) == "blocked_address"
        assert proxy.seen and not any(line.startswith("GET http://127.0.0.2") for line in proxy.seen)
    finally:
        proxy.stop()


def test_ytdlp_through_a_connect_proxy_is_pinned_to_the_checked_address(ca, ca_pem, tmp_path, monkeypatch):
    # yt-dlp's own connections (a page only yt-dlp can download) through an https proxy tunnel: the
    # proxy is asked for the checked address, never the name, so it never resolves it again.
    first = HostileServer("127.0.0.1", {"v": VIDEO}, ca=ca)
    second = HostileServer("127.0.0.2", {"v": VIDEO}, ca=ca, port=first.port)
    proxy = Proxy()
    try:
        monkeypatch.setenv("https_proxy", proxy.url)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        url, options = first.url("/w/v", host="rebind.test"), vopts(tmp_path, ca_bundle=ca_pem)
        rebinding(monkeypatch, "rebind.test", "127.0.0.1", "127.0.0.1")  # a stable name first
        path, _ = fetch_video(url, "k", options)
        assert open(path, "rb").read() == VIDEO  # TLS in the tunnel checked the name
        pinned = {f"CONNECT 127.0.0.1:{first.port}"}
        assert len(proxy.seen) >= 2 and {line.rsplit(" ", 1)[0] for line in proxy.seen} == pinned
        proxy.seen.clear()
        rebinding(monkeypatch, "rebind.test", "127.0.0.1", "127.0.0.2")  # then one that rebinds
        try:
            fetch_video(url, "k2", vopts(tmp_path / "again", ca_bundle=ca_pem))
        except DownloadError as e:
            assert e.reason == "blocked_address"  # a later look-up answered 127.0.0.2: refused here
        assert {line.rsplit(" ", 1)[0] for line in proxy.seen} <= pinned
        assert sum(second.hits.values()) == 0
    finally:
        proxy.stop()
        first.stop()
        second.stop()
