"""What recording one epoch_end message with 4 metrics costs, against the alternatives.

Run from the repository root::

    .venv/bin/python benchmarks/bench_recorder.py            # N=20,000, 5 runs each
    .venv/bin/python benchmarks/bench_recorder.py --quick    # smaller N, for a smoke test

Every contender records the same message (epoch, phase, 4 float metrics), N
times per run; the table shows the median over the runs of the time per
message and its ratio to the floor, as CPU time of this process (user +
system: the steadiest figure on a shared machine) and as wall time. Runs of the fast contenders are
interleaved (floor, recorder, floor, recorder, ...) so a noisy shared machine
slows both alike; compare ratios, not absolute times across machines.

Contenders:

- ``floor``: ``orjson.dumps`` of the finished message (its timestamp made once,
  outside the loop) plus one ``os.write`` on an ``O_APPEND`` descriptor: the
  least any line-per-message recorder can do.
- ``MetricsRecorder.send_epoch_end``: runtail (timestamp, lock, non-finite
  check and write included).
- ``floor + utc_timestamp() + lock``: the floor plus the two costs every
  recorded message must pay on top (a fresh timestamp, the writer lock); it
  splits the recorder's overhead into what is needed and what is left.
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

Runner = Callable[[int], tuple[float, float]]  # n -> (CPU seconds, wall seconds) for n messages


def make_floor(workdir: Path) -> tuple[Runner, Callable[[], None]]:
    fd = os.open(workdir / "floor.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    dumps, write, option = orjson.dumps, os.write, orjson.OPT_APPEND_NEWLINE
    stamp = utc_timestamp()

    def run(n: int) -> float:
        cpu, wall = time.process_time(), time.perf_counter()
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
        return time.process_time() - cpu, time.perf_counter() - wall

    return run, lambda: os.close(fd)


def make_floor_plus(workdir: Path) -> tuple[Runner, Callable[[], None]]:
    """The floor plus the two things every recorded message needs on top: a fresh
    timestamp and the writer lock. Shown to split the recorder's overhead."""
    import threading

    fd = os.open(workdir / "floor-plus.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    dumps, write, option = orjson.dumps, os.write, orjson.OPT_APPEND_NEWLINE
    lock = threading.Lock()

    def run(n: int) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        for epoch in range(n):
            line = dumps(
                {
                    "type": "epoch_end",
                    "timestamp": utc_timestamp(),
                    "data": {"epoch": epoch, "phase": "train", "metrics": METRICS},
                },
                option=option,
            )
            with lock:
                write(fd, line)
        return time.process_time() - cpu, time.perf_counter() - wall

    return run, lambda: os.close(fd)


def make_recorder(workdir: Path, **options: object) -> tuple[Runner, Callable[[], None]]:
    rec = MetricsRecorder(workdir, "recorder" + "".join(f"-{k}" for k in options), **options)  # type: ignore[arg-type]
    send = rec.send_epoch_end

    def run(n: int) -> float:
        cpu, wall = time.process_time(), time.perf_counter()
        for epoch in range(n):
            send(epoch, "train", METRICS)
        return time.process_time() - cpu, time.perf_counter() - wall

    def done() -> None:
        rec.close()
        assert rec.lost == 0

    return run, done


def make_tensorboard(workdir: Path) -> tuple[Runner, Callable[[], None]]:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(workdir / "tb"))

    def run(n: int) -> float:
        cpu, wall = time.process_time(), time.perf_counter()
        for epoch in range(n):
            for name, value in METRICS.items():
                writer.add_scalar(f"train/{name}", value, epoch)
        writer.flush()
        return time.process_time() - cpu, time.perf_counter() - wall

    return run, writer.close


def make_csv(workdir: Path) -> tuple[Runner, Callable[[], None]]:
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(str(workdir / "csv"), name="bench")

    def run(n: int) -> float:
        cpu, wall = time.process_time(), time.perf_counter()
        for epoch in range(n):
            logger.log_metrics(
                {"epoch": epoch, **{f"train_{k}": v for k, v in METRICS.items()}}, step=epoch
            )
            logger.save()
        return time.process_time() - cpu, time.perf_counter() - wall

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
        cpu, wall = time.process_time(), time.perf_counter()
        for epoch in range(n):
            message = {
                "type": "epoch_end",
                "timestamp": utc_timestamp(),
                "data": {"epoch": epoch, "phase": "train", "metrics": METRICS},
            }
            asyncio.run(send(json.dumps(message)))
        return time.process_time() - cpu, time.perf_counter() - wall

    def done() -> None:
        relay.terminate()
        relay.wait(timeout=10)

    return run, done


