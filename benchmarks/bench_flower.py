"""What recording a federated run costs: the flower_digits example with and without runtail.

Two measurements, each against a baseline taken in the same invocation:

1. End to end: ``python -m examples.flower_digits`` (5 rounds, 3 clients,
   Ray simulation) run as a subprocess with ``--record none`` (plain FedAvg),
   ``--record server`` (RecordingStrategy only) and ``--record all`` (plus
   every client's RecorderCallback), interleaved, ``--repeats`` times each;
   medians of the simulation's wall time (as the example reports it, so
   Python and import start-up are left out) and of the whole process.
2. The wrapper alone: FedAvg on an in-process grid of ``--nodes`` nodes that
   answer instantly, plain vs wrapped, so the per-round cost of the
   recording is not hidden by training time. Recording goes to a real file.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_flower.py            # both, 3 repeats
    .venv/bin/python benchmarks/bench_flower.py --skip-example
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def _example(record: str, log_dir: Path, rounds: int) -> tuple[float, float]:
    """One example run: (simulation seconds as it reports them, process seconds)."""
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.flower_digits",
            "--rounds",
            str(rounds),
            "--quiet",
            "--record",
            record,
            "--log-dir",
            str(log_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    process = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"example failed ({record}):\n{done.stdout}\n{done.stderr}")
    match = re.search(r"clients in ([0-9.]+) s", done.stdout)
    if match is None:
        raise SystemExit(f"no timing in the example's output:\n{done.stdout}")
    return float(match.group(1)), process


def bench_example(repeats: int, rounds: int) -> None:
    variants = ("none", "server", "all")
    runs: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for variant in variants:  # interleaved, so drift on a shared machine hits all alike
                runs[variant].append(_example(variant, Path(tmp), rounds))
                sim, proc = runs[variant][-1]
                print(
                    f"  run {i + 1}/{repeats} record={variant:<6} simulation {sim:6.1f} s  "
                    f"process {proc:6.1f} s",
                    flush=True,
                )
    base = statistics.median(s for s, _ in runs["none"])
    print(f"\nflower_digits, {rounds} rounds, 3 clients, medians of {repeats}:")
    print(f"  {'record':<8} {'simulation s':>12} {'process s':>10} {'vs none':>8}")
    for variant in variants:
        sim = statistics.median(s for s, _ in runs[variant])
        proc = statistics.median(p for _, p in runs[variant])
        print(f"  {variant:<8} {sim:12.1f} {proc:10.1f} {sim / base:8.3f}")
    spread = max(s for s, _ in runs["none"]) - min(s for s, _ in runs["none"])
    print(f"  (run-to-run spread of the baseline: {spread:.1f} s)")


def bench_wrapper(nodes: int, rounds: int, repeats: int) -> None:
    import logging
    import random

    import numpy as np
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from recorder.flower import RecordingStrategy
    from recorder.recorder import MetricsRecorder

    logging.getLogger("flwr").setLevel(logging.WARNING)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    node_ids = [random.getrandbits(64) for _ in range(nodes)]
    weights = [np.full((64, 64), 0.5, dtype=np.float32), np.zeros(64, dtype=np.float32)]

    class InstantGrid(Grid):
        def set_run(self, run):  # type: ignore[no-untyped-def]
            pass

        @property
        def run(self):  # type: ignore[no-untyped-def]
            return None

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
            return Message(content, dst_node_id, message_type)

        def get_node_ids(self):  # type: ignore[no-untyped-def]
            return node_ids

        def push_messages(self, messages):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            replies = []
            for m in messages:
                metrics = MetricRecord({"loss": 0.5, "acc": 0.9, "num-examples": 100})
                content = RecordDict({"metrics": metrics})
                if m.metadata.message_type == "train":
                    content["arrays"] = ArrayRecord(weights)
                replies.append(Message(content, reply_to=m))
            return replies

    class TimedRecorder:
        """The real MetricsRecorder, counting messages."""

        def __init__(self, log_dir: Path) -> None:
            self.inner = MetricsRecorder(log_dir)
            self.path = self.inner.path
            self.count = 0

        def record(self, type, data=None):  # type: ignore[no-untyped-def]
            self.inner.record(type, data)
            self.count += 1

    # Time every recording step of the wrapper (reading the messages and writing them).
    recording = {"seconds": 0.0}
    safely = RecordingStrategy._safely

    def timed_safely(self, fn, *args):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        safely(self, fn, *args)
        recording["seconds"] += time.perf_counter() - started

    RecordingStrategy._safely = timed_safely  # type: ignore[method-assign]

    def once(wrapped: bool, log_dir: Path) -> tuple[float, float, int]:
        strategy = FedAvg(min_available_nodes=nodes)
        arrays = ArrayRecord(weights)
        started = time.perf_counter()
        if not wrapped:
            strategy.start(grid=InstantGrid(), initial_arrays=arrays, num_rounds=rounds)
            return time.perf_counter() - started, 0.0, 0
        rec = TimedRecorder(log_dir)
        recording["seconds"] = 0.0
        RecordingStrategy(strategy, rec).start(
            grid=InstantGrid(), initial_arrays=arrays, num_rounds=rounds
        )
        seconds = time.perf_counter() - started
        rec.inner.close()
        return seconds, recording["seconds"], rec.count

    with tempfile.TemporaryDirectory() as tmp:
        once(True, Path(tmp))  # warm up imports and caches
        plain, wrapped = [], []
        for _ in range(repeats):  # interleaved: load from other processes hits both alike
            plain.append(once(False, Path(tmp))[0])
            wrapped.append(once(True, Path(tmp)))
    p = statistics.median(plain)
    w = statistics.median(t for t, _, _ in wrapped)
    in_record = statistics.median(r for _, r, _ in wrapped)
    lines = wrapped[0][2]
    print(
        f"\nFedAvg on an instant in-process grid, {nodes} nodes, {rounds} rounds, {repeats} runs each:"
    )
    print(f"  plain    median {p * 1000:7.1f} ms  min {min(plain) * 1000:7.1f} ms")
    print(
        f"  wrapped  median {w * 1000:7.1f} ms  min {min(t for t, _, _ in wrapped) * 1000:7.1f} ms"
        f"  ({lines} messages per run)"
    )
    print(
        f"  time in the wrapper's recording steps (reading replies, writing lines): "
        f"{in_record * 1000:.1f} ms per run = "
        f"{in_record / rounds * 1000:.2f} ms per round of {nodes} replies, "
        f"{in_record / max(lines, 1) * 1e6:.1f} us per message"
    )
    print(f"  wrapped/plain (medians): {w / p:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="example runs per variant (3)")
    parser.add_argument("--rounds", type=int, default=5, help="example rounds (5)")
    parser.add_argument("--skip-example", action="store_true", help="only the in-process part")
    parser.add_argument("--nodes", type=int, default=100, help="in-process grid nodes (100)")
    args = parser.parse_args()
    bench_wrapper(args.nodes, rounds=20, repeats=9)
    if not args.skip_example:
        bench_example(args.repeats, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
