"""The `offline` fixture of the Dataflow dry-run tests: no network, and no Google credentials.

Connecting or resolving a name raises, and credential look-ups are counted (the test fails if
there was one), so a Beam change that makes a dry run reach Google is caught, not waited on.
"""

from __future__ import annotations

import socket

import pytest

DATAFLOW = [
    "--runner", "DataflowRunner", "--project", "lwm-test", "--region", "us-central1",
    "--temp_location", "gs://lwm-test-bucket/tmp",
    "--sdk_container_image", "us-docker.pkg.dev/lwm-test/lwm/lwmkit:0.1.0", "--dry_run=True",
]  # fmt: skip


@pytest.fixture
def offline(monkeypatch):
    from apache_beam.internal.gcp import auth

    def refuse(*args, **kwargs):
        raise OSError("the dry run tried the network")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    lookups = []
    monkeypatch.setattr(auth, "get_service_credentials", lambda *a, **k: lookups.append(a))
    yield
    assert lookups == [], "the dry run looked up Google credentials"
