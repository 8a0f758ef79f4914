"""Hostile and careless clients against a real ``tailer serve``: it stays up, bounded, and fair."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests._reliability_helpers import (
    ResumingClient,
    file_truth,
    mib,
    raise_nofile,
    rss_of,
    strip_wire,
    wait_for,
)
from tests._tailer_helpers import Writer, aio, http_get, tailer_cli

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def _open_raw(
    port: int, path: str = "/"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket connection made by hand; returns once the server answered 101."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HANDSHAKE.format(path=path).encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
    assert head.startswith(b"HTTP/1.1 101"), head[:100]
    return reader, writer


def _masked(payload: bytes, opcode: int = 0x1) -> bytes:
    """A client frame (masked with a zero key, which RFC 6455 allows)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


@pytest.mark.slow
@aio(240)
async def test_a_thousand_careless_clients_do_not_hurt_honest_ones(tmp_path):
    """1,000 connections at once that vanish, never read, send garbage or 10 MB: honest clients get everything."""
    raise_nofile(8192)
    runs = tmp_path / "runs"
    runs.mkdir()
    w = Writer(runs, "live")
    w.message("start")
    async with tailer_cli(
        "serve", str(runs), "--port", "0", "--max-clients", "1100", "-q", log=tmp_path / "serve.log"
    ) as (proc, port, _):
        rss_start = rss_of(proc.pid)
        honest = [
            ResumingClient(lambda s: f"ws://127.0.0.1:{port}/experiments/live?since={s}", "live"),
            ResumingClient(lambda s: f"ws://127.0.0.1:{port}/?experiment=live&since={s}", "live"),
        ]
        for c in honest:
            c.start()
        stop = asyncio.Event()

        async def write() -> None:  # about 1,000 lines of ~300 bytes a second, all along
            i = 0
            while not stop.is_set():
                for _ in range(20):
                    w.message("batch_metrics", {"i": i, "pad": "z" * 200})
                    i += 1
                await asyncio.sleep(0.02)

        writing = asyncio.create_task(write())
        try:
            started = time.monotonic()
            paths = ["/", "/?experiment=live", "/experiments/live?since=-1"]
            crowd = await asyncio.gather(*(_open_raw(port, paths[i % 3]) for i in range(1000)))
            print(f"1,000 handshakes in {time.monotonic() - started:.2f} s")
            rss_crowd = rss_of(proc.pid)
            # A quarter vanish at once (abort: RST, no close frame).
            for _, writer in crowd[:250]:
                writer.transport.abort()
            # A quarter send garbage bytes, a quarter a valid but oversized 10 MB frame
            # (10 of them really send it all), the rest never read anything.
            for _, writer in crowd[250:500]:
                writer.write(os.urandom(64) + b"\r\n\r\n")
            big = _masked(b"x" * (10 << 20))
            for _, writer in crowd[500:510]:
                writer.write(big)
            for _, writer in crowd[510:750]:
                writer.write(_masked(b"y" * 70_000))
            await asyncio.sleep(3)  # lines keep flowing to the never-readers
            rss_loaded = rss_of(proc.pid)
            assert (await http_get(port, "/healthz"))[0] == 200
            for _, writer in crowd[250:]:
                writer.transport.abort()
            await asyncio.sleep(1)
        finally:
            stop.set()
            await writing
        truth = file_truth(w.path)
        await wait_for(lambda: all(c.last_seq >= max(truth) for c in honest), 60, "honest clients")
        for c in honest:
            await c.stop()
        rss_end = rss_of(proc.pid)
        assert proc.returncode is None
        _, _, body = await http_get(port, "/api/experiments")
        assert orjson.loads(body)[0]["messages"] == len(truth)
    print(
        f"tailer RSS: start {mib(rss_start)}, 1,000 clients {mib(rss_crowd)}, "
        f"under abuse {mib(rss_loaded)}, end {mib(rss_end)}; {len(truth)} lines streamed"
    )
    for c in honest:
        seqs = [m["seq"] for m in c.received]
        assert seqs == sorted(truth), "an honest client missed or repeated a line"
        assert all(strip_wire(m) == truth[m["seq"]] for m in c.received)
    # What waits for clients is bounded by --max-queued-bytes (256 MiB by default), closing
    # clients included; the rest is 1,000 connections' own state (about 70 MiB).
    assert rss_loaded - rss_start < 640 << 20, mib(rss_loaded - rss_start)
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


@aio(60)
async def test_refused_handshakes_do_not_use_up_client_slots(tmp_path):
    """Handshakes websockets refuses after our checks (bad key, version, Connection) free their slot."""
    import gc

    from tailer.server import serve_directory
    from tests._tailer_helpers import ws_connect, ws_status

    bad = [
        HANDSHAKE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
        HANDSHAKE.replace("Version: 13", "Version: 8"),
        HANDSHAKE.replace("Connection: Upgrade", "Connection: keep-alive"),
    ]
    gc.disable()  # slots must not depend on when the cyclic collector happens to run
    try:
        async with serve_directory(tmp_path, port=0, max_clients=3) as app:
            for i in range(30):
                reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
                writer.write(bad[i % 3].format(path="/").encode())
                status = await asyncio.wait_for(reader.readline(), 10)
                assert status.split()[1] in (b"400", b"426"), status
                writer.close()
            async with ws_connect(app.ws_url), ws_connect(app.ws_url), ws_connect(app.ws_url):
                assert await ws_status(app.ws_url) == 503  # the limit itself still holds
            await asyncio.sleep(0.2)
            assert await ws_status(app.ws_url) == 101
    finally:
        gc.enable()


