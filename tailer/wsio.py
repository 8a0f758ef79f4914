"""Every use the tailer makes of ``websockets`` beyond its documented API, in one place.

The fan-out is 3-4x a bare ``websockets.asyncio.server.broadcast`` because it
frames each message once (:mod:`tailer.frames`) and writes the same bytes to
every client's asyncio transport, under the connection's protocol object. That
leans on parts of ``websockets.asyncio.server.ServerConnection`` that are not
its documented API:

* ``connection.transport``: the asyncio transport (read, and replaced by a
  counting wrapper in :mod:`tailer.sessions`; websockets writes its own frames,
  pongs and close frames included, through whatever it holds);
* ``connection.protocol._state`` (what the ``state`` property returns): whether
  the connection is still ``OPEN``, so no frame follows a close frame;
* ``connection.drain()``: waits until the transport's buffer is below its
  low-water mark;
* ``ServerConnection`` is the asyncio ``Protocol``: a subclass may override
  ``connection_made``, ``data_received`` and ``connection_lost`` (the server
  does, to turn connections away and to drop peers that send but never read)
  as long as it calls ``super()``.

Callers go through the names below (:class:`RawConnection` for the subclass).
``tests/test_wsio.py`` pins each behaviour on the installed websockets, and
``pyproject.toml`` caps websockets below its next major version.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import OPEN, State

__all__ = ["OPEN", "RawConnection", "drain", "replace_transport", "state", "transport"]

#: The connection class the server subclasses for its asyncio ``Protocol`` methods.
RawConnection = ServerConnection


def transport(connection: ServerConnection) -> asyncio.Transport:
    """The asyncio transport under ``connection``: frames written to it go out as they are."""
    return connection.transport


def replace_transport(connection: ServerConnection, replacement: Any) -> None:
    """Put ``replacement`` (a transport wrapper) under ``connection``: all its writes go there."""
    connection.transport = replacement


#: ``state(connection)``: its protocol's state, ``OPEN`` until a close frame is sent or
#: received. A C-level getter of the attribute behind the ``Protocol.state`` property: no
#: Python frame on the live path, once per client (``tests/test_wsio.py`` pins that the two
#: agree through a close).
state: Callable[[ServerConnection], State] = operator.attrgetter("protocol._state")


async def drain(connection: ServerConnection) -> None:
    """Wait until ``connection``'s write buffer is below the transport's low-water mark.

    Raises:
        ConnectionClosed, OSError: the connection ended meanwhile.
    """
    await connection.drain()
