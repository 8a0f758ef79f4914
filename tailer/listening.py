"""The listening socket: which addresses, who gets in, and the URLs that answer (DESIGN §12).

* :func:`listen_socket`: ``--host ::`` (or ``""``) is one IPv6 socket with
  ``IPV6_V6ONLY`` off, so IPv4 clients (``127.0.0.1``) reach it too; asyncio
  would turn ``V6ONLY`` on and leave IPv4 refused.
* :data:`BACKLOG`: every listening socket's queue of connections the kernel
  completed and the tailer has not accepted yet is as long as the kernel
  allows (``net.core.somaxconn``, 4096 by default), not asyncio's 100: a herd
  of reconnecting clients, or a loop busy for a moment, leaves them waiting
  there instead of dropped (their SYNs retried after 1, 3, 7 s..., or reset
  once the handshake times out).
* :class:`Admission`: connections still in the handshake are capped (they
  also time out, websockets' ``open_timeout``), and so are all connections
  together, below the open-file limit with :data:`RESERVED_FDS` to spare:
  a crowd of idle TCP connections is turned away at the door instead of
  taking the descriptors that reading run files needs, so connected
  clients keep getting their lines.
* :class:`AcceptErrors`: asyncio reports every failed ``accept()`` (EMFILE...)
  with a traceback; this logs one line a second at most.
* :func:`other_urls`: for a wildcard host, the machine's own addresses, so
  the URLs printed at start are ones that answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "BACKLOG",
    "RESERVED_FDS",
    "AcceptErrors",
    "Admission",
    "Every",
    "listen_socket",
    "open_file_limit",
    "other_urls",
]

log = logging.getLogger("tailer")

#: Descriptors kept free of connections: run files, inotify, the listening socket.
RESERVED_FDS = 64

WILDCARDS = ("", "0.0.0.0", "::")

#: Asked of ``listen()``; the kernel caps it at ``net.core.somaxconn``.
BACKLOG = socket.SOMAXCONN


class Every:
    """True at most once per ``seconds`` (rate-limited logging)."""

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = seconds
        self._last = -float("inf")
        self.suppressed = 0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.seconds:
            self._last = now
            return True
        self.suppressed += 1
        return False


def open_file_limit() -> int | None:
    """The soft ``RLIMIT_NOFILE`` (None: unlimited or unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


class Admission:
    """Counts open connections and those still in the handshake; turns away the excess."""

    def __init__(self, *, max_clients: int, max_handshakes: int) -> None:
        self.max_handshakes = max_handshakes
        self.limit = max_clients + max_handshakes
        soft = open_file_limit()
        if soft is not None:
            self.limit = max(1, min(self.limit, soft - RESERVED_FDS))
        self.open = 0
        self.handshaking: set[object] = set()
        self._warn = Every(1.0)

    def admit(self, connection: object) -> bool:
        """Count a new TCP connection; False if it must be closed at once."""
        self.open += 1
        self.handshaking.add(connection)
        if len(self.handshaking) <= self.max_handshakes and self.open <= self.limit:
            return True
        if self._warn():
            log.warning(
                "turning connections away: %d open, %d in the handshake "
                "(limits %d and %d; %d more turned away since the last warning)",
                self.open - 1,
                len(self.handshaking) - 1,
                self.limit,
                self.max_handshakes,
                self._warn.suppressed,
            )
            self._warn.suppressed = 0
        return False

    def handshake_done(self, connection: object) -> None:
        self.handshaking.discard(connection)

    def closed(self, connection: object) -> None:
        self.open -= 1
        self.handshaking.discard(connection)


class AcceptErrors:
    """An event-loop exception handler that logs failed ``accept()`` calls once a second.

    asyncio pauses accepting for a second after EMFILE/ENFILE/ENOBUFS/ENOMEM
    and reports each failure with a traceback; everything else goes to the
    handler that was there before.
    """

    def __init__(
        self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None
    ) -> None:
        self.previous = previous
        self._warn = Every(1.0)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            if self._warn():
                log.warning(
                    "cannot accept connections: %s (%d more since the last warning)",
                    context.get("exception"),
                    self._warn.suppressed,
                )
                self._warn.suppressed = 0
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


def listen_socket(host: str, port: int, backlog: int = BACKLOG) -> socket.socket | None:
    """A dual-stack socket for ``::`` or ``""`` (None for other hosts, or without IPv6)."""
    if host not in ("", "::") or not socket.has_ipv6:
        return None
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:  # IPv6 disabled in this kernel: the caller binds 0.0.0.0
        return None
    try:
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _ipv4_addresses() -> list[str]:
    """Every interface's IPv4 address (Linux ``SIOCGIFADDR``), loopback excluded."""
    import fcntl

    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):
                packed = fcntl.ioctl(
                    probe.fileno(), 0x8915, struct.pack("256s", name[:15].encode())
                )
                found.append(socket.inet_ntoa(packed[20:24]))
    return found


def _ipv6_addresses() -> list[str]:
    """Global IPv6 addresses from ``/proc/net/if_inet6`` (link-local ones need a scope)."""
    found = []
    with contextlib.suppress(OSError), open("/proc/net/if_inet6") as table:
        for row in table:
            raw = row.split()[0]
            found.append(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    return found


def machine_addresses(ipv6: bool) -> list[str]:
    """This machine's addresses that a wildcard bind answers on, loopback and link-local excluded."""
    candidates: list[str] = []
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, ImportError):
            candidates += _ipv4_addresses()
        if ipv6:
            candidates += _ipv6_addresses()
    else:  # pragma: no cover - elsewhere, what the host name resolves to
        with contextlib.suppress(OSError):
            for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
                candidates.append(str(sockaddr[0]))
    out: list[str] = []
    for text in candidates:
        try:
            address = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if address.is_loopback or address.is_link_local or address.is_unspecified:
            continue
        if address.version == 6 and not ipv6:
            continue
        if str(address) not in out:
            out.append(str(address))
    return out


def other_urls(host: str, port: int, dual_stack: bool) -> list[str]:
    """``http://ADDRESS:port/`` for each of this machine's addresses when ``host`` is a wildcard."""
    if host not in WILDCARDS:
        return []
    urls = []
    for address in machine_addresses(ipv6=host != "0.0.0.0" and dual_stack):
        shown = f"[{address}]" if ":" in address else address
        urls.append(f"http://{shown}:{port}/")
    return urls
