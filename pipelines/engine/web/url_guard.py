"""The URL guard both downloaders use: which URLs may be fetched and which addresses reached.

`check_url` accepts http(s) URLs with a host (and file:// only with `allow_file`); `check_address`
refuses private, loopback, link-local, multicast and reserved addresses unless allowed (a URL list
from elsewhere must not reach the worker's own network: cloud metadata servers, internal
services). The connections themselves (resolved once, checked, pinned, under a
wall-clock deadline) are the socket layer below; the http(s) client both downloaders fetch with is
`engine/web/http_fetch.py`. Failures are `DownloadError(reason, detail)` with the reasons listed in
`images/download.py`; the security model as a whole is `docs/security.md`.

Example:
    check_url("ftp://x/y", DownloadOptions())   # DownloadError: unsupported_scheme
    checked_addresses("localhost", 80, DownloadOptions())   # DownloadError: blocked_address

The socket layer, below HTTP, shared by both downloaders:

- `connect_checked(host, port, options)` resolves `host` once, checks every answer with
  `check_address` and connects to exactly the address it checked (no second DNS look-up a
  rebinding name could change between check and use).
- `Deadline(seconds)` is a wall-clock limit on a whole fetch however bytes arrive: every socket
  registered with it is shut down (`SHUT_RDWR`) when the time is up, so a read blocked on a server
  that trickles one byte a second returns at once; `expired` then tells the caller to report
  `timeout`. A per-read socket timeout cannot do this (each trickled byte resets it).
- `guarded(options, deadline)` applies both to code we do not own (yt-dlp, and urllib3 under it):
  while the block runs, in this thread only, every `socket.connect` is checked against
  `check_address` on the address actually connected to (with the host name it was resolved from,
  so `allowed_hosts` may name hosts), every socket joins the deadline, and a request through an
  HTTP proxy has its target (the absolute URL of a plain-http request, the host of a CONNECT)
  checked too. A CONNECT tunnel is pinned: the host is resolved here, every answer checked, and the
  proxy is asked for the checked address (`CONNECT 93.184.216.34:443`), never the name, so it has
  nothing to resolve again; TLS inside the tunnel still verifies the certificate against the name.
  Other threads and code outside the block are untouched.

`ssl_context(ca_bundle)` is the TLS trust of every https fetch: the system store, plus the PEM
bundle named by `ca_bundle` or the `SSL_CERT_FILE` environment variable; verification and host
name checks are always on (there is no option that turns them off).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lwmkit.pipelines.engine.drops import ReasonError
from lwmkit.pipelines.engine.job_options import check_ranges

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(ReasonError):
    """A URL could not be fetched; `reason` is one of the module docstring's reasons."""

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
        check_ranges(self, timeout_s="(0, 3600]")
        if not self.timeout_s <= self.total_timeout_s <= 86400:
            raise ValueError(f"total_timeout_s: {self.total_timeout_s} is outside [timeout_s={self.timeout_s}, 86400]")
        check_ranges(self, retries="0..10", backoff_s="[0, 600]", max_bytes=f"1..{1 << 31}", max_redirects="0..30")
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


