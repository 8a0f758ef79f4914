"""What the system-metrics sampler costs the training loop.

Run from the repository root::

    .venv/bin/python benchmarks/bench_system_metrics.py           # 9 rounds of 2 s per setting
    .venv/bin/python benchmarks/bench_system_metrics.py --quick   # 3 rounds of 1 s

The "training loop" is a small torch MLP's forward, backward and SGD step on
one CPU thread (pure Python arithmetic where torch is missing), recording
``batch_metrics`` every step. Each round runs the loop for a fixed time with
the sampler off, at the default interval (10 s), and at 0.1 s (a hundred
times more often than the default, to make any cost visible); settings are
interleaved round by round, so a noisy shared machine slows them alike. The
table shows the median steps per second and its ratio to "off", and the
training thread's own CPU time per step (``time.thread_time``: steadier on a
loaded machine, and what the sampler would add to that thread) — compare
ratios, not absolute figures across machines. It also prints what one sample
costs the sampler's own thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recorder import MetricsRecorder  # noqa: E402
from recorder.system import SystemMetricsSampler  # noqa: E402


def make_step() -> tuple[str, Callable[[], float]]:
    try:
        import torch
    except ImportError:

        def python_step() -> float:
            return sum(i * 0.5 for i in range(20_000))

        return "pure Python (20k multiply-adds)", python_step
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))

    def torch_step() -> float:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return "torch MLP 64-256-10, batch 64, 1 thread", torch_step


def run_loop(
    step: Callable[[], float], seconds: float, interval: float | None
) -> tuple[float, float, int]:
    """Steps per wall second, training-thread CPU µs per step, and samples taken, for
    ``seconds`` with the sampler at ``interval`` (None: off)."""
    with tempfile.TemporaryDirectory() as tmp:
        recorder = MetricsRecorder(tmp, "bench")
        if interval is not None:
            recorder.start_system_metrics(interval=interval)
        n = 0
        cpu_started = time.thread_time()
        started = time.perf_counter()
        end = started + seconds
        while time.perf_counter() < end:
            loss = step()
            recorder.send_batch_metrics(n, n, loss, 0.5, 0)
            n += 1
        elapsed = time.perf_counter() - started
        cpu = time.thread_time() - cpu_started
        samples = recorder._sampler.samples if recorder._sampler is not None else 0
        recorder.close()
    return n / elapsed, cpu / n * 1e6, samples


def sample_cost(n: int = 200) -> float:
    """Milliseconds one sample takes on the sampler's thread (psutil and NVML calls, one write)."""
    with tempfile.TemporaryDirectory() as tmp:
        recorder = MetricsRecorder(tmp, "cost")
        sampler = SystemMetricsSampler(recorder, 1.0)
        sampler.sample_once()  # primes psutil and NVML
        started = time.perf_counter()
        for _ in range(n):
            sampler.sample_once()
        cost = (time.perf_counter() - started) / n * 1000
        recorder.close()
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, seconds = (3, 1.0) if args.quick else (9, 2.0)
    label, step = make_step()
    settings: dict[str, float | None] = {"off": None, "every 10 s": 10.0, "every 0.1 s": 0.1}
    rates: dict[str, list[float]] = {name: [] for name in settings}
    cpus: dict[str, list[float]] = {name: [] for name in settings}
    samples: dict[str, int] = dict.fromkeys(settings, 0)
    for _ in range(2):
        step()  # warm up
    names = list(settings)
    for round_ in range(rounds):
        shift = round_ % len(names)  # each setting goes first in turn: no order bias
        for name in names[shift:] + names[:shift]:
            rate, cpu, taken = run_loop(step, seconds, settings[name])
            rates[name].append(rate)
            cpus[name].append(cpu)
            samples[name] += taken
    print(f"training step: {label}; {rounds} rounds x {seconds:.0f} s per setting")
    print(
        "wall: steps/s and its ratio to off (median of per-round ratios: noisy on a shared machine)"
    )
    print("cpu: the training thread's own CPU time per step (what the sampler could add to it)")
    print(
        f"{'sampler':<14}{'steps/s':>9}{'wall vs off':>13}{'cpu us/step':>13}{'cpu vs off':>12}{'samples':>9}"
    )
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(rates[name], rates["off"], strict=True))
        cpu_ratio = statistics.median(a / b for a, b in zip(cpus[name], cpus["off"], strict=True))
        print(
            f"{name:<14}{statistics.median(rates[name]):>9.0f}{ratio:>13.3f}"
            f"{statistics.median(cpus[name]):>13.0f}{cpu_ratio:>12.3f}{samples[name]:>9}"
        )
    print(f"one sample on the sampler's thread: {sample_cost():.2f} ms")


if __name__ == "__main__":
    main()
