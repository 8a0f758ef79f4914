"""What recording one epoch_end message with 4 metrics costs, against the alternatives.

Run from the repository root::

    .venv/bin/python benchmarks/bench_recorder.py            # N=20,000, 5 runs each
    .venv/bin/python benchmarks/bench_recorder.py --quick    # smaller N, for a smoke test

Every contender records the same message (epoch, phase, 4 float metrics), N
times per run; the table shows the median over the runs of the time per
message, and its ratio to the floor. Runs of the fast contenders are
interleaved (floor, recorder, floor, recorder, ...) so a noisy shared machine
slows both alike; compare ratios, not absolute times across machines.

Contenders:

- ``floor``: ``orjson.dumps`` of the finished message (its timestamp made once,
  outside the loop) plus one ``os.write`` on an ``O_APPEND`` descriptor: the
  least any line-per-message recorder can do.
- ``MetricsRecorder.send_epoch_end``: runtail (timestamp, lock, non-finite
  check and write included).
- ``SummaryWriter.add_scalar x4``: TensorBoard's writer (queues events for a
  background thread; its final flush is included).
- ``CSVLogger.log_metrics + save``: Lightning's CSV logger, saved per message
  so the row is on disk like ours (smaller N: it reopens the file each time).
- ``websocket per message``: the original sender's pattern, ``asyncio.run``
  of ``connect`` + ``send`` per message, against a local relay process
  written with ``websockets.asyncio.server`` on 127.0.0.1 (smaller N).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from recorder import MetricsRecorder  # noqa: E402
from recorder.format import utc_timestamp  # noqa: E402

METRICS = {"loss": 0.2345678, "accuracy": 0.9123, "recall": 0.8876, "f1": 0.90012}

Runner = Callable[[int], float]  # n -> seconds for n messages


def make_floor(workdir: Path) -> tuple[Runner, Callable[[], None]]:
    fd = os.open(workdir / "floor.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    dumps, write, option = orjson.dumps, os.write, orjson.OPT_APPEND_NEWLINE
    stamp = utc_timestamp()

    def run(n: int) -> float:
        start = time.perf_counter()
        for epoch in range(n):
            write(
                fd,
                dumps(
                    {
                        "type": "epoch_end",
                        "timestamp": stamp,
                        "data": {"epoch": epoch, "phase": "train", "metrics": METRICS},
                    },
                    option=option,
                ),
            )
        return time.perf_counter() - start

    return run, lambda: os.close(fd)


def make_recorder(workdir: Path, **options: object) -> tuple[Runner, Callable[[], None]]:
    rec = MetricsRecorder(workdir, "recorder" + "".join(f"-{k}" for k in options), **options)  # type: ignore[arg-type]
    send = rec.send_epoch_end

    def run(n: int) -> float:
        start = time.perf_counter()
        for epoch in range(n):
            send(epoch, "train", METRICS)
        return time.perf_counter() - start

    def done() -> None:
        rec.close()
        assert rec.lost == 0

    return run, done


def make_tensorboard(workdir: Path) -> tuple[Runner, Callable[[], None]]:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(workdir / "tb"))

    def run(n: int) -> float:
        start = time.perf_counter()
        for epoch in range(n):
            for name, value in METRICS.items():
                writer.add_scalar(f"train/{name}", value, epoch)
        writer.flush()
        return time.perf_counter() - start

    return run, writer.close


def make_csv(workdir: Path) -> tuple[Runner, Callable[[], None]]:
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(str(workdir / "csv"), name="bench")

    def run(n: int) -> float:
        start = time.perf_counter()
        for epoch in range(n):
            logger.log_metrics({"epoch": epoch, **{f"train_{k}": v for k, v in METRICS.items()}}, step=epoch)
            logger.save()
        return time.perf_counter() - start

    return run, lambda: logger.finalize("success")


_RELAY = """
import asyncio, sys
from websockets.asyncio.server import broadcast, serve

clients = set()

async def relay(websocket):
    clients.add(websocket)
    try:
        async for message in websocket:
            broadcast(clients - {websocket}, message)
    finally:
        clients.discard(websocket)

