"""The image downloader against the hostile-web harness (issue 17: findings 1, 2, 5 and rebinding).

Each test names the server it runs against; all traffic stays on 127.0.0.1 and 127.0.0.2.
"""

from __future__ import annotations

import json
import time

import pytest
from lwmkit.pipelines.images.download import DownloadError, DownloadOptions, fetch

from tests.pipelines.hostile_web import PNG, HostileServer, Proxy, rebinding

LOCAL = ("127.0.0.1",)


pytestmark = pytest.mark.usefixtures("clean_net_env")


def opts(**kw) -> DownloadOptions:
    kw.setdefault("retries", 0)
    kw.setdefault("allowed_hosts", LOCAL)
    return DownloadOptions(**kw)


def reason(url: str, options: DownloadOptions) -> str:
    with pytest.raises(DownloadError) as e:
        fetch(url, options)
    return e.value.reason


def test_https_with_a_ca_bundle_option_and_with_ssl_cert_file(tls, ca_pem, monkeypatch):
    assert fetch(tls.url("/f/a.png"), opts(ca_bundle=ca_pem)) == PNG
    monkeypatch.setenv("SSL_CERT_FILE", ca_pem)
    assert fetch(tls.url("/f/a.png"), opts()) == PNG
    assert tls.gets("/f/a.png") == 2  # one GET per download


def test_tls_verification_stays_on_without_the_ca(tls):
    assert reason(tls.url("/f/a.png"), opts()) == "connection_error"  # the test CA is not trusted
    with pytest.raises(TypeError):
        DownloadOptions(verify=False)  # there is no switch


@pytest.mark.parametrize("server", ["plain", "tls"])
def test_a_trickle_ends_as_timeout_within_the_total_timeout(server, request, ca_pem):
    srv = request.getfixturevalue(server)
    start = time.monotonic()
    assert reason(srv.url("/trickle"), opts(timeout_s=1.0, total_timeout_s=2.0, ca_bundle=ca_pem)) == "timeout"
    assert time.monotonic() - start < 2.0 + 1.5


def test_the_deadline_covers_retries(plain):
    start = time.monotonic()
    assert reason(plain.url("/trickle"), opts(timeout_s=1.0, total_timeout_s=2.0, retries=3, backoff_s=0.1)) == "timeout"
    assert time.monotonic() - start < 2.0 + 1.5


def test_hang_after_headers_and_a_lying_length(tls, ca_pem):
    start = time.monotonic()
    assert reason(tls.url("/hang"), opts(timeout_s=1.0, total_timeout_s=30.0, ca_bundle=ca_pem)) == "timeout"
    assert time.monotonic() - start < 1.0 + 1.5
    assert reason(tls.url("/lie"), opts(ca_bundle=ca_pem)) == "connection_error"


def test_redirects_to_allowed_refused_and_looping_targets(plain, tls, other, ca_pem):
    assert fetch(plain.url(f"/to?u={tls.url('/f/a.png')}"), opts(ca_bundle=ca_pem)) == PNG
    assert reason(plain.url(f"/to?u={other.url('/f/a.png')}"), opts()) == "blocked_address"
    assert reason(plain.url("/loop"), opts(max_redirects=3)) == "too_many_redirects"
    assert plain.gets("/loop") == 4


def test_plain_http_through_a_proxy_checks_the_target(plain, other, monkeypatch):
    proxy = Proxy()
    try:
        monkeypatch.setenv("http_proxy", proxy.url)
        assert fetch(plain.url("/f/a.png"), opts()) == PNG
        assert proxy.seen == [f"GET {plain.url('/f/a.png')} HTTP/1.1"]
        assert reason(other.url("/f/a.png"), opts()) == "blocked_address"
        assert reason(plain.url(f"/to?u={other.url('/f/a.png')}"), opts()) == "blocked_address"
    finally:
        proxy.stop()


def test_https_through_a_connect_proxy_checks_the_tunnel(tls, other, ca_pem, monkeypatch):
    proxy = Proxy()
    try:
        monkeypatch.setenv("https_proxy", proxy.url)
        assert fetch(tls.url("/f/a.png"), opts(ca_bundle=ca_pem)) == PNG
        assert [line.rsplit(" ", 1)[0] for line in proxy.seen] == [f"CONNECT 127.0.0.1:{tls.port}"]
        assert reason(f"https://127.0.0.2:{other.port}/f/a.png", opts(ca_bundle=ca_pem)) == "blocked_address"
        assert len(proxy.seen) == 1
    finally:
        proxy.stop()


def test_a_connect_tunnel_is_pinned_to_the_checked_address(tls, ca_pem, monkeypatch):
    # The proxy is asked for the address we checked, never the name: a name that would resolve
    # elsewhere the second time (here, for the proxy) cannot move the tunnel.
    second = HostileServer("127.0.0.2", {"a.png": PNG}, port=tls.port)
    proxy = Proxy()
    try:
        answers = rebinding(monkeypatch, "rebind.test", "127.0.0.1", "127.0.0.2")
        monkeypatch.setenv("https_proxy", proxy.url)
        assert fetch(tls.url("/f/a.png", host="rebind.test"), opts(ca_bundle=ca_pem)) == PNG  # TLS checks the name
        assert [line.rsplit(" ", 1)[0] for line in proxy.seen] == [f"CONNECT 127.0.0.1:{tls.port}"]
        assert answers == ["127.0.0.1"] and sum(second.hits.values()) == 0
    finally:
        proxy.stop()
        second.stop()


def test_a_rebinding_name_is_resolved_once_and_pinned(tls, other, ca_pem, monkeypatch):
    answers = rebinding(monkeypatch, "rebind.test", "127.0.0.1", "127.0.0.2")
    assert fetch(tls.url("/f/a.png", host="rebind.test"), opts(ca_bundle=ca_pem)) == PNG
    assert answers == ["127.0.0.1"]


def test_lwm_pack_images_over_https_with_a_trickling_url(tls, ca_pem, bpe_model, tmp_path, monkeypatch):
    from lwmkit.pipelines.cli import main

    from .image_inputs import rgb, write_parquet

    names = ["job-a.png", "job-b.png", "job-c.png"]  # not the files other tests of this module fetch
    for i, name in enumerate(names):
        tls.files[name] = rgb(seed=i + 1)
    urls = write_parquet(tmp_path / "urls.parquet", {
        "url": [tls.url(f"/f/{n}") for n in names] + [tls.url("/trickle")],
        "caption": ["first picture", "second picture", "third picture", "a picture that never arrives"],
    })
    monkeypatch.setenv("SSL_CERT_FILE", ca_pem)
    out = tmp_path / "out"
    start = time.monotonic()
    rc = main(["images", "--input", urls, "--tokenizer", bpe_model, "--output", str(out), "--vqgan-preset", "tiny",
               "--seq-len", "2048", "--download-timeout", "3", "--download-retries", "0", "--allow-host", "127.0.0.1",
               "--batch-size", "4", "--shard-tokens", "4096", "--quiet"])
    elapsed = time.monotonic() - start
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["download"] == {"seen": 4, "kept": 3, "dropped": 1}
    rows = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rows] == [(4, "timeout")]
    assert all(tls.gets(f"/f/{n}") == 1 for n in names)
    assert elapsed < 120  # nothing hangs (the trickle alone would take 800 s)
