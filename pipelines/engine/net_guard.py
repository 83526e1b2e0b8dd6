"""The socket layer of the URL guard: pinned, checked connections, a wall-clock deadline, TLS trust.

Three things both downloaders share, below HTTP:

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
  checked too. Other threads and code outside the block are untouched.

`ssl_context(ca_bundle)` is the TLS trust of every https fetch: the system store, plus the PEM
bundle named by `ca_bundle` or the `SSL_CERT_FILE` environment variable; verification and host
name checks are always on (there is no option that turns them off).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator

from lwmkit.pipelines.engine.url_guard import (
    DownloadError,
    DownloadOptions,
    check_address,
    checked_addresses,
)


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

    def check(self, host: str, port: int | None = None, ip: str | None = None) -> None:
        try:
            if ip is None:
                checked_addresses(host, port or 80, self.options)
            else:
                check_address(host, ip, self.options)
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
    if guard is not None:  # CONNECT through a proxy: the tunnel's far end is checked by name
        name, given = host, port
        if port is None and host.count(":") == 1:
            name, _, rest = host.partition(":")
            given = int(rest) if rest.isdigit() else None
        guard.check(name.strip("[]"), given or 443)
    return _ORIGINAL_SET_TUNNEL(self, host, port, *args, **kwargs)


def _install() -> None:
    global _installed
    with _INSTALL:
        if not _installed:
            socket.socket.connect = _connect
            socket.getaddrinfo = _getaddrinfo
            http.client.HTTPConnection.putrequest = _putrequest
            http.client.HTTPConnection.set_tunnel = _set_tunnel
            _installed = True


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

