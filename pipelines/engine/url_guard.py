"""The URL guard both downloaders use: which URLs may be fetched and which addresses reached.

`check_url` accepts http(s) URLs with a host (and file:// only with `allow_file`); `check_address`
refuses private, loopback, link-local, multicast and reserved addresses unless allowed (a URL list
from elsewhere must not reach the worker's own network: cloud metadata servers, internal
services). The connections themselves (resolved once, checked, pinned, under a
wall-clock deadline) are `engine/net_guard.py`; the http(s) client both downloaders fetch with is
`engine/http_fetch.py`. Failures are `DownloadError(reason, detail)` with the reasons listed in
`images/download.py`; the security model as a whole is `docs/security.md`.

Example:
    check_url("ftp://x/y", DownloadOptions())   # DownloadError: unsupported_scheme
    checked_addresses("localhost", 80, DownloadOptions())   # DownloadError: blocked_address
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Any

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(Exception):
    """A URL could not be fetched; `reason` is one of the module docstring's reasons."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    @property
    def retryable(self) -> bool:
        if self.reason in ("timeout", "connection_error"):
            return True
        return self.reason.startswith("http_") and self.reason[5:].isdigit() and int(self.reason[5:]) in RETRY_STATUS


@dataclass(frozen=True)
class DownloadOptions:
    """How URLs are fetched.

    Attributes:
      timeout_s: socket timeout of each connect and read (seconds).
      total_timeout_s: wall-clock limit on one URL's whole fetch, retries included, enforced on the
        sockets (a server trickling bytes cannot hold a worker longer).
      retries: further attempts after a transient failure.
      backoff_s: wait before retry k is backoff_s * 2**k.
      max_bytes: the largest body accepted.
      allow_file: also accept file:// URLs (off: a URL list from elsewhere must not read local files).
      allow_private: also connect to private, loopback, link-local and reserved addresses.
      allowed_hosts: host names or IP addresses allowed even so (e.g. ("127.0.0.1",) in tests).
      max_redirects: redirects followed per request.
      user_agent: the User-Agent header sent.
      ca_bundle: a PEM file of CA certificates trusted besides the system store (default:
        `$SSL_CERT_FILE`, if set); TLS verification itself cannot be turned off.
    """

    timeout_s: float = 10.0
    total_timeout_s: float = 60.0
    retries: int = 2
    backoff_s: float = 1.0
    max_bytes: int = 32 << 20
    allow_file: bool = False
    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()
    max_redirects: int = 5
    user_agent: str = "lwmkit-image-download/1 (+https://github.com/LargeWorldModel)"
    ca_bundle: str | None = None

    def __post_init__(self):
        if not 0 < self.timeout_s <= 3600:
            raise ValueError(f"timeout_s: {self.timeout_s} is outside (0, 3600]")
        if not self.timeout_s <= self.total_timeout_s <= 86400:
            raise ValueError(f"total_timeout_s: {self.total_timeout_s} is outside [timeout_s={self.timeout_s}, 86400]")
        if not 0 <= self.retries <= 10:
            raise ValueError(f"retries: {self.retries} is outside 0..10")
        if not 0 <= self.backoff_s <= 600:
            raise ValueError(f"backoff_s: {self.backoff_s} is outside [0, 600]")
        if not 1 <= self.max_bytes <= 1 << 31:
            raise ValueError(f"max_bytes: {self.max_bytes} is outside 1..{1 << 31}")
        if not 0 <= self.max_redirects <= 30:
            raise ValueError(f"max_redirects: {self.max_redirects} is outside 0..30")
        if isinstance(self.allowed_hosts, str):
            raise ValueError(f"allowed_hosts: give a tuple of hosts, not the string {self.allowed_hosts!r}")


def check_address(host: str, ip: str, options: DownloadOptions) -> None:
    """Raises DownloadError('blocked_address') unless `options` allow connecting to `ip` for `host`."""
    if options.allow_private or host in options.allowed_hosts or ip in options.allowed_hosts:
        return
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if not addr.is_global or addr.is_multicast:
        raise DownloadError(
            "blocked_address",
            f"{host} resolves to {ip}, a non-public address (allow it with allowed_hosts / --allow-host {host})",
        )


def checked_addresses(host: str, port: int, options: DownloadOptions) -> list[tuple]:
    """getaddrinfo results for host:port whose addresses pass `check_address` (raises if none do)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise DownloadError("connection_error", f"cannot resolve {host}: {e}") from e
    for info in infos:
        check_address(host, info[4][0], options)  # any non-public answer blocks the host
    return infos


def check_url(url: Any, options: DownloadOptions) -> str:
    """The URL's scheme if it may be fetched under `options`.

    Raises:
      DownloadError: invalid_url or unsupported_scheme.
    """
    if not isinstance(url, str) or not url.strip():
        raise DownloadError("invalid_url", f"{url!r} is not a URL")
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError as e:
        raise DownloadError("invalid_url", f"{url!r}: {e}") from e
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise DownloadError("invalid_url", f"{url!r} has no host")
        return scheme
    if scheme == "file" and options.allow_file:
        return scheme
    if not scheme:
        raise DownloadError("invalid_url", f"{url!r} has no scheme")
    hint = " (allow it with allow_file / --allow-file-urls)" if scheme == "file" else ""
    raise DownloadError("unsupported_scheme", f"{scheme}:// is not fetched{hint}")
