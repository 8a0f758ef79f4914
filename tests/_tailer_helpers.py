"""Helpers for the tailer's tests: an in-process server, a writer, small async clients."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from recorder.format import encode_message
from tailer import eventloop

ROOT = Path(__file__).resolve().parents[1]


#: The event loop async tests run on (``tailer.eventloop``): ``auto``, as ``tailer serve``
#: does (uvloop when installed); ``RUNTAIL_TEST_LOOP=asyncio`` runs them on asyncio's own.
TEST_LOOP = os.environ.get("RUNTAIL_TEST_LOOP", "auto")


def aio(timeout: float = 60.0) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., None]]:
    """Run an ``async def`` test on a new event loop, bounded by ``timeout`` seconds."""

    def decorate(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            eventloop.run(asyncio.wait_for(fn(*args, **kwargs), timeout), TEST_LOOP)

        return wrapper

    return decorate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Writer:
    """Appends to ``<dir>/<id>.jsonl`` like the recorder: one ``os.write`` per line on ``O_APPEND``."""

    def __init__(self, directory: Path, experiment_id: str) -> None:
        self.path = Path(directory) / f"{experiment_id}.jsonl"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def message(self, type: str = "epoch_end", data: Any = None, **extra: Any) -> bytes:
        line = encode_message(type, {} if data is None else data, extra=extra or None)
        os.write(self.fd, line)
        return line

    def many(self, n: int, start: int = 0, type: str = "batch_metrics") -> None:
        chunk = b"".join(encode_message(type, {"step": start + i, "loss": 0.5}) for i in range(n))
        os.write(self.fd, chunk)

    def raw(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        os.close(self.fd)


async def recv_json(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    """The next message, decoded (fails the test after ``timeout`` seconds)."""
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_n(ws: ClientConnection, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        return [orjson.loads(await ws.recv()) for _ in range(n)]

    return await asyncio.wait_for(go(), timeout)


async def assert_silent(ws: ClientConnection, seconds: float = 0.3) -> None:
    """Nothing arrives within ``seconds``."""
    try:
        message = await asyncio.wait_for(ws.recv(), seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message {message!r}")


def ws_connect(url: str, **kwargs: Any) -> connect:
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("max_size", None)
    return connect(url, **kwargs)


async def http_get(
    port: int,
    target: str,
    headers: dict[str, str] | None = None,
    *,
    host: str | None = None,
    upgrade: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 GET (no client library rewriting the target or headers).

    ``upgrade=True`` sends a WebSocket handshake; a 101 answer returns at once.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {target} HTTP/1.1", f"Host: {host if host is not None else f'127.0.0.1:{port}'}"]
    if upgrade:
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
    else:
        lines.append("Connection: close")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    body = b""
    if not head.startswith(b"HTTP/1.1 101"):
        body = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head = head[:-4]
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, body


async def ws_status(url: str, **kwargs: Any) -> int:
    """The HTTP status a WebSocket handshake gets (101 if it is accepted)."""
    from websockets.exceptions import InvalidStatus

    try:
        async with ws_connect(url, **kwargs):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


#: The line ``tailer serve``/``replay`` prints once it listens (both ports must agree).
URL = re.compile(r"on http://127\.0\.0\.1:(\d+)/\S* \(ws://127\.0\.0\.1:(\d+)/\)")


@contextlib.asynccontextmanager
async def tailer_cli(*args: str, log: Path, env: dict[str, str] | None = None, preexec_fn=None):
    """Start ``python -m tailer ARGS``; yield (process, port, line) once it printed its URL.

    stderr goes to ``log``; the process is killed at the end if it still runs.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TAILER_")}
    environment.update(PYTHONUNBUFFERED="1", **(env or {}))
    with open(log, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tailer",
            *args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env=environment,
            preexec_fn=preexec_fn,
        )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        match = URL.search(line)
        assert match, f"no startup line: {line!r}; stderr: {log.read_text()[-2000:]}"
        assert match.group(1) == match.group(2) != "0"
        yield proc, int(match.group(1)), line
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