@aio(90)
async def test_a_ping_flood_from_a_client_that_never_reads_is_cut_off(tmp_path):
    """Pings answered with pongs the peer never reads: the connection is dropped, memory stays bounded."""
    import socket

    async with tailer_cli(
        "serve", str(tmp_path), "--port", "0", "-q", log=tmp_path / "serve.log"
    ) as (
        proc,
        port,
        _,
    ):
        rss_start = rss_of(proc.pid)

        def flood() -> int:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(HANDSHAKE.format(path="/?experiment=quiet").encode())
            assert sock.recv(12) == b"HTTP/1.1 101"
            ping = _masked(b"p" * 125, opcode=0x9)
            chunk = ping * 8000  # about 1 MB of pings, each answered with a pong
            sent = 0
            try:
                while sent < 300 << 20:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:  # reset by the server: what we want
                pass
            finally:
                sock.close()
            return sent

        sent = await asyncio.to_thread(flood)
        rss_end = rss_of(proc.pid)
        assert (await http_get(port, "/healthz"))[0] == 200
    print(
        f"ping flood: {mib(sent)} sent before the cut; tailer RSS {mib(rss_start)} -> {mib(rss_end)}"
    )
    assert sent < 300 << 20, "the server kept answering a peer that never reads"
    assert rss_end - rss_start < 100 << 20


@pytest.mark.slow
@aio(120)
async def test_max_clients_is_reachable_under_a_low_open_file_limit(tmp_path):
    """Started with ulimit -n 128 and --max-clients 300: 250 clients connect, lines still flow, no EMFILE."""
    import resource

    from tests._tailer_helpers import recv_json, ws_connect

    def low_soft_limit() -> None:  # runs in the child: a distribution's default soft limit, lower
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"hard open-file limit {hard} is too low to raise")
    raise_nofile(2048)
    crowd = []
    args = ("serve", str(tmp_path), "--port", "0", "--max-clients", "300")
    async with tailer_cli(*args, log=tmp_path / "serve.log", preexec_fn=low_soft_limit) as (
        _,
        port,
        _,
    ):
        try:
            w = Writer(tmp_path, "live")
            async with ws_connect(f"ws://127.0.0.1:{port}/experiments/live") as honest:
                crowd = [await _open_raw(port) for _ in range(250)]
                w.message("m", {"i": 0})
                assert (await recv_json(honest, timeout=10))["data"]["i"] == 0
                assert (await http_get(port, "/healthz"))[0] == 200
        finally:
            for _, writer in crowd:
                writer.transport.abort()
    text = (tmp_path / "serve.log").read_text()
    assert "Too many open files" not in text, text[-2000:]


def _listen_overflows() -> int:
    """The kernel's count of connections dropped because a listening socket's queue was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    raise AssertionError("no TcpExt counters in /proc/net/netstat")


@aio(timeout=120)
async def test_a_herd_of_connections_the_loop_cannot_accept_yet_waits_in_the_kernel(tmp_path):
    """300 clients connecting while the tailer cannot accept are queued, not dropped.

    Every dashboard reconnecting at once after a restart, or a loop busy for a
    moment: the kernel holds connections the tailer has not accepted yet in
    the listening socket's queue. A queue shorter than the herd drops the
    rest (``ListenOverflows``), and those clients wait for retransmissions
    (1 s, 3 s, 7 s...) or are reset once the handshake times out.
    """
    if not sys.platform.startswith("linux"):
        pytest.skip("reads Linux's /proc/net/netstat")
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    if somaxconn < 1024:
        pytest.skip(f"net.core.somaxconn is {somaxconn}: the kernel caps every queue there")
    raise_nofile(4096)
    runs = tmp_path / "runs"
    runs.mkdir()
    Writer(runs, "live").message("start")
    async with tailer_cli("serve", str(runs), "--port", "0", "-q", log=tmp_path / "serve.log") as (
        proc,
        port,
        _,
    ):
        before = _listen_overflows()
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            herd = [asyncio.ensure_future(_open_raw(port, "/?experiment=live")) for _ in range(300)]
            await asyncio.sleep(1.0)  # every SYN answered or dropped by the kernel
            dropped = _listen_overflows() - before
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        try:
            assert dropped == 0
            connections = await asyncio.gather(*herd)  # each one answered 101
        finally:
            for task in herd:
                task.cancel()
            for task in herd:
                if task.done() and not task.cancelled() and task.exception() is None:
                    task.result()[1].transport.abort()
    assert len(connections) == 300