def per_message(runner: Runner, n: int, repeats: int) -> tuple[float, float]:
    """Median CPU and wall seconds per message over ``repeats`` runs of ``n`` messages."""
    runs = [runner(n) for _ in range(repeats)]
    return statistics.median(c for c, _ in runs) / n, statistics.median(w for _, w in runs) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="messages per run (fast contenders)")
    parser.add_argument(
        "--slow-n", type=int, default=2_000, help="messages per run (fsync, TensorBoard, CSV)"
    )
    parser.add_argument(
        "--ws-n", type=int, default=300, help="messages per run (WebSocket per message)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="runs per contender (the median is shown)"
    )
    parser.add_argument("--quick", action="store_true", help="N=2,000 / 200 / 50, 3 runs")
    parser.add_argument(
        "--skip", nargs="*", default=[], help="contenders to leave out: fsync tb csv ws"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.slow_n, args.ws_n, args.repeats = 2_000, 200, 50, 3
    warnings.simplefilter("ignore")

    workdir = Path(tempfile.mkdtemp(prefix="bench-recorder-"))
    rows: list[tuple[str, int, float, float]] = []
    try:
        floor, floor_done = make_floor(workdir)
        rec, rec_done = make_recorder(workdir)
        plus, plus_done = make_floor_plus(workdir)
        for warm in (floor, rec, plus):
            warm(2000)
        floor_runs: list[tuple[float, float]] = []
        rec_runs: list[tuple[float, float]] = []
        plus_runs: list[tuple[float, float]] = []
        for _ in range(args.repeats):  # interleaved: the machine's noise hits all alike
            floor_runs.append(floor(args.n))
            rec_runs.append(rec(args.n))
            plus_runs.append(plus(args.n))
        floor_done()
        rec_done()
        plus_done()
        for label, runs in (
            ("floor: orjson.dumps + os.write (O_APPEND)", floor_runs),
            ("MetricsRecorder.send_epoch_end", rec_runs),
            ("floor + utc_timestamp() + lock", plus_runs),
        ):
            cpu = statistics.median(c for c, _ in runs) / args.n
            wall = statistics.median(w for _, w in runs) / args.n
            rows.append((label, args.n, cpu, wall))

        slow: list[tuple[str, str, Callable[[Path], tuple[Runner, Callable[[], None]]], int]] = [
            (
                "fsync",
                "MetricsRecorder(fsync=True).send_epoch_end",
                lambda d: make_recorder(d, fsync=True),
                args.slow_n,
            ),
            ("tb", "TensorBoard SummaryWriter.add_scalar x4", make_tensorboard, args.slow_n),
            ("csv", "Lightning CSVLogger.log_metrics + save()", make_csv, args.slow_n),
            ("ws", "websocket per message (original sender) *", make_websocket, args.ws_n),
        ]
        for key, label, factory, n in slow:
            if key in args.skip:
                continue
            runner, done = factory(workdir)
            try:
                runner(max(10, n // 10))  # warm up
                rows.append((label, n, *per_message(runner, n, args.repeats)))
            finally:
                done()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    cpu_base, wall_base = rows[0][2], rows[0][3]
    print(
        f"per-message cost, median of {args.repeats} runs (python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs; CPU = this process's user + system time)"
    )
    print(f"{'contender':<46} {'N':>7} {'CPU µs':>9} {'× floor':>8} {'wall µs':>10} {'× floor':>8}")
    print("-" * 92)
    for label, n, cpu, wall in rows:
        print(
            f"{label:<46} {n:>7,} {cpu * 1e6:>9.2f} {cpu / cpu_base:>8.2f} "
            f"{wall * 1e6:>10.2f} {wall / wall_base:>8.2f}"
        )
    if "ws" not in args.skip:
        print(
            "* its CPU column leaves out the relay process; the training loop waits the wall time."
        )
    cpu_ratio, wall_ratio = rows[1][2] / cpu_base, rows[1][3] / wall_base
    target = 1.4
    verdict = "OK" if cpu_ratio <= target else "OVER"
    print(
        f"\nMetricsRecorder / floor: CPU {cpu_ratio:.2f} (target <= {target}: {verdict}), "
        f"wall {wall_ratio:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
