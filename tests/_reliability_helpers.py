"""Helpers for the reliability tests: writer processes, what a file holds, resuming clients.

The server fixtures themselves are the tailer's (:mod:`tests._tailer_helpers`
for in-process servers, ``tailer_cli()`` in :mod:`tests._tailer_helpers` for the
real ``python -m tailer`` subprocess); this module adds what fault tests need
on top: writer subprocesses at a fixed rate, the ground truth of a run file
(which ``seq`` holds which valid message), a client that reconnects with
``since`` after every drop, and polling instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from recorder.format import MalformedLine, decode_line
from tests._tailer_helpers import ROOT, ws_connect

#: A MetricsRecorder writing ``n`` messages at ``rate`` per second to ``<dir>/<id>.jsonl``.
#: argv: log_dir experiment_id writer_name n rate pad_bytes. Prints ``lost=<n>`` at the end.
WRITER_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from recorder import MetricsRecorder
log_dir, exp, name, n, rate, pad = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
padding = "p" * pad
rec = MetricsRecorder(log_dir, exp, resume=True)
t0 = time.perf_counter()
for i in range(n):
    rec.record("batch_metrics", {{"writer": name, "i": i, "loss": 1.0 / (i + 1), "pad": padding}})
    if rate > 0:
        delay = t0 + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
lost = rec.lost
rec.close()
print(f"lost={{lost}}", flush=True)
"""


def write_script(directory: Path, name: str = "writer.py", text: str = WRITER_SCRIPT) -> Path:
    """Write a script template (formatted with the repository root) and return its path."""
    path = Path(directory) / name
    path.write_text(text.format(root=str(ROOT)))
    return path


def start_writer(
    script: Path,
    log_dir: Path,
    experiment_id: str,
    name: str,
    n: int,
    rate: float,
    *,
    pad: int = 0,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start one writer process (see :data:`WRITER_SCRIPT`)."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(log_dir),
            experiment_id,
            name,
            str(n),
            str(rate),
            str(pad),
        ],
        **popen,
    )


def kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL and reap every process still running (cleanup in ``finally``)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def file_truth(path: Path) -> dict[int, dict[str, Any]]:
    """``seq -> message`` for every valid complete line of a run file, numbered as DESIGN says.

    Every complete line counts in ``seq``; malformed ones and a torn last line
    are left out (the torn one has no ``seq`` yet).
    """
    raw = Path(path).read_bytes()
    lines = raw.split(b"\n")[:-1]  # the part after the last newline is not a line yet
    truth: dict[int, dict[str, Any]] = {}
    for seq, line in enumerate(lines):
        try:
            truth[seq] = decode_line(line)
        except MalformedLine:
            continue
    return truth


def strip_wire(frame: dict[str, Any]) -> dict[str, Any]:
    """A received frame without the two keys the tailer splices in."""
    return {k: v for k, v in frame.items() if k not in ("experiment_id", "seq")}


async def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


class ResumingClient:
    """Follows one experiment and reconnects with ``since=<last seq>`` after every drop.

    ``received`` keeps every message frame in arrival order (``log_reset`` and
    other control frames go to ``control``), so duplicates and gaps show.
    ``segments`` splits them at every ``log_reset`` and at every normal close
    (1000: the file was deleted); numbering starts again in a new segment, so
    a reconnection resumes from the current segment's last ``seq``.
    ``url_of(since)`` builds the URL for each (re)connection; ``port_of()``
    may change between connections (a restarted server).
    """

    def __init__(self, url_of: Callable[[int], str], experiment_id: str) -> None:
        self.url_of = url_of
        self.experiment_id = experiment_id
        self.received: list[dict[str, Any]] = []
        self.control: list[dict[str, Any]] = []
        self.segments: list[list[dict[str, Any]]] = [[]]
        self.connections = 0
        self.drops = 0
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    @property
    def last_seq(self) -> int:
        current = self.segments[-1]
        return current[-1]["seq"] if current else -1

    def _new_segment(self) -> None:
        if self.segments[-1]:
            self.segments.append([])

    def start(self) -> ResumingClient:
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        self.stopping = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        while not self.stopping:
            try:
                async with ws_connect(self.url_of(self.last_seq), open_timeout=5) as ws:
                    self.connections += 1
                    async for raw in ws:
                        message = orjson.loads(raw)
                        if "seq" in message:
                            self.received.append(message)
                            self.segments[-1].append(message)
                        else:
                            self.control.append(message)
                            if message.get("type") == "log_reset":
                                self._new_segment()
                if ws.close_code == 1000:
                    self._new_segment()
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidStatus, TimeoutError):
                pass
            self.drops += 1
            await asyncio.sleep(0.1)


def rss_of(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    import psutil

    return psutil.Process(pid).memory_info().rss


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def raise_nofile(want: int) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards ``want``; return the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def env_without_tailer() -> dict[str, str]:
    """The environment minus any ``TAILER_*`` the developer may have set."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TAILER_")}


async def never_reading_client(port: int) -> asyncio.StreamWriter:
    """A firehose client with a small receive buffer that never reads what it is sent."""
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    return writer
