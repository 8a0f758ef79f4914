"""Hostile files and connections against ``tailer serve`` (DESIGN §12): what other runs see.

Run from the repository root::

    .venv/bin/python benchmarks/bench_hostile.py
    .venv/bin/python benchmarks/bench_hostile.py --tailer-root /path/to/other/checkout  # compare

Prints, for a real ``python -m tailer serve`` subprocess (run from
``--tailer-root``, this checkout by default):

* other runs' worst latency (append -> a live subscriber receives it, 10
  probes) with nothing hostile, then while each hostile file is present: 16 MiB
  of newlines, 16 MiB of random bytes, a 5 GB sparse file appearing, a FIFO,
  a symlink out of the directory;
* start-up with a 5 GB sparse file: seconds from spawn to the printed URL,
  and to the first ``/healthz`` answer;
* RSS under attack: 600 idle TCP connections with ``ulimit -n 256``; 40
  firehose clients that never read under a 12 MB flood;
* bytes a viewer receives per ``rsync`` of a 100,000-line run that grew by
  1,000 lines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from recorder.format import encode_message  # noqa: E402
from tests._reliability_helpers import never_reading_client  # noqa: E402

URL = re.compile(rb"127\.0\.0\.1:(\d+)/")


class Serve:
    """``python -m tailer serve DIR ARGS`` from ``root``, started and stopped with ``async with``."""

    def __init__(self, root: Path, runs: Path, *args: str, nofile: int | None = None) -> None:
        self.root, self.runs, self.args, self.nofile = root, runs, args, nofile
        self.spawned = self.listening = 0.0

    async def __aenter__(self) -> Serve:
        def limit() -> None:
            if self.nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

        env = {k: v for k, v in os.environ.items() if not k.startswith("TAILER_")}
        self.spawned = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "tailer", "serve", str(self.runs), "--port", "0", "-q", *self.args),
            cwd=self.root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**env, "PYTHONUNBUFFERED": "1", "XDG_STATE_HOME": str(self.runs.parent)},
            preexec_fn=limit,
        )
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        self.listening = time.monotonic()
        self.port = int(URL.search(line).group(1))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def rss(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    async def healthz(self) -> float:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        await asyncio.wait_for(reader.read(), 60)
        writer.close()
        return time.monotonic() - started


async def other_run_latency(
    port: int, runs: Path, probes: int = 10, before: object = None
) -> float:
    """Worst append-to-receive time on run ``good``; ``before`` is awaited once subscribed."""
    fd = os.open(runs / "good.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    worst = 0.0
    try:
        async with connect(f"ws://127.0.0.1:{port}/?experiment=good", max_size=None) as ws:
            if before is not None:
                await before  # type: ignore[misc]
            for i in range(probes):
                sent = time.monotonic()
                os.write(fd, encode_message("probe", {"i": i}))
                await asyncio.wait_for(ws.recv(), 120)
                worst = max(worst, time.monotonic() - sent)
                await asyncio.sleep(0.1)
    finally:
        os.close(fd)
    return worst


async def hostile_files(root: Path, tmp: Path) -> None:
    runs = tmp / "hostile"
    runs.mkdir()
    (tmp / "outside.jsonl").write_bytes(encode_message("secret", {}))
    cases = [
        ("nothing hostile", lambda: None),
        ("16 MiB of newlines", lambda: (runs / "newlines.jsonl").write_bytes(b"\n" * (16 << 20))),
        (
            "16 MiB of random bytes",
            lambda: (runs / "binary.jsonl").write_bytes(os.urandom(16 << 20)),
        ),
        ("a 5 GB sparse file appears", lambda: os.truncate(_touch(runs / "big.jsonl"), 5 << 30)),
        ("a FIFO named x.jsonl", lambda: os.mkfifo(runs / "fifo.jsonl")),
        ("a symlink out of DIR", lambda: (runs / "leak.jsonl").symlink_to(tmp / "outside.jsonl")),
    ]
    print("other runs' worst latency (10 probes each; the hostile file stays for the next rows):")
    async with Serve(root, runs) as serve:
        for name, make in cases:
            make()
            latency = await other_run_latency(serve.port, runs)
            print(f"  {name:28s} {latency * 1000:8.1f} ms")


def _touch(path: Path) -> Path:
    path.touch()
    return path


async def startup(root: Path, tmp: Path) -> None:
    runs = tmp / "startup"
    runs.mkdir()
    os.truncate(_touch(runs / "big.jsonl"), 5 << 30)
    (runs / "good.jsonl").write_bytes(encode_message("m", {}))
    async with Serve(root, runs) as serve:
        listening = serve.listening - serve.spawned
        healthz = await serve.healthz()
        latency = await other_run_latency(serve.port, runs)
    print(
        f"start-up with a 5 GB sparse file: URL printed {listening:.2f} s after spawn, "
        f"/healthz answered in {healthz * 1000:.0f} ms; other runs' worst latency "
        f"{latency * 1000:.1f} ms"
    )


async def descriptors(root: Path, tmp: Path) -> None:
    runs = tmp / "fds"
    runs.mkdir()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    async with Serve(root, runs, nofile=256) as serve:
        rss0 = serve.rss()
        idle = []

        async def flood() -> None:
            for _ in range(600):
                try:
                    idle.append((await asyncio.open_connection("127.0.0.1", serve.port))[1])
                except OSError:
                    break

        latency = await other_run_latency(serve.port, runs, probes=100, before=flood())
        rss1 = serve.rss()
        for w in idle:
            w.transport.abort()
    print(
        f"600 idle connections, ulimit -n 256: other runs' worst latency {latency * 1000:.1f} ms, "
        f"RSS {rss0:.1f} -> {rss1:.1f} MiB"
    )


async def memory(root: Path, tmp: Path) -> None:
    for label, args in (
        ("--max-queued-bytes 32 MiB", ("--max-queued-bytes", str(32 << 20))),
        ("no global budget (1 TiB)", ("--max-queued-bytes", str(1 << 40))),
    ):
        runs = tmp / f"mem{len(args[1])}"
        runs.mkdir()
        async with Serve(root, runs, *args) as serve:
            rss0 = serve.rss()
            stuck = [await never_reading_client(serve.port) for _ in range(40)]
            fd = os.open(runs / "flood.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            pad = "x" * 1000
            peak = rss0
            for _ in range(60):
                os.write(
                    fd, b"".join(encode_message("m", {"i": k, "pad": pad}) for k in range(200))
                )
                await asyncio.sleep(0.05)
                peak = max(peak, serve.rss())
            os.close(fd)
            for w in stuck:
                w.transport.abort()
        print(
            f"40 never-reading clients, 12 MB flood, {label}: RSS {rss0:.1f} -> peak {peak:.1f} MiB"
        )


async def resync(root: Path, tmp: Path) -> None:
    from websockets.exceptions import ConnectionClosed

    runs = tmp / "sync"
    offline = tmp / "offline"
    runs.mkdir()
    offline.mkdir()
    source = offline / "run.jsonl"

    def grow(start: int, stop: int) -> None:
        with open(source, "ab") as f:
            f.write(
                b"".join(
                    encode_message("batch_metrics", {"step": i, "loss": 0.5})
                    for i in range(start, stop)
                )
            )

    grow(0, 100_000)
    shutil.copyfile(source, runs / "run.jsonl")
    per_sync = []
    async with Serve(root, runs) as serve:
        step = 100_000
        since = -1
        for _ in range(3):
            # A viewer that resumes with since, as the dashboard does; each sync is
            # measured from its own connection, caught up first.
            async with connect(
                f"ws://127.0.0.1:{serve.port}/experiments/run?since={since}", max_size=None
            ) as ws:
                got = frames = 0
                if since < 0:
                    for _ in range(100_000):
                        await ws.recv()
                grow(step, step + 1000)
                step += 1000
                subprocess.run(["rsync", str(source), str(runs / "run.jsonl")], check=True)
                ending = "idle for 2 s"
                try:
                    while True:
                        got += len(await asyncio.wait_for(ws.recv(), 2))
                        frames += 1
                except TimeoutError:
                    pass
                except ConnectionClosed as exc:
                    ending = f"closed {exc.rcvd.code if exc.rcvd else '?'}"
                per_sync.append((frames, got, ending))
                since = step - 1
    for i, (frames, got, ending) in enumerate(per_sync, 1):
        print(
            f"rsync #{i} of a 100,000-line run grown by 1,000 lines: the viewer received "
            f"{frames} frames, {got / 1024:.0f} KiB ({ending})"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tailer-root", type=Path, default=ROOT)
    parser.add_argument(
        "--only",
        choices=["files", "startup", "descriptors", "memory", "resync"],
        action="append",
    )
    args = parser.parse_args()
    steps = {
        "files": hostile_files,
        "startup": startup,
        "descriptors": descriptors,
        "memory": memory,
        "resync": resync,
    }
    print(f"tailer from {args.tailer_root}")
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        for name, step in steps.items():
            if args.only and name not in args.only:
                continue
            await step(args.tailer_root, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
