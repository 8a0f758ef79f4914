"""tailer.wsio: what the fan-out relies on beneath websockets' API holds on the installed version.

Each test runs a bare ``websockets`` server on port 0 (no tailer) and pins one
behaviour :mod:`tailer.wsio` names; a websockets release that changes it fails
here, not in the fan-out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tailer import wsio
from tailer.frames import text_frame
from tests._tailer_helpers import aio


async def _with_server(
    handler: Callable[[ServerConnection], Awaitable[None]],
    client: Callable[[Any], Awaitable[None]],
    **options: Any,
) -> None:
    async with serve(handler, "127.0.0.1", 0, compression=None, **options) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            await client(ws)


@aio(30)
async def test_frames_written_to_the_transport_arrive_as_messages() -> None:
    """Bytes from tailer.frames written to wsio.transport(connection) are messages to the client."""

    async def handler(connection: ServerConnection) -> None:
        wsio.transport(connection).write(text_frame(b"first") + text_frame(b"x" * 70_000))
        await connection.wait_closed()

    async def client(ws: Any) -> None:
        assert await ws.recv() == "first"
        assert await ws.recv() == "x" * 70_000

    await _with_server(handler, client)


@aio(30)
async def test_state_is_open_until_a_close_starts() -> None:
    """wsio.state is OPEN on an open connection and no longer once its close has begun.

    It reads the attribute behind websockets' documented ``protocol.state``: the two agree.
    """
    seen: list[bool] = []

    async def handler(connection: ServerConnection) -> None:
        seen.append(wsio.state(connection) is wsio.OPEN)
        assert wsio.state(connection) is connection.protocol.state
        closing = asyncio.ensure_future(connection.close(1000, "bye"))
        await asyncio.sleep(0)  # the close frame is sent: the state left OPEN
        seen.append(wsio.state(connection) is wsio.OPEN)
        assert wsio.state(connection) is connection.protocol.state
        await closing
        assert wsio.state(connection) is connection.protocol.state

    async def client(ws: Any) -> None:
        await ws.wait_closed()

    await _with_server(handler, client)
    assert seen == [True, False]


@aio(60)
async def test_drain_waits_until_the_client_has_read() -> None:
    """wsio.drain returns once the buffer is below the low-water mark, the client having read."""
    frames = text_frame(b"y" * 60_000) * 200  # 12 MB, far more than the socket buffers take
    after: list[int] = []

    async def handler(connection: ServerConnection) -> None:
        transport = wsio.transport(connection)
        transport.write(frames)
        assert transport.get_write_buffer_size() > 0
        await wsio.drain(connection)
        after.append(transport.get_write_buffer_size())
        await connection.wait_closed()

    async def client(ws: Any) -> None:
        for _ in range(200):
            assert len(await ws.recv()) == 60_000

    await _with_server(handler, client, write_limit=65536)
    low = 65536 // 4
    assert after and after[0] <= low


@aio(30)
async def test_a_replaced_transport_carries_websockets_own_frames() -> None:
    """After wsio.replace_transport, websockets writes its pongs and close frame through it."""
    written: list[bytes] = []

    class Counting:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def write(self, data: bytes) -> None:
            written.append(bytes(data))
            self.inner.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    async def handler(connection: ServerConnection) -> None:
        wsio.replace_transport(connection, Counting(wsio.transport(connection)))
        await connection.wait_closed()

    async def client(ws: Any) -> None:
        await asyncio.sleep(0.05)  # the handler has swapped the transport
        pong = await ws.ping(b"probe")
        await asyncio.wait_for(pong, 10)

    await _with_server(handler, client, ping_interval=None)
    assert any(b"probe" in chunk and chunk[0] == 0x8A for chunk in written)  # the pong
    assert any(chunk[0] == 0x88 for chunk in written)  # the close frame


@aio(30)
async def test_a_subclass_sees_raw_bytes_and_super_keeps_the_protocol() -> None:
    """A RawConnection subclass gets connection_made/data_received/connection_lost; super() works."""
    events: list[str] = []
    received: list[bytes] = []

    class Connection(wsio.RawConnection):
        def connection_made(self, transport: Any) -> None:
            events.append("made")
            super().connection_made(transport)

        def data_received(self, data: bytes) -> None:
            received.append(data)
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            events.append("lost")
            super().connection_lost(exc)

    async def handler(connection: ServerConnection) -> None:
        assert await connection.recv() == "hello"
        await connection.send("back")

    async def client(ws: Any) -> None:
        await ws.send("hello")
        assert await ws.recv() == "back"

    await _with_server(handler, client, create_connection=Connection)
    assert received and received[0].startswith(b"GET / HTTP/1.1\r\n")
    assert len(b"".join(received)) > len(received[0])  # the client's frames came through too
    await asyncio.sleep(0.05)
    assert events == ["made", "lost"]
