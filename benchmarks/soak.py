"""Soak test of ``tailer serve``: nothing lost, nothing duplicated, flat memory, steady latency.

Not part of CI. Runs a real ``python -m tailer serve`` on a temporary directory
(127.0.0.1 only) with:

* ``--writers`` writer processes (``MetricsRecorder``), one experiment each,
  at ``--rate`` messages a second, for ``--seconds``;
* ``--clients`` live clients spread over ``--workers`` client processes:
  most follow one experiment (``/experiments/ID`` or ``/?experiment=ID&since=-1``)
  and resume with ``since`` if they are ever closed, ``--firehose`` of them
  follow ``/`` (every experiment, live only);
* ``--reconnectors`` clients that drop their connection at random (every 0.5-4 s)
  and resume with ``since=<last seq>``;
* one client that never reads (it should be closed with 1013, hurting no one).

At the end every client's ``(experiment, seq)`` set is compared with the files:
lost (a seq in the file never received) and duplicated (received twice) must be
0. Latency is write-to-receive (the writer puts ``time.time_ns()`` in each
message; same clock), reported as p50/p99 per 10 s window, with the tailer's
RSS at each window's end. Exit status 1 if anything was lost or duplicated.

    .venv/bin/python benchmarks/soak.py --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
WINDOW_S = 10
# Latency histogram: bucket b holds latencies in [10**(b/40), 10**((b+1)/40)) microseconds.
BUCKETS_PER_DECADE = 40
N_BUCKETS = 8 * BUCKETS_PER_DECADE  # up to 100 s

WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from recorder import MetricsRecorder
log_dir, exp, seconds, rate = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
n = int(seconds * rate)
rec = MetricsRecorder(log_dir, exp)
t0 = time.perf_counter()
now_ns = time.time_ns
for i in range(n):
    rec.record("batch_metrics", {{"i": i, "t_ns": now_ns(), "loss": 1.0 / (i + 1), "accuracy": 0.5}})
    delay = t0 + (i + 1) / rate - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
lost = rec.lost
rec.close()
print(lost, flush=True)
"""

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


def _masked(opcode: int, payload: bytes = b"") -> bytes:
    """A client frame with a zero mask key (valid per RFC 6455, and the payload stays as is)."""
    return bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload


# --------------------------------------------------------------------------- client worker


class Tracker:
    """What one logical client received: a bitmap of seqs per experiment, duplicates, drops."""

    def __init__(self, name: str, experiments: list[str]) -> None:
        self.name = name
        self.experiments = experiments
        self.seen: dict[str, bytearray] = {e: bytearray() for e in experiments}
        self.last: dict[str, int] = dict.fromkeys(experiments, -1)
        self.duplicates = 0
        self.received = 0
        self.closes: dict[str, int] = {}

    def add(self, experiment: str, seq: int) -> None:
        bits = self.seen.get(experiment)
        if bits is None:
            return
        if seq >= len(bits):
            bits.extend(bytes(max(seq + 1 - len(bits), 4096)))
        if bits[seq]:
            self.duplicates += 1
        bits[seq] = 1
        self.received += 1
        if seq > self.last[experiment]:
            self.last[experiment] = seq

    def missing(self, expected: dict[str, int]) -> int:
        lost = 0
        for experiment in self.experiments:
            bits = self.seen[experiment]
            n = expected[experiment]
            lost += n - bits[:n].count(1)
        return lost