async def main():
    async with serve(relay, "127.0.0.1", 0) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

asyncio.run(main())
"""


def make_websocket(workdir: Path) -> tuple[Runner, Callable[[], None]]:
    import asyncio
    import json

    from websockets.asyncio.client import connect

    relay = subprocess.Popen([sys.executable, "-c", _RELAY], stdout=subprocess.PIPE, text=True)
    assert relay.stdout is not None
    uri = f"ws://127.0.0.1:{int(relay.stdout.readline())}"

    async def send(message: str) -> None:  # what MetricsWebSocketSender did per message
        async with connect(uri) as websocket:
            await websocket.send(message)

    def run(n: int) -> float:
        start = time.perf_counter()
        for epoch in range(n):
            message = {
                "type": "epoch_end",
                "timestamp": utc_timestamp(),
                "data": {"epoch": epoch, "phase": "train", "metrics": METRICS},
            }
            asyncio.run(send(json.dumps(message)))
        return time.perf_counter() - start

    def done() -> None:
        relay.terminate()
        relay.wait(timeout=10)

    return run, done


def median_per_message(runner: Runner, n: int, repeats: int) -> float:
    return statistics.median(runner(n) / n for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="messages per run (fast contenders)")
    parser.add_argument("--slow-n", type=int, default=2_000, help="messages per run (TensorBoard, CSV)")
    parser.add_argument("--ws-n", type=int, default=300, help="messages per run (WebSocket per message)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per contender (the median is shown)")
    parser.add_argument("--quick", action="store_true", help="N=2,000 / 200 / 50, 3 runs")
    parser.add_argument("--skip", nargs="*", default=[], help="contenders to leave out: tb csv ws fsync")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.slow_n, args.ws_n, args.repeats = 2_000, 200, 50, 3
    warnings.simplefilter("ignore")

    workdir = Path(tempfile.mkdtemp(prefix="bench-recorder-"))
    rows: list[tuple[str, int, float]] = []
    try:
        floor, floor_done = make_floor(workdir)
        rec, rec_done = make_recorder(workdir)
        floor(1000)  # warm up both
        rec(1000)
        floor_times: list[float] = []
        rec_times: list[float] = []
        for _ in range(args.repeats):  # interleaved: the machine's noise hits both
            floor_times.append(floor(args.n) / args.n)
            rec_times.append(rec(args.n) / args.n)
        floor_done()
        rec_done()
        rows.append(("floor: orjson.dumps + os.write (O_APPEND)", args.n, statistics.median(floor_times)))
        rows.append(("MetricsRecorder.send_epoch_end", args.n, statistics.median(rec_times)))

        slow: list[tuple[str, str, Callable[[Path], tuple[Runner, Callable[[], None]]], int]] = [
            ("fsync", "MetricsRecorder(fsync=True).send_epoch_end", lambda d: make_recorder(d, fsync=True), args.slow_n),
            ("tb", "TensorBoard SummaryWriter.add_scalar x4", make_tensorboard, args.slow_n),
            ("csv", "Lightning CSVLogger.log_metrics + save()", make_csv, args.slow_n),
            ("ws", "websocket per message (original sender)", make_websocket, args.ws_n),
        ]
        for key, label, factory, n in slow:
            if key in args.skip:
                continue
            runner, done = factory(workdir)
            try:
                runner(max(10, n // 10))  # warm up
                rows.append((label, n, median_per_message(runner, n, args.repeats)))
            finally:
                done()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    base = rows[0][2]
    print(f"per-message cost, median of {args.repeats} runs (python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print(f"{'contender':<48} {'N':>7} {'µs/msg':>10} {'× floor':>9}")
    print("-" * 77)
    for label, n, seconds in rows:
        print(f"{label:<48} {n:>7,} {seconds * 1e6:>10.2f} {seconds / base:>9.2f}")
    ratio = rows[1][2] / base
    target = 1.4
    print(f"\nMetricsRecorder / floor = {ratio:.2f} (target <= {target}): {'OK' if ratio <= target else 'OVER'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
