"""Benchmark ``tailer export`` and ``replay.read_metrics`` against the obvious baselines.

Generates a log of ``--lines`` messages (default 1,000,000, about 200 MB: 90 %
batch_metrics, 5 % epoch_end, 5 % round_end, all with finite values so the
baselines can read it) into a temporary directory, deleted afterwards, then
measures, each in its own subprocess so its peak RSS is its own:

* ``tailer export LOG --out X.parquet`` against ``pyarrow.json.read_json(LOG)``;
* ``replay.read_metrics(LOG)`` against ``pandas.read_json(LOG, lines=True)``.

Peak RSS is the child's ``ru_maxrss`` (``resource.getrusage(RUSAGE_CHILDREN)``
after a fresh ``fork`` per measurement). Targets: export within 1.2x the time
of ``read_json``, at most 300 MB peak RSS.

Usage::

    .venv/bin/python benchmarks/bench_export.py [--lines N] [--repeat R] [--skip-pandas]
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recorder.format import encode_message, format_timestamp  # noqa: E402


def generate(path: Path, lines: int, *, seed: int = 0) -> int:
    """Write a mixed training log of ``lines`` messages; return its size in bytes."""
    rng = random.Random(seed)
    start = 1_761_131_416.0
    step = 0
    epoch = 0
    round_ = 1
    chunk: list[bytes] = []
    size = 0
    with open(path, "wb") as out:
        for i in range(lines):
            timestamp = format_timestamp(start + i * 0.01)
            kind = rng.random()
            if kind < 0.90:
                step += 1
                data = {
                    "step": step,
                    "batch_idx": step % 500,
                    "loss": rng.random(),
                    "accuracy": rng.random(),
                    "recall": rng.random(),
                    "f1": rng.random(),
                    "epoch": epoch,
                }
                line = encode_message("batch_metrics", data, timestamp=timestamp)
            elif kind < 0.95:
                data = {
                    "epoch": epoch,
                    "phase": "val" if i % 2 else "train",
                    "metrics": {
                        "loss": rng.random(),
                        "accuracy": rng.random(),
                        "precision": rng.random(),
                        "recall": rng.random(),
                        "f1": rng.random(),
                        "auroc": rng.random(),
                    },
                }
                epoch += i % 2
                line = encode_message("epoch_end", data, timestamp=timestamp)
            else:
                data = {
                    "round": round_,
                    "total_rounds": 1_000_000,
                    "fit_metrics": {"loss": rng.random(), "accuracy": rng.random()},
                    "eval_metrics": {
                        "loss": rng.random(),
                        "accuracy": rng.random(),
                        "f1": rng.random(),
                    },
                }
                round_ += 1
                line = encode_message("round_end", data, timestamp=timestamp)
            chunk.append(line)
            if len(chunk) >= 10_000:
                block = b"".join(chunk)
                out.write(block)
                size += len(block)
                chunk.clear()
        block = b"".join(chunk)
        out.write(block)
        size += len(block)
    return size


# Each measurement runs in a fresh interpreter; the code prints its row count.
SNIPPETS = {
    "pyarrow.json.read_json": (
        "import pyarrow.json as j, sys; t = j.read_json(sys.argv[1]); print(t.num_rows)"
    ),
    "replay.read_metrics": (
        "import sys; sys.path.insert(0, {root!r}); import replay.tables as r; "
        "df = r.read_metrics(sys.argv[1]); print(len(df))"
    ),
    "pandas.read_json(lines=True)": (
        "import pandas as pd, sys; df = pd.read_json(sys.argv[1], lines=True); print(len(df))"
    ),
}


def measure(argv: list[str]) -> tuple[float, float, float, str]:
    """Run ``argv`` in a child; return (seconds, CPU seconds, peak RSS in MB, its stdout)."""
    # RUSAGE_CHILDREN's ru_maxrss is the largest of all children waited for so far,
    # so each measurement runs under a fresh intermediate process that reports it.
    wrapper = (
        "import resource, subprocess, sys, time;"
        "t = time.perf_counter();"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "dt = time.perf_counter() - t;"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN);"
        "sys.stderr.write(p.stderr);"
        "print(dt, u.ru_utime + u.ru_stime, u.ru_maxrss, p.returncode, repr(p.stdout.strip()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper, *argv], capture_output=True, text=True, check=True
    )
    seconds, cpu, rss_kb, code, stdout = out.stdout.split(" ", 4)
    if int(code) != 0:
        raise RuntimeError(f"{argv} failed ({code}): {out.stderr}")
    return float(seconds), float(cpu), int(rss_kb) / 1024, ast.literal_eval(stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="messages in the log")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (best kept)")
    parser.add_argument("--skip-pandas", action="store_true", help="leave out pandas.read_json")
    parser.add_argument("--compression", default="zstd", help="export --compression")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        log = tmp / "bench-run.jsonl"
        t = time.perf_counter()
        size = generate(log, args.lines)
        print(
            f"log: {args.lines:,} lines, {size / 1e6:.0f} MB "
            f"(generated in {time.perf_counter() - t:.1f} s)"
        )
        out = tmp / "out.parquet"
        runs: dict[str, list[str]] = {
            "tailer export (metrics)": [
                sys.executable,
                "-m",
                "tailer",
                "export",
                str(log),
                "--out",
                str(out),
                "--force",
                "--compression",
                args.compression,
            ],
            "tailer export --table messages": [
                sys.executable,
                "-m",
                "tailer",
                "export",
                str(log),
                "--out",
                str(out),
                "--force",
                "--table",
                "messages",
                "--compression",
                args.compression,
            ],
            "pyarrow.json.read_json": [
                sys.executable,
                "-c",
                SNIPPETS["pyarrow.json.read_json"],
                str(log),
            ],
            "replay.read_metrics": [
                sys.executable,
                "-c",
                SNIPPETS["replay.read_metrics"].format(root=str(ROOT)),
                str(log),
            ],
        }
        if not args.skip_pandas:
            runs["pandas.read_json(lines=True)"] = [
                sys.executable,
                "-c",
                SNIPPETS["pandas.read_json(lines=True)"],
                str(log),
            ]
        # Rounds interleave the measurements, so a burst of load elsewhere on a shared
        # machine hits all of them alike; the best (least disturbed) of each is kept.
        results: dict[str, tuple[float, float, float, str]] = {}
        for _ in range(args.repeat):
            for name, argv in runs.items():
                result = measure(argv)
                if name not in results or result[0] < results[name][0]:
                    results[name] = result

        base_t, base_cpu, _, _ = results["pyarrow.json.read_json"]
        print()
        print(
            f"load average during the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)"
        )
        print(
            f"{'what':32} {'seconds':>8} {'x read_json':>11} {'CPU s':>7} {'x CPU':>6} "
            f"{'peak RSS MB':>11}  output"
        )
        for name, (seconds, cpu, rss, stdout) in results.items():
            print(
                f"{name:32} {seconds:8.2f} {seconds / base_t:11.2f} {cpu:7.2f} {cpu / base_cpu:6.2f} "
                f"{rss:11.0f}  {stdout[-50:]}"
            )
        export_t, _, export_rss, _ = results["tailer export (metrics)"]
        print()
        print(
            f"export / read_json time: {export_t / base_t:.2f} (target <= 1.2); "
            f"export peak RSS: {export_rss:.0f} MB (target <= 300)"
        )
        if "pandas.read_json(lines=True)" in results:
            rm_t, _, rm_rss, _ = results["replay.read_metrics"]
            pd_t, _, pd_rss, _ = results["pandas.read_json(lines=True)"]
            print(
                f"read_metrics / pandas.read_json: time {rm_t / pd_t:.2f}, peak RSS {rm_rss / pd_rss:.2f}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