class Connection(asyncio.Protocol):
    """A minimal WebSocket client: parses unmasked server frames, answers pings."""

    def __init__(self, on_text, done: asyncio.Future) -> None:
        self.on_text = on_text
        self.done = done
        self.buffer = bytearray()
        self.open = False
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._finish(-int(buf[9:12] or b"0"))
                return
            self.open = True
            pos = end + 4
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if size - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            opcode = b0 & 0x0F
            if opcode == 1:
                self.on_text(payload)
            elif opcode == 9 and self.transport is not None:  # ping: answer with a pong
                self.transport.write(_masked(0xA, payload))
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if self.transport is not None:
                    self.transport.write(_masked(0x8, payload[:2]))
                    self.transport.close()
                self._finish(code)
                return
        del buf[:pos]

    def connection_lost(self, exc) -> None:
        self._finish(1006)

    def _finish(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
        if not self.done.done():
            self.done.set_result(code)
        if self.transport is not None:
            self.transport.close()


async def follow(
    port: int,
    tracker: Tracker,
    path_of,
    hist: dict[int, list[int]],
    t0_ns: int,
    stop: asyncio.Event,
    *,
    drop_every: tuple[float, float] | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Keep one logical client connected until ``stop``; resume with since after every close."""
    loop = asyncio.get_running_loop()
    loads = orjson.loads
    add = tracker.add
    log10 = math.log10
    rng = random.Random(tracker.name)

    def on_text(payload: bytes) -> None:
        message = loads(payload)
        seq = message.get("seq")
        if seq is None:
            return
        add(message["experiment_id"], seq)
        now = time.time_ns()
        sent = message["data"]["t_ns"]
        window = (now - t0_ns) // (WINDOW_S * 1_000_000_000)
        micros = max((now - sent) / 1000, 1.0)
        bucket = min(int(log10(micros) * BUCKETS_PER_DECADE), N_BUCKETS - 1)
        counts = hist.get(window)
        if counts is None:
            counts = hist[window] = [0] * N_BUCKETS
        counts[bucket] += 1

    while not stop.is_set():
        done = loop.create_future()
        try:
            transport, _proto = await loop.create_connection(
                lambda done=done: Connection(on_text, done), "127.0.0.1", port
            )
        except OSError:
            await asyncio.sleep(0.2)
            continue
        transport.write(HANDSHAKE.format(path=path_of(tracker), port=port).encode())
        if ready is not None:
            ready.set()
            ready = None
        waiters = [done, asyncio.ensure_future(stop.wait())]
        if drop_every is not None:
            waiters.append(asyncio.ensure_future(asyncio.sleep(rng.uniform(*drop_every))))
        _finished, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for p in pending:
            if p is not done:
                p.cancel()
        if done.done():
            code = str(done.result())
            tracker.closes[code] = tracker.closes.get(code, 0) + 1
        else:
            if not stop.is_set():
                tracker.closes["dropped"] = tracker.closes.get("dropped", 0) + 1
            transport.abort()  # vanish without a close frame, as a crashed client does
        await asyncio.sleep(0.05)


def _resume_path(tracker: Tracker, style: str) -> str:
    experiment = tracker.experiments[0]
    since = tracker.last[experiment]
    if style == "experiment":
        return f"/experiments/{experiment}?since={since}"
    return f"/?experiment={experiment}&since={since}"


async def worker_main(spec: dict) -> None:
    port = spec["port"]
    t0_ns = spec["t0_ns"]
    stop = asyncio.Event()
    hist: dict[int, list[int]] = {}
    trackers: list[Tracker] = []
    tasks = []
    readies = []
    for client in spec["clients"]:
        tracker = Tracker(client["name"], client["experiments"])
        trackers.append(tracker)
        ready = asyncio.Event()
        readies.append(ready)
        style = client["style"]
        path_of = (
            (lambda t: "/") if style == "firehose" else (lambda t, s=style: _resume_path(t, s))
        )
        tasks.append(
            asyncio.create_task(
                follow(
                    port,
                    tracker,
                    path_of,
                    hist,
                    t0_ns,
                    stop,
                    drop_every=(0.5, 4.0) if client["reconnect"] else None,
                    ready=ready,
                )
            )
        )
    for ready in readies:
        await ready.wait()
    await asyncio.sleep(0.5)  # handshakes answered
    print("ready", flush=True)
    # The orchestrator writes the final line counts once the writers are done.
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    expected = json.loads(line)
    deadline = time.monotonic() + spec["catch_up_s"]

    def caught_up() -> bool:
        return all(t.last[e] >= expected[e] - 1 for t in trackers for e in t.experiments)

    while not caught_up() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    result = {
        "clients": [
            {
                "name": t.name,
                "received": t.received,
                "duplicates": t.duplicates,
                "lost": t.missing(expected),
                "closes": t.closes,
            }
            for t in trackers
        ],
        "hist": {str(k): v for k, v in hist.items()},
    }
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------- orchestration


def _percentile(counts: list[int], q: float) -> float:
    total = sum(counts)
    if not total:
        return math.nan
    rank = q * total
    seen = 0
    for bucket, c in enumerate(counts):
        seen += c
        if seen >= rank:
            return 10 ** ((bucket + 0.5) / BUCKETS_PER_DECADE) / 1000  # bucket centre, in ms
    return math.nan


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        data = f.read()
    assert data.endswith(b"\n"), f"{path} ends in a torn line"
    return data.count(b"\n")


def _never_reader(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(HANDSHAKE.format(path="/", port=port).encode())
    return sock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=1000, help="messages/s per writer")
    parser.add_argument("--clients", type=int, default=50, help="live clients")
    parser.add_argument("--firehose", type=int, default=5, help="of them, following / (all runs)")
    parser.add_argument("--reconnectors", type=int, default=5)
    parser.add_argument("--workers", type=int, default=3, help="client processes")
    parser.add_argument("--catch-up", type=float, default=60, help="seconds allowed at the end")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker_main(json.loads(args.worker)))
        return 0

    import psutil

    workdir = Path(tempfile.mkdtemp(prefix="runtail-soak-"))
    runs = workdir / "runs"
    runs.mkdir()
    writer_script = workdir / "writer.py"
    writer_script.write_text(WRITER.format(root=str(ROOT)))
    experiments = [f"soak-{k}" for k in range(args.writers)]
    procs: list[subprocess.Popen] = []
    serve_log = open(workdir / "serve.log", "wb")  # noqa: SIM115
    try:
        server = subprocess.Popen(
            [sys.executable, "-m", "tailer", "serve", str(runs), "--port", "0", "-q"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=serve_log,
            env={k: v for k, v in os.environ.items() if not k.startswith("TAILER_")},
        )
        procs.append(server)
        match = re.search(rb"on http://127\.0\.0\.1:(\d+)/", server.stdout.readline())
        assert match, "tailer serve did not start"
        port = int(match.group(1))
        tailer_ps = psutil.Process(server.pid)

        # Clients: experiment followers (two endpoint styles), firehose, reconnectors.
        specs = []
        for i in range(args.clients):
            if i < args.firehose:
                specs.append({"name": f"fire-{i}", "experiments": experiments, "style": "firehose"})
            else:
                style = "experiment" if i % 2 else "query"
                exp = experiments[i % len(experiments)]
                specs.append({"name": f"live-{i}", "experiments": [exp], "style": style})
        for i in range(args.reconnectors):
            exp = experiments[i % len(experiments)]
            specs.append(
                {
                    "name": f"reconnect-{i}",
                    "experiments": [exp],
                    "style": "experiment",
                    "reconnect": True,
                }
            )
        for s in specs:
            s.setdefault("reconnect", False)
        t0_ns = time.time_ns()
        workers = []
        for w in range(args.workers):
            spec = {
                "port": port,
                "t0_ns": t0_ns,
                "clients": specs[w :: args.workers],
                "catch_up_s": args.catch_up,
            }
            workers.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", json.dumps(spec)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        procs.extend(workers)
        for w in workers:
            assert w.stdout.readline().strip() == "ready", "a client worker failed to start"
        never = _never_reader(port)
        rss_start = tailer_ps.memory_info().rss
        print(
            f"soak: tailer on port {port}, {args.writers} writers x {args.rate:.0f}/s for "
            f"{args.seconds:.0f} s, {len(specs)} clients ({args.firehose} firehose, "
            f"{args.reconnectors} reconnecting) + 1 never reading; RSS at start "
            f"{rss_start / 2**20:.1f} MiB",
            flush=True,
        )
        writers = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(writer_script),
                    str(runs),
                    exp,
                    str(args.seconds),
                    str(args.rate),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for exp in experiments
        ]
        procs.extend(writers)
        rss_windows: dict[int, int] = {}
        cpu_start = tailer_ps.cpu_times()
        while any(w.poll() is None for w in writers):
            time.sleep(1)
            window = (time.time_ns() - t0_ns) // (WINDOW_S * 1_000_000_000)
            rss_windows[window] = tailer_ps.memory_info().rss
        cpu = tailer_ps.cpu_times()
        cpu_s = (cpu.user - cpu_start.user) + (cpu.system - cpu_start.system)
        write_lost = sum(int(w.stdout.read().strip() or 0) for w in writers)
        expected = {exp: _count_lines(runs / f"{exp}.jsonl") for exp in experiments}
        for w in workers:
            w.stdin.write(json.dumps(expected) + "\n")
            w.stdin.flush()
        results = [json.loads(w.stdout.readline()) for w in workers]
        rss_end = tailer_ps.memory_info().rss
        # Did the never-reading client get closed? Read what is left on its socket.
        never.setblocking(False)
        never_closed = False
        try:
            while True:
                chunk = never.recv(1 << 20)
                if not chunk:
                    never_closed = True
                    break
                if b"\x03\xf5client too slow" in chunk:  # the close frame: 1013 and its reason
                    never_closed = True
        except BlockingIOError:
            pass
        never.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
        serve_log.close()

    clients = [c for r in results for c in r["clients"]]
    delivered = sum(c["received"] for c in clients)
    lost = sum(c["lost"] for c in clients)
    duplicated = sum(c["duplicates"] for c in clients)
    closes: dict[str, int] = {}
    for c in clients:
        for code, n in c["closes"].items():
            closes[code] = closes.get(code, 0) + n
    hist: dict[int, list[int]] = {}
    for r in results:
        for k, counts in r["hist"].items():
            merged = hist.setdefault(int(k), [0] * N_BUCKETS)
            for i, c in enumerate(counts):
                merged[i] += c
    written = sum(expected.values())
    print(f"written: {written} messages ({write_lost} lost by the writers)")
    print(f"delivered: {delivered} messages to {len(clients)} clients")
    print(f"lost: {lost}   duplicated: {duplicated}")
    print(f"client closes: {closes or 'none'}  (dropped = reconnectors' own drops)")
    print(f"never-reading client closed by the server: {never_closed}")
    print(f"tailer CPU: {cpu_s:.1f} s over {args.seconds:.0f} s")
    print("window    messages    p50 ms    p99 ms   tailer RSS")
    for window in sorted(hist):
        counts = hist[window]
        rss = rss_windows.get(window)
        rss_text = f"{rss / 2**20:8.1f} MiB" if rss else "        -"
        print(
            f"{window * WINDOW_S:4d}-{(window + 1) * WINDOW_S:<4d}{sum(counts):10d}"
            f"{_percentile(counts, 0.5):10.2f}{_percentile(counts, 0.99):10.2f}   {rss_text}"
        )
    print(
        f"tailer RSS: start {rss_start / 2**20:.1f} MiB, end {rss_end / 2**20:.1f} MiB "
        f"({(rss_end - rss_start) / 2**20:+.1f} MiB)"
    )
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if lost or duplicated or write_lost else 0


if __name__ == "__main__":
    sys.exit(main())
