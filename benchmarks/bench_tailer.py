"""Benchmarks of ``tailer serve``: latency, fan-out, history catch-up, memory.

Run from the repository root::

    .venv/bin/python benchmarks/bench_tailer.py            # everything, 1 GB memory run
    .venv/bin/python benchmarks/bench_tailer.py --quick    # smaller sizes, a few minutes less

The tailer runs as a real ``python -m tailer serve`` subprocess; clients run
here. Fan-out is compared with a bare ``websockets.asyncio.server.broadcast``
loop measured in the same run on the same messages. Clients that count
messages are raw asyncio protocols (they count ``"seq":`` markers at C speed)
so that the client side never limits the figures. Every figure is the median
of the repeats; big files are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import psutil  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from recorder.format import encode_message, wire_payload  # noqa: E402

MARKER = b'"seq":'
URL = re.compile(rb"http://127\.0\.0\.1:(\d+)/")


# --------------------------------------------------------------------------- processes


class Tailer:
    """``python -m tailer serve DIR --port 0`` in a subprocess (from the source tree ``root``)."""

    def __init__(self, directory: Path, *extra: str, root: Path = ROOT) -> None:
        self.directory = directory
        self.extra = extra
        self.root = root

    def __enter__(self) -> Tailer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAILER_")}
        env["PYTHONPATH"] = str(self.root)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tailer",
                "serve",
                str(self.directory),
                "--port",
                "0",
                "-q",
                *self.extra,
            ],
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        started = time.monotonic()
        line = self.proc.stdout.readline()
        self.startup_s = time.monotonic() - started
        match = URL.search(line)
        if not match:
            raise RuntimeError(f"tailer did not start: {line!r}")
        self.port = int(match.group(1))
        self.ps = psutil.Process(self.proc.pid)
        return self

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def wait_idle(self, timeout: float = 300.0) -> None:
        """Until the tailer used under 5 % of a CPU for half a second (its start-up is over)."""
        deadline = time.monotonic() + timeout
        self.ps.cpu_percent()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if self.ps.cpu_percent() < 5:
                return

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


BASELINE = textwrap.dedent(
    """
    import asyncio, sys, time
    from websockets.asyncio.server import serve, broadcast
    frames = open(sys.argv[1], "rb").read().split(b"\\n")
    want = int(sys.argv[2])
    clients = set()
    ready = asyncio.Event()
    async def handler(ws):
        clients.add(ws)
        if len(clients) >= want:
            ready.set()
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)
    async def main():
        async with serve(handler, "127.0.0.1", 0, compression=None, max_size=4096) as server:
            print(server.sockets[0].getsockname()[1], flush=True)
            await ready.wait()
            await asyncio.sleep(0.5)
            print(time.monotonic_ns(), flush=True)
            for frame in frames:
                broadcast(clients, frame, text=True)
            await asyncio.sleep(3600)
    asyncio.run(main())
    """
)


# --------------------------------------------------------------------------- raw client


class RawClient(asyncio.Protocol):
    """A minimal WebSocket client that only counts the messages it receives."""

    def __init__(self, path: str, target: int) -> None:
        self.path = path
        self.target = target
        self.count = 0
        self.head = b""
        self.open = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()
        # Runs that stop their clients on purpose never await ``done``: mark a
        # close as seen so asyncio does not log it as a lost exception.
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.tail = b""
        self.finished_ns = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        if not self.open.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.open.set_exception(RuntimeError(self.head[:100]))
                return
            self.open.set_result(None)
            data = self.head[end + 4 :]
        combined = self.tail + data if self.tail else data
        self.count += combined.count(MARKER)
        self.tail = combined[-(len(MARKER) - 1) :]
        if self.count >= self.target and not self.done.done():
            self.finished_ns = time.monotonic_ns()
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(f"closed after {self.count} messages"))


async def raw_clients(port: int, path: str, n: int, target: int) -> list[RawClient]:
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(n):
        _, client = await loop.create_connection(lambda: RawClient(path, target), "127.0.0.1", port)
        clients.append(client)
    await asyncio.gather(*(c.open for c in clients))
    return clients


# --------------------------------------------------------------------------- benchmarks


def bench_latency(tmp: Path, seconds: float) -> dict[str, float]:
    """write -> client latency, one message every 10 ms, MetricsRecorder-style appends."""
    run = tmp / "latency"
    run.mkdir()
    try:
        from recorder import MetricsRecorder

        recorder = MetricsRecorder(run, "lat")

        def record(step: int) -> None:
            recorder.record("batch_metrics", {"step": step, "t": time.monotonic_ns(), "loss": 0.5})

        close = recorder.close
    except ImportError:  # before recorder.MetricsRecorder existed: the same append by hand
        fd = os.open(run / "lat.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

        def record(step: int) -> None:
            os.write(
                fd,
                encode_message(
                    "batch_metrics", {"step": step, "t": time.monotonic_ns(), "loss": 0.5}
                ),
            )

        def close() -> None:
            os.close(fd)

    latencies: list[float] = []

    async def main(port: int) -> None:
        async with connect(f"ws://127.0.0.1:{port}/?experiment=lat", compression=None) as ws:
            stop = threading.Event()

            def write() -> None:
                i = 0
                while not stop.is_set():
                    record(i)
                    i += 1
                    time.sleep(0.01)

            writer = threading.Thread(target=write)
            writer.start()
            deadline = time.monotonic() + seconds
            try:
                while time.monotonic() < deadline:
                    message = await asyncio.wait_for(ws.recv(decode=False), 5)
                    now = time.monotonic_ns()
                    latencies.append((now - orjson.loads(message)["data"]["t"]) / 1e6)
            finally:
                stop.set()
                writer.join()

    with Tailer(run) as tailer:
        before = tailer.ps.cpu_times()
        asyncio.run(main(tailer.port))
        after = tailer.ps.cpu_times()
    close()
    cpu = (after.user + after.system) - (before.user + before.system)
    latencies = latencies[20:]  # warm-up
    qs = statistics.quantiles(latencies, n=100)
    return {
        "messages": len(latencies),
        # CPU the tailer spent per message (read, validate, frame, send, plus idle upkeep):
        # the part of the latency that is the tailer's work rather than the scheduler's.
        "tailer_cpu_us_per_msg": cpu / len(latencies) * 1e6,
        "load_avg_1m": os.getloadavg()[0],
        "p50_ms": qs[49],
        "p90_ms": qs[89],
        "p99_ms": qs[98],
        "max_ms": max(latencies),
    }


def _fanout_lines(n: int) -> list[bytes]:
    lines = [
        encode_message(
            "batch_metrics",
            {"step": i, "batch_idx": i % 100, "loss": 0.123456, "accuracy": 0.98765, "epoch": 3},
            timestamp="2025-01-01T00:00:00.000000Z",
        )
        for i in range(n)
    ]
    return lines


def bench_fanout(tmp: Path, clients: int, messages: int) -> dict[str, float]:
    """Deliveries/s of ~200 B messages to `clients` clients: tailer vs a bare broadcast loop."""
    lines = _fanout_lines(messages)
    size = statistics.mean(len(wire_payload(line, "fan", i)) for i, line in enumerate(lines))
    frames_file = tmp / "frames.txt"
    frames_file.write_bytes(
        b"\n".join(wire_payload(line, "fan", i) for i, line in enumerate(lines))
    )

    # Baseline: websockets' broadcast() of the same frames.
    proc = subprocess.Popen(
        [sys.executable, "-c", BASELINE, str(frames_file), str(clients)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        port = int(proc.stdout.readline())

        async def baseline() -> tuple[float, int]:
            conns = await raw_clients(port, "/", clients, messages)
            start_ns = int(
                await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
            )
            await asyncio.wait_for(asyncio.gather(*(c.done for c in conns)), 120)
            end = max(c.finished_ns for c in conns)
            rss = psutil.Process(proc.pid).memory_info().rss
            for c in conns:
                c.transport.close()
            return (end - start_ns) / 1e9, rss

        base_s, base_rss = asyncio.run(baseline())
    finally:
        proc.kill()
        proc.wait()

    # The tailer: the writer appends the same lines; every client is on the firehose.
    run = tmp / f"fanout-{clients}"
    run.mkdir()
    path = run / "fan.jsonl"
    path.touch()
    with Tailer(run) as tailer:

        async def tailed() -> tuple[float, int]:
            conns = await raw_clients(tailer.port, "/", clients, messages)
            await asyncio.sleep(0.5)
            peak = tailer.rss()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            start_ns = time.monotonic_ns()
            for line in lines:  # one os.write per message, as fast as the writer can
                os.write(fd, line)
            os.close(fd)
            waiting = asyncio.gather(*(c.done for c in conns))
            while not waiting.done():
                peak = max(peak, tailer.rss())
                await asyncio.sleep(0.05)
            await waiting
            end = max(c.finished_ns for c in conns)
            for c in conns:
                c.transport.close()
            return (end - start_ns) / 1e9, peak

        tail_s, tail_rss = asyncio.run(tailed())
    delivered = clients * messages
    return {
        "clients": clients,
        "messages": messages,
        "frame_bytes": size,
        "broadcast_deliveries_per_s": delivered / base_s,
        "tailer_deliveries_per_s": delivered / tail_s,
        "ratio": base_s / tail_s,
        "broadcast_rss_mb": base_rss / 2**20,
        "tailer_peak_rss_mb": tail_rss / 2**20,
    }


def write_big_run(path: Path, lines: int = 0, size_bytes: int = 0) -> int:
    """Append ~150 B batch_metrics lines until `lines` lines or `size_bytes` bytes; returns the line count."""
    template = encode_message(
        "batch_metrics",
        {"step": 0, "batch_idx": 0, "loss": 0.123456, "accuracy": 0.98765, "epoch": 1},
        timestamp="2025-01-01T00:00:00.000000Z",
    )
    head, _, tail = template.partition(b'"step":0')
    count = 0
    written = 0
    with open(path, "wb") as f:
        while (lines and count < lines) or (size_bytes and written < size_bytes):
            chunk = b"".join(head + b'"step":%d' % i + tail for i in range(count, count + 100_000))
            if lines:
                chunk = b"".join(
                    head + b'"step":%d' % i + tail
                    for i in range(count, min(lines, count + 100_000))
                )
            f.write(chunk)
            written += len(chunk)
            count += chunk.count(b"\n")
    return count


def bench_history(
    tmp: Path, lines: int, roots: dict[str, Path] | None = None, rounds: int = 3
) -> list[dict[str, float]]:
    """Catch-up of a `lines`-line run from seq 0 to one fast client.

    With several ``roots`` (source trees), one tailer of each serves the same
    file and the catch-ups alternate between them, round after round.
    """
    roots = roots or {"tailer": ROOT}
    run = tmp / "history"
    run.mkdir()
    write_big_run(run / "hist.jsonl", lines=lines)
    size = (run / "hist.jsonl").stat().st_size
    rates: dict[str, list[float]] = {name: [] for name in roots}
    per_cpu: dict[str, list[float]] = {name: [] for name in roots}  # messages per tailer CPU s
    tailers = {name: Tailer(run, root=root) for name, root in roots.items()}
    with contextlib.ExitStack() as stack:
        for tailer in tailers.values():
            stack.enter_context(tailer)
        # Start-up work in the background (the index, a series store) must not run during
        # another tailer's catch-up: wait until every tailer is idle.
        for tailer in tailers.values():
            tailer.wait_idle()

        async def once(port: int) -> float:
            start = time.monotonic_ns()
            (client,) = await raw_clients(port, "/experiments/hist", 1, lines)
            await asyncio.wait_for(client.done, 300)
            client.transport.close()
            return lines / ((client.finished_ns - start) / 1e9)

        names = list(tailers)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotating order
                tailer = tailers[name]
                before = tailer.cpu_s()
                rates[name].append(asyncio.run(once(tailer.port)))
                per_cpu[name].append(lines / max(1e-9, tailer.cpu_s() - before))
                print(
                    f"  round {r + 1} {name}: {rates[name][-1]:,.0f} msg/s, "
                    f"{per_cpu[name][-1]:,.0f} msg per tailer CPU s "
                    f"(load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        rows = [
            {
                "tree": name,  # type: ignore[dict-item]
                "lines": lines,
                "file_mb": size / 2**20,
                "startup_scan_s": tailer.startup_s,
                "messages_per_s": statistics.median(rates[name]),
                "best_per_s": max(rates[name]),
                # Less sensitive to the machine's load than the wall-clock rate.
                "per_tailer_cpu_s": statistics.median(per_cpu[name]),
                "tailer_rss_mb": tailer.rss() / 2**20,
                "load_1m": os.getloadavg()[0],
            }
            for name, tailer in tailers.items()
        ]
    shutil.rmtree(run)
    return rows


def bench_memory(
    tmp: Path, size_mb: int, clients: int = 100, catching_up: int = 10
) -> dict[str, float]:
    """Peak RSS of the tailer holding a `size_mb` MB log while serving `clients` clients.

    `catching_up` of them read the whole history from disk at full speed while the
    others are live on the firehose and a writer keeps appending.
    """
    run = tmp / "memory"
    run.mkdir()
    lines = write_big_run(run / "big.jsonl", size_bytes=size_mb << 20)
    size = (run / "big.jsonl").stat().st_size
    with Tailer(run) as tailer:
        idle = tailer.rss()

        async def main() -> tuple[int, int]:
            live = await raw_clients(tailer.port, "/", clients - catching_up, 10**12)
            history = await raw_clients(tailer.port, "/experiments/big", catching_up, lines)
            peak = tailer.rss()
            fd = os.open(run / "big.jsonl", os.O_WRONLY | os.O_APPEND)
            deadline = time.monotonic() + 20
            step = 0
            while time.monotonic() < deadline:
                os.write(
                    fd,
                    b"".join(
                        encode_message("batch_metrics", {"step": step + i, "loss": 0.5})
                        for i in range(10)
                    ),
                )
                step += 10
                peak = max(peak, tailer.rss())
                await asyncio.sleep(0.01)
            os.close(fd)
            got = sum(c.count for c in history)
            for c in live + history:
                c.transport.close()
            return peak, got

        peak, got = asyncio.run(main())
    shutil.rmtree(run)
    return {
        "file_mb": size / 2**20,
        "lines": lines,
        "clients": clients,
        "history_clients": catching_up,
        "history_messages_sent_in_20s": got,
        "idle_rss_mb": idle / 2**20,
        "peak_rss_mb": peak / 2**20,
    }


def table(title: str, rows: list[dict[str, float]]) -> None:
    print(f"\n{title}")
    keys = list(rows[0])
    cells = [
        [
            f"{r[k]:,.2f}"
            if isinstance(r[k], float)
            else f"{r[k]:,}"
            if isinstance(r[k], int)
            else str(r[k])
            for k in keys
        ]
        for r in rows
    ]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (memory: 100 MB log)")
    parser.add_argument(
        "--only", choices=["latency", "fanout", "history", "memory"], action="append"
    )
    parser.add_argument(
        "--memory-mb", type=int, default=None, help="log size of the memory run (default 1024)"
    )
    parser.add_argument(
        "--tailer-root",
        action="append",
        metavar="NAME=PATH",
        help="history: also run the tailer of the source tree PATH (another checkout), "
        "alternating with the others in one run (repeatable; give this tree too to compare)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="history catch-ups per tailer")
    args = parser.parse_args()
    only = set(args.only or ["latency", "fanout", "history", "memory"])
    tmp = Path(tempfile.mkdtemp(prefix="bench_tailer_"))
    try:
        if "latency" in only:
            table(
                "write -> client latency (1 message / 10 ms)",
                [bench_latency(tmp, 10 if args.quick else 30)],
            )
        if "fanout" in only:
            rows = [
                bench_fanout(tmp / f"f{n}", n, 2000 if args.quick else 5000)
                for n in (100, 500)
                if not (tmp / f"f{n}").mkdir()
            ]
            table("fan-out (~200 B messages, median of one run each)", rows)
        if "history" in only:
            roots = dict(spec.split("=", 1) for spec in args.tailer_root or []) or None
            table(
                f"history catch-up from seq 0, one client (median of {args.rounds})",
                bench_history(
                    tmp,
                    200_000 if args.quick else 1_000_000,
                    {k: Path(v).resolve() for k, v in roots.items()} if roots else None,
                    args.rounds,
                ),
            )
        if "memory" in only:
            size = args.memory_mb or (100 if args.quick else 1024)
            table("tailer RSS serving a big log to 100 clients", [bench_memory(tmp, size)])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
