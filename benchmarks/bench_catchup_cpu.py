"""Tailer CPU seconds for one history catch-up, for one tree or several alternating.

Wall-clock catch-up rates (``bench_tailer.py --only history``) move by 2-5x with the
machine's load; the CPU the tailer process itself spends on a catch-up moves far
less, so two versions can be compared on a busy machine::

    git worktree add --detach /tmp/before <commit>
    .venv/bin/python benchmarks/bench_catchup_cpu.py --lines 1000000 --rounds 6 /tmp/before .

Each round starts ``python -m tailer serve`` in each tree (its own code: the tree is
the working directory), waits until the tailer has used no CPU for a whole second
(the start-up read and the series store of a big run are done), then one raw client
asks for ``/experiments/hist?since=-1`` and counts ``"seq":`` markers until it has
every line. The figure is the tailer's user+system CPU between the request and the
last line (10 ms resolution: use a million lines).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from recorder.format import encode_message  # noqa: E402

URL = re.compile(rb"http://127\.0\.0\.1:(\d+)/")
MARKER = b'"seq":'


def write_run(path: Path, lines: int) -> None:
    with open(path, "wb") as f:
        for i in range(lines):
            data = {"step": i, "batch_idx": i % 100, "loss": 1.0 / (i + 1), "epoch": i // 1000}
            f.write(encode_message("batch_metrics", data))


async def catch_up(port: int, lines: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /experiments/hist?since=-1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    seen = 0
    tail = b""
    while seen < lines:
        data = await reader.read(1 << 20)
        if not data:
            raise RuntimeError("the tailer closed the connection")
        buf = tail + data
        tail = buf[-(len(MARKER) - 1) :]
        seen += buf.count(MARKER) - tail.count(MARKER)
    writer.close()


def cpu_of(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def one_round(tree: Path, runs: Path, lines: int) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILER_")}
    argv = [sys.executable, "-m", "tailer", "serve", str(runs), "--port", "0", "-q"]
    argv += ["--state-dir", str(runs.parent / "state")]
    proc = subprocess.Popen(
        argv, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    try:
        match = URL.search(proc.stdout.readline())
        if match is None:
            raise RuntimeError(f"the tailer in {tree} did not start")
        process = psutil.Process(proc.pid)
        last = cpu_of(process)
        while True:  # idle for a whole second: the start-up work is over
            time.sleep(1.0)
            now = cpu_of(process)
            if now - last < 0.005:
                break
            last = now
        cpu, wall = cpu_of(process), time.monotonic()
        asyncio.run(catch_up(int(match.group(1)), lines))
        return cpu_of(process) - cpu, time.monotonic() - wall
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", default=[str(ROOT)], help="checkouts to compare")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    trees = [Path(t).resolve() for t in args.trees]
    tmp = Path(tempfile.mkdtemp(prefix="bench_catchup_"))
    try:
        runs = tmp / "runs"
        runs.mkdir()
        write_run(runs / "hist.jsonl", args.lines)
        results: dict[Path, list[float]] = {tree: [] for tree in trees}
        for r in range(args.rounds):
            for tree in trees:
                cpu, wall = one_round(tree, runs, args.lines)
                results[tree].append(cpu)
                print(
                    f"round {r + 1} {tree}: tailer CPU {cpu:.2f} s, wall {wall:.2f} s, "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        print(f"\n{'tree':<40} {'median CPU s':>12} {'lines per CPU s':>16} {'min CPU s':>10}")
        for tree, cpus in results.items():
            median = statistics.median(cpus)
            print(f"{tree!s:<40} {median:>12.3f} {args.lines / median:>16,.0f} {min(cpus):>10.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