class Deadline:
    """A wall-clock limit that shuts down its sockets when it passes."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    @property
    def expired(self) -> bool:
        return self._expired or time.monotonic() >= self.end

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def add(self, sock: socket.socket) -> None:
        # A duplicate descriptor of the same connection: wrapping it in TLS detaches `sock` itself.
        dup = sock.dup()
        with self._lock:
            if self._expired:
                _shut(dup)
            self._sockets.append(dup)

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            for sock in self._sockets:
                _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def check(self, what: str = "transfer") -> None:
        if self.expired:
            raise DownloadError("timeout", f"{what} not finished within the total timeout ({self.seconds:g}s)")


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def connect_checked(host: str, port: int, options: DownloadOptions, timeout: float | None,
                    deadline: Deadline | None = None, source_address=None) -> socket.socket:
    """A socket connected to an address of `host` that passed `check_address` (resolved once)."""
    last: OSError | None = None
    for family, kind, proto, _, address in checked_addresses(host, port, options):
        if deadline is not None:
            deadline.check("connect")
            timeout = min(timeout or deadline.remaining(), deadline.remaining()) or 0.001
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            if deadline is not None:
                deadline.add(sock)
            _ORIGINAL_CONNECT(sock, address)
        except OSError as e:
            sock.close()
            last = e
            continue
        return sock
    raise last or OSError(f"no address for {host}")


def ssl_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """System trust plus `ca_bundle` (or `$SSL_CERT_FILE`); verification always on."""
    ctx = ssl.create_default_context()
    paths = ssl.get_default_verify_paths()
    for cafile in (paths.openssl_cafile, paths.cafile):
        if cafile and os.path.isfile(cafile):
            ctx.load_verify_locations(cafile=cafile)
    extra = ca_bundle or os.environ.get("SSL_CERT_FILE")
    if extra:
        try:
            ctx.load_verify_locations(cafile=extra)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"ca_bundle: cannot read the CA bundle {extra!r}: {e}") from e
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    return ctx


# ---- the in-thread guard for code we do not own (yt-dlp) ------------------------------------

_STATE = threading.local()
_ORIGINAL_CONNECT = socket.socket.connect
_ORIGINAL_GETADDRINFO = socket.getaddrinfo
_ORIGINAL_PUTREQUEST = http.client.HTTPConnection.putrequest
_ORIGINAL_SET_TUNNEL = http.client.HTTPConnection.set_tunnel
_INSTALL = threading.Lock()
_installed = False


class Guard:
    """What `guarded` watches in one thread: the options, the deadline, the names resolved, refusals."""

    def __init__(self, options: DownloadOptions, deadline: Deadline):
        self.options = options
        self.deadline = deadline
        self.names: dict[str, str] = {}
        self.refused: DownloadError | None = None

    def check(self, host: str, port: int | None = None, ip: str | None = None) -> str:
        """Checks `ip` for `host`, or else every address `host` resolves to; returns the address
        checked (the first answer, when `host` was resolved)."""
        try:
            if ip is None:
                return checked_addresses(host, port or 80, self.options)[0][4][0]
            check_address(host, ip, self.options)
            return ip
        except DownloadError as e:
            self.refused = e
            raise


def _active() -> Guard | None:
    return getattr(_STATE, "guard", None)


def _connect(self, address):
    guard = _active()
    if guard is not None and self.family in (socket.AF_INET, socket.AF_INET6):
        guard.deadline.check("connect")
        ip = address[0]
        guard.check(guard.names.get(ip.split("%", 1)[0], ip), ip=ip)
        guard.deadline.add(self)
    return _ORIGINAL_CONNECT(self, address)


def _getaddrinfo(host, port, *args, **kwargs):
    infos = _ORIGINAL_GETADDRINFO(host, port, *args, **kwargs)
    guard = _active()
    if guard is not None and isinstance(host, str):
        for info in infos:  # remember which name each address came from (allowed_hosts may name hosts)
            guard.names.setdefault(str(info[4][0]).split("%", 1)[0], host)
    return infos


def _putrequest(self, method, url, *args, **kwargs):
    guard = _active()
    if guard is not None and "://" in url[:10]:  # an absolute URL: a plain-http request via a proxy
        parts = urllib.parse.urlsplit(url)
        if parts.hostname:
            guard.check(parts.hostname, parts.port or 80)
    return _ORIGINAL_PUTREQUEST(self, method, url, *args, **kwargs)


def _set_tunnel(self, host, port=None, *args, **kwargs):
    guard = _active()
    if guard is not None:  # CONNECT through a proxy: the far end is resolved and checked here ...
        name, given = host, port
        if port is None and host.count(":") == 1:
            name, _, rest = host.partition(":")
            given = int(rest) if rest.isdigit() else None
        self._lwmkit_tunnel_ip = guard.check(name.strip("[]"), given or 443)
    return _ORIGINAL_SET_TUNNEL(self, host, port, *args, **kwargs)


def _pinned_tunnel(original):
    """... and the CONNECT line names that address: `_tunnel` (http.client's, or urllib3's own)
    writes `_tunnel_host` into it, so the name is swapped for the address just while it runs; the
    TLS handshake after it (SNI, certificate check) still uses the name."""

    def _tunnel(self):
        ip = getattr(self, "_lwmkit_tunnel_ip", None)
        if ip is None:
            return original(self)
        name = self._tunnel_host
        bare = ":" not in ip or hasattr(self, "_wrap_ipv6")  # Python 3.12+ and urllib3 add brackets
        self._tunnel_host = ip if bare else f"[{ip}]"
        try:
            return original(self)
        finally:
            self._tunnel_host = name

    _tunnel.lwmkit_pinned = True
    return _tunnel


def _pin_tunnels() -> None:
    """Wraps every `_tunnel` a connection class in use defines: http.client's, and urllib3's (which
    yt-dlp's requests handler uses) once it is imported."""
    classes = [http.client.HTTPConnection]
    urllib3_connection = sys.modules.get("urllib3.connection")
    if urllib3_connection is not None:
        classes.append(urllib3_connection.HTTPConnection)
    for cls in classes:
        tunnel = cls.__dict__.get("_tunnel")
        if tunnel is not None and not getattr(tunnel, "lwmkit_pinned", False):
            cls._tunnel = _pinned_tunnel(tunnel)


def _install() -> None:
    global _installed
    with _INSTALL:
        if not _installed:
            socket.socket.connect = _connect
            socket.getaddrinfo = _getaddrinfo
            http.client.HTTPConnection.putrequest = _putrequest
            http.client.HTTPConnection.set_tunnel = _set_tunnel
            _installed = True
        _pin_tunnels()


@contextlib.contextmanager
def guarded(options: DownloadOptions, deadline: Deadline) -> Iterator[Guard]:
    """Checks and times every connection this thread makes inside the block (see the docstring)."""
    _install()
    outer = _active()
    _STATE.guard = guard = Guard(options, deadline)
    try:
        yield guard
    finally:
        _STATE.guard = outer

