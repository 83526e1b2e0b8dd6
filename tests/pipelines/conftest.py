"""Fixtures of the hostile-web harness (`hostile_web.py`): a test CA, TLS and plain servers, a refused address."""

from __future__ import annotations

import pytest
import trustme

from tests.pipelines.hostile_web import PNG, HostileServer


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_pem(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tls(ca):
    server = HostileServer("127.0.0.1", {"a.png": PNG}, ca=ca)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain():
    server = HostileServer("127.0.0.1", {"a.png": PNG})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def other():
    """A server on 127.0.0.2, an address the tests never allow: it must never be asked anything."""
    server = HostileServer("127.0.0.2", {"a.png": PNG})
    yield server
    assert sum(server.hits.values()) == 0, f"a refused address was reached: {dict(server.hits)}"
    server.stop()


@pytest.fixture
def clean_net_env(monkeypatch):
    """No proxy or CA bundle from the environment of whoever runs the tests."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
