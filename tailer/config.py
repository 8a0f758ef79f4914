"""Every ``TAILER_*`` environment variable is read here, and only here.

Defaults live in the signatures of :func:`tailer.server.serve_directory` and in
the argparse options; this module turns the environment into overrides of
those defaults so the rest of the package never touches ``os.environ``.

=========================  ==========================================  =========
variable                   meaning                                     default
=========================  ==========================================  =========
``TAILER_TOKEN``           token every request must carry              none
``TAILER_HOST``            address to bind                             127.0.0.1
``TAILER_PORT``            port to bind                                8765
``TAILER_ALLOW_ORIGINS``   extra allowed ``Origin`` values, commas      none
``TAILER_ALLOW_HOSTS``     extra allowed ``Host`` names, commas         none
``TAILER_MAX_CLIENTS``     WebSocket connections at once               1000
``TAILER_QUEUE_BYTES``     per-client send queue before closing 1013   4 MiB
``TAILER_MAX_QUEUED_BYTES`` bytes queued for all clients together     256 MiB
``TAILER_SCAN_INTERVAL``   seconds between safety size checks          1.0
=========================  ==========================================  =========
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_HANDSHAKES",
    "DEFAULT_MAX_QUEUED_BYTES",
    "DEFAULT_PORT",
    "DEFAULT_QUEUE_BYTES",
    "DEFAULT_SCAN_INTERVAL",
    "NetworkOptions",
    "env_float",
    "env_int",
    "env_list",
    "env_str",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_CLIENTS = 1000
DEFAULT_MAX_HANDSHAKES = 1024
DEFAULT_QUEUE_BYTES = 4 << 20
DEFAULT_MAX_QUEUED_BYTES = 256 << 20
DEFAULT_SCAN_INTERVAL = 1.0


@dataclass(frozen=True)
class NetworkOptions:
    """Where a tailer listens and whom it lets in (``serve`` and ``replay`` alike).

    Its fields are the network keywords of :func:`tailer.server.serve_directory`
    and :func:`tailer.server.serve_replay` (the CLI passes ``**vars(options)``).
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: Every request must carry it (``None``: no token; never empty).
    token: str | None = None
    #: Extra ``Origin`` values accepted (``*``: any).
    allow_origins: tuple[str, ...] = ()
    #: Extra ``Host`` names accepted (``*``: any).
    allow_hosts: tuple[str, ...] = ()
    #: WebSocket connections at once.
    max_clients: int = DEFAULT_MAX_CLIENTS

    def __post_init__(self) -> None:
        if self.token == "":
            raise ValueError("an empty token would turn authentication off; pass None for none")


def env_str(name: str, default: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """``TAILER_<name>`` if set and not empty, else ``default``."""
    value = (os.environ if environ is None else environ).get(f"TAILER_{name}", "")
    return value if value != "" else default


def env_int(name: str, default: int, environ: Mapping[str, str] | None = None) -> int:
    """``TAILER_<name>`` as an int; a bad value raises ``ValueError`` naming the variable."""
    value = env_str(name, None, environ)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"TAILER_{name}={value!r} is not an integer") from None


def env_float(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """``TAILER_<name>`` as a float; a bad value raises ``ValueError`` naming the variable."""
    value = env_str(name, None, environ)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"TAILER_{name}={value!r} is not a number") from None


def env_list(name: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """``TAILER_<name>`` split on commas, blanks dropped."""
    value = env_str(name, None, environ) or ""
    return [part.strip() for part in value.split(",") if part.strip()]
