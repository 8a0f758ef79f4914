"""Write -> client latency: ``tailer serve`` against ``websocketd tail -n0 -F``, alternately.

Run from the repository root::

    .venv/bin/python benchmarks/bench_latency.py                 # 6 rounds x 5 s each
    .venv/bin/python benchmarks/bench_latency.py --rounds 10 --seconds 10
    .venv/bin/python benchmarks/bench_latency.py --tailer before=/path/to/old/tree
    .venv/bin/python benchmarks/bench_latency.py --idle 100      # + idle CPU, 100 clients

A writer process appends one message every 10 ms through
``recorder.MetricsRecorder`` (default settings), each carrying
``time.monotonic_ns()`` at the moment it was recorded. Every contender runs
for the whole benchmark: ``websocketd --port P tail -n0 -F FILE`` (Debian's
``websocketd``, which starts one ``tail`` per client, what a Unix user would
pick) and one ``python -m tailer serve DIR`` per ``--tailer NAME=ROOT`` (a
source tree: another checkout compares before with after; default this
tree). A round connects one real ``websockets`` client to each contender in
turn, the order rotating from round to round, and takes the latency of every
message as its arrival time less the time written in it. The first
``--warmup`` messages of each round are left out (for every contender).
``lost``: messages written in a round that never arrived.

Figures are pooled over the rounds. Under load both contenders' latencies
are inflated, which is why they alternate within one run; the load average is
printed beside them. So does the machine's speed from one stretch of seconds
to the next (on a shared virtual machine every contender's p50 can move by
half between runs): a second table pairs each tailer's p50 with websocketd's
round by round. ``--idle N`` also measures the tailer's CPU over 10 s with
``N`` connected clients and no writes. Without ``websocketd`` installed
(``apt-get install websocketd``) the tailer is measured alone, with a message
saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import psutil  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from benchmarks.bench_tailer import URL, raw_clients, table  # noqa: E402

#: The writer: one MetricsRecorder per contender. "I N" on stdin writes N messages 10 ms apart
#: to contender I's directory, then "done"; "I,J N" writes N to each, in turn, 5 ms apart.
WRITER = textwrap.dedent(
    """
    import sys, time
    from recorder import MetricsRecorder
    recorders = [MetricsRecorder(d, "lat", resume=True) for d in sys.argv[2:]]
    interval = float(sys.argv[1])
    for line in sys.stdin:
        which, n = line.split()
        chosen = [recorders[int(i)] for i in which.split(",")]
        spacing = interval / len(chosen)
        next_at = time.monotonic()
        for step in range(int(n)):
            for recorder in chosen:
                recorder.record(
                    "batch_metrics", {"step": step, "t": time.monotonic_ns(), "loss": 0.5}
                )
                next_at += spacing
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        print("done", flush=True)
    """
)


@dataclass
class Contender:
    name: str
    directory: Path
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    latencies: list[float] = field(default_factory=list)
    round_p50: list[float] = field(default_factory=list)
    lost: int = 0
    written: int = 0
    cpu_s: float = 0.0

    def cpu(self) -> float:
        """CPU seconds of the server and its live children (websocketd's ``tail``)."""
        assert self.proc is not None
        total = 0.0
        try:
            ps = psutil.Process(self.proc.pid)
            for p in [ps, *ps.children(recursive=True)]:
                try:
                    times = p.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
        return total

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_websocketd(contender: Contender) -> None:
    port = free_port()
    path = contender.directory / "lat.jsonl"
    contender.proc = subprocess.Popen(
        [
            "websocketd",
            "--port",
            str(port),
            "--address",
            "127.0.0.1",
            "--loglevel",
            "error",
            "tail",
            "-n0",
            "-F",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    contender.url = f"ws://127.0.0.1:{port}/"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("websocketd did not start")


def start_tailer(contender: Contender, root: Path, state: Path, extra: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILER_")}
    env["XDG_STATE_HOME"] = str(state)  # cookie sessions: not in the user's state directory
    env["PYTHONPATH"] = str(root)
    contender.proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tailer",
            "serve",
            str(contender.directory),
            "--port",
            "0",
            "-q",
            *extra,
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert contender.proc.stdout is not None
    line = contender.proc.stdout.readline()
    match = URL.search(line)
    if not match:
        raise RuntimeError(f"tailer {contender.name} did not start: {line!r}")
    contender.url = f"ws://127.0.0.1:{int(match.group(1))}/?experiment=lat"


async def one_round(
    contenders: list[Contender],
    writer: subprocess.Popen[str],
    which: list[int],
    n: int,
    warmup: int,
) -> None:
    """Connect to each contender, have the writer record ``n`` messages each, take their latencies.

    Several contenders: all connected at once, the writer's messages going to
    each in turn (``--interleave``).
    """
    assert writer.stdin is not None and writer.stdout is not None
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(connect(c.url, compression=None, max_size=None))
            for c in contenders
        ]
        await asyncio.sleep(0.5)  # websocketd starts its `tail` for this client
        cpu_before = [c.cpu() for c in contenders]
        writer.stdin.write(f"{','.join(map(str, which))} {n}\n")
        writer.stdin.flush()
        finished = loop.run_in_executor(None, writer.stdout.readline)
        got = await asyncio.gather(*(receive(ws, n, finished) for ws in sockets))
        for c, before in zip(contenders, cpu_before, strict=True):
            c.cpu_s += c.cpu() - before
        await finished
    for c, latencies in zip(contenders, got, strict=True):
        c.written += n
        c.lost += n - len(latencies)
        c.latencies.extend(v for step, v in latencies.items() if step >= warmup)


async def receive(ws: ClientConnection, n: int, finished: asyncio.Future[str]) -> dict[int, float]:
    """Latency in ms of each step received on ``ws``, until ``n`` or a second after the writer ended."""
    got: dict[int, float] = {}
    grace_until: float | None = None
    while len(got) < n:
        if grace_until is None and finished.done():
            grace_until = time.monotonic() + 1.0
        timeout = 0.2 if grace_until is None else grace_until - time.monotonic()
        if timeout <= 0:
            break
        try:
            message = await asyncio.wait_for(ws.recv(decode=False), timeout)
        except TimeoutError:
            continue
        now = time.monotonic_ns()
        data = orjson.loads(message)["data"]
        got[data["step"]] = (now - data["t"]) / 1e6
    return got


def summary(contender: Contender, load: list[float]) -> dict[str, float]:
    lat = contender.latencies
    qs = statistics.quantiles(lat, n=100) if len(lat) > 1 else [float("nan")] * 99
    return {
        "contender": contender.name,  # type: ignore[dict-item]
        "messages": len(lat),
        "p50_ms": qs[49],
        "p90_ms": qs[89],
        "p99_ms": qs[98],
        "max_ms": max(lat) if lat else float("nan"),
        "lost": contender.lost,
        "cpu_us_per_msg": contender.cpu_s / max(1, contender.written) * 1e6,
        "load_1m": statistics.mean(load),
    }


def paired_rounds(contender: Contender, websocketd: Contender) -> dict[str, float]:
    """How ``contender``'s p50 compared with websocketd's round by round.

    The machine's speed drifts between rounds (every contender is slower on a
    slow stretch), so a pooled p50 can hide which one was ahead; rounds pair
    the two measured within seconds of each other.
    """
    diffs = [
        (mine - theirs) * 1000
        for mine, theirs in zip(contender.round_p50, websocketd.round_p50, strict=True)
    ]
    return {
        "contender": contender.name,  # type: ignore[dict-item]
        "rounds": len(diffs),
        "at_or_under": sum(d <= 0 for d in diffs),
        "median_diff_us": statistics.median(diffs),
        "min_diff_us": min(diffs),
        "max_diff_us": max(diffs),
        "websocketd_p50_range_ms": f"{min(websocketd.round_p50):.2f}-{max(websocketd.round_p50):.2f}",  # type: ignore[dict-item]
    }


async def idle_cpu(contender: Contender, clients: int, seconds: float = 10.0) -> dict[str, float]:
    """The tailer's CPU over ``seconds`` with ``clients`` firehose clients and no writes."""
    port = int(contender.url.split(":")[2].split("/")[0])
    conns = await raw_clients(port, "/", clients, 10**12)
    await asyncio.sleep(1.0)
    before = contender.cpu()
    await asyncio.sleep(seconds)
    used = contender.cpu() - before
    for c in conns:
        c.transport.close()
    return {
        "contender": contender.name,  # type: ignore[dict-item]
        "clients": clients,
        "seconds": seconds,
        "cpu_s": used,
        "cpu_percent": used / seconds * 100,
        "load_1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0, help="per contender per round")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between messages")
    parser.add_argument("--warmup", type=int, default=3, help="messages left out per round")
    parser.add_argument(
        "--tailer",
        action="append",
        metavar="NAME=ROOT[,ARG...]",
        help="a tailer from the source tree ROOT, with extra serve arguments (repeatable; "
        "default: this tree)",
    )
    parser.add_argument("--no-websocketd", action="store_true")
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="connect to every contender at once and write to each in turn, message by message "
        "(pairs them within milliseconds instead of seconds)",
    )
    parser.add_argument(
        "--idle", type=int, default=0, metavar="N", help="also idle CPU with N clients"
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_latency_"))
    contenders: list[Contender] = []
    try:
        if not args.no_websocketd:
            if shutil.which("websocketd") is None:
                print(
                    "websocketd not found (apt-get install websocketd): measuring the tailer alone"
                )
            else:
                c = Contender("websocketd", tmp / "websocketd")
                c.directory.mkdir()
                (c.directory / "lat.jsonl").touch()
                start_websocketd(c)
                contenders.append(c)
        for spec in args.tailer or [f"tailer={ROOT}"]:
            name, _, rest = spec.partition("=")
            root, *extra = rest.split(",")
            c = Contender(name, tmp / f"tailer-{name}")
            c.directory.mkdir()
            (c.directory / "lat.jsonl").touch()
            start_tailer(c, Path(root).resolve(), tmp / "state", extra)
            contenders.append(c)
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(args.interval)]
            + [str(c.directory) for c in contenders],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        n = max(1, round(args.seconds / args.interval))
        load: list[float] = []
        print(
            f"{len(contenders)} contenders, {args.rounds} rounds of {n} messages each "
            f"(1 / {args.interval * 1000:g} ms), load average at start "
            f"{os.getloadavg()[0]:.2f}"
        )
        for r in range(args.rounds):
            order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
            turns = [order] if args.interleave else [[c] for c in order]
            for turn in turns:
                before = [len(c.latencies) for c in turn]
                asyncio.run(
                    one_round(turn, writer, [contenders.index(c) for c in turn], n, args.warmup)
                )
                load.append(os.getloadavg()[0])
                for c, start in zip(turn, before, strict=True):
                    round_lat = c.latencies[start:]
                    c.round_p50.append(statistics.median(round_lat))
                    print(
                        f"  round {r + 1} {c.name:>12}: p50 {c.round_p50[-1]:.3f} ms, "
                        f"max {max(round_lat):.2f} ms, lost so far {c.lost}, load {load[-1]:.2f}",
                        flush=True,
                    )
        writer.stdin.close()  # type: ignore[union-attr]
        writer.wait(10)
        table(
            f"write -> client latency, 1 message / {args.interval * 1000:g} ms through "
            f"MetricsRecorder ({args.rounds} {'interleaved' if args.interleave else 'alternating'} "
            "rounds, pooled)",
            [summary(c, load) for c in contenders],
        )
        paired = [c for c in contenders if c.name != "websocketd"]
        if paired and contenders[0].name == "websocketd":
            table(
                "round by round: each tailer's p50 less websocketd's in the same round "
                "(negative: the tailer was faster)",
                [paired_rounds(c, contenders[0]) for c in paired],
            )
        if args.idle:
            rows = [
                asyncio.run(idle_cpu(c, args.idle)) for c in contenders if c.name != "websocketd"
            ]
            table(f"idle: tailer CPU over 10 s with {args.idle} clients, no writes", rows)
    finally:
        for c in contenders:
            c.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
