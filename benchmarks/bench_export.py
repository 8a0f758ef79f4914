"""Benchmark ``tailer export`` and ``replay.read_metrics`` against ``pyarrow.json.read_json``.

Reads ``--log FILE`` (issue 13's figures use the file made by
``../shared/bench/make_mixed_log.py``: 1,000,000 lines, 216 MB), or generates a
log of ``--lines`` messages (90 % batch_metrics, 5 % epoch_end, 5 % round_end)
into a temporary directory, deleted afterwards. Then it measures, each in its
own subprocess so its peak RSS is its own, in ``--repeat`` rounds that
alternate the contenders (a burst of load elsewhere on a shared machine hits
them all alike), and reports medians:

* ``pyarrow.json.read_json(LOG)``: the baseline, Arrow's multi-threaded parser;
* ``tailer export LOG --out X.parquet`` (Arrow path) and the same export read
  line by line (the careful path, what export did before issue 13);
* ``replay.read_metrics(LOG)`` (Arrow path, and careful with ``--careful``);
* ``tailer export --table messages`` and ``pandas.read_json(lines=True)``
  unless ``--skip-extra``.

Peak RSS is the child's ``ru_maxrss`` (``resource.getrusage(RUSAGE_CHILDREN)``
after a fresh ``fork`` per measurement). Targets: export within 1.2x the time of
``read_json`` at most 300 MB peak RSS; ``read_metrics`` within 1.5x at most 1 GB.

Usage::

    .venv/bin/python benchmarks/bench_export.py [--log FILE | --lines N] [--repeat R]
        [--careful] [--skip-extra]
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import statistics
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
    "replay.read_metrics (careful)": (
        "import sys, functools; sys.path.insert(0, {root!r}); import replay.tables as r; "
        "r.metric_batches = functools.partial(r.metric_batches, careful=True); "
        "df = r.read_metrics(sys.argv[1]); print(len(df))"
    ),
    "tailer export (careful)": (
        "import sys, functools; sys.path.insert(0, {root!r}); import pyarrow as pa; "
        "pa.set_memory_pool(pa.system_memory_pool()); import replay.tables as r; "
        "r.metric_batches = functools.partial(r.metric_batches, careful=True); "
        "from replay.export import export; "
        "print(export(sys.argv[1], sys.argv[2], force=True).rows)"
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
    parser.add_argument("--log", type=Path, help="an existing run log to read (not deleted)")
    parser.add_argument("--lines", type=int, default=1_000_000, help="messages in a generated log")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--careful", action="store_true", help="also the line-by-line path")
    parser.add_argument(
        "--skip-extra", action="store_true", help="leave out --table messages and pandas"
    )
    parser.add_argument("--compression", default="zstd", help="export --compression")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        if args.log is not None:
            log = args.log
            size = log.stat().st_size
            with open(log, "rb") as file:
                count = sum(block.count(b"\n") for block in iter(lambda: file.read(1 << 24), b""))
            print(f"log: {log} ({count:,} lines, {size / 1e6:.0f} MB)")
        else:
            log = tmp / "bench-run.jsonl"
            t = time.perf_counter()
            size = generate(log, args.lines)
            print(
                f"log: {args.lines:,} lines, {size / 1e6:.0f} MB "
                f"(generated in {time.perf_counter() - t:.1f} s)"
            )
        out = tmp / "out.parquet"
        export_argv = [sys.executable, "-m", "tailer", "export", str(log), "--out", str(out)]
        export_argv += ["--force", "--compression", args.compression]

        def snippet(name: str, *extra: str) -> list[str]:
            code = SNIPPETS[name].format(root=str(ROOT))
            return [sys.executable, "-c", code, str(log), *extra]

        runs: dict[str, list[str]] = {
            "pyarrow.json.read_json": snippet("pyarrow.json.read_json"),
            "tailer export (metrics)": export_argv,
            "replay.read_metrics": snippet("replay.read_metrics"),
        }
        if args.careful:
            runs["tailer export (careful)"] = snippet("tailer export (careful)", str(out))
            runs["replay.read_metrics (careful)"] = snippet("replay.read_metrics (careful)")
        if not args.skip_extra:
            runs["tailer export --table messages"] = [*export_argv, "--table", "messages"]
            runs["pandas.read_json(lines=True)"] = snippet("pandas.read_json(lines=True)")
        # Rounds alternate the contenders; each ratio is taken within its round (against
        # that round's read_json), and medians over rounds are reported.
        results: dict[str, list[tuple[float, float, float, str]]] = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, argv in runs.items():
                results[name].append(measure(argv))

        def median(name: str, i: int) -> float:
            return statistics.median(r[i] for r in results[name])

        def ratio(name: str) -> float:
            base = results["pyarrow.json.read_json"]
            return statistics.median(r[0] / b[0] for r, b in zip(results[name], base, strict=True))

        base_cpu = median("pyarrow.json.read_json", 1)
        print()
        print(
            f"load average after the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
            f"({os.cpu_count()} CPUs); {args.repeat} alternating rounds, medians"
        )
        print(
            f"{'what':32} {'seconds':>8} {'x read_json':>11} {'CPU s':>7} {'x CPU':>6} "
            f"{'peak RSS MB':>11}  output"
        )
        for name in runs:
            seconds, cpu, rss = median(name, 0), median(name, 1), max(r[2] for r in results[name])
            print(
                f"{name:32} {seconds:8.2f} {ratio(name):11.2f} {cpu:7.2f} {cpu / base_cpu:6.2f} "
                f"{rss:11.0f}  {results[name][-1][3][-50:]}"
            )
        print()
        export_rss = max(r[2] for r in results["tailer export (metrics)"])
        print(
            f"export / read_json time: {ratio('tailer export (metrics)'):.2f} (target <= 1.2); "
            f"export peak RSS: {export_rss:.0f} MB (target <= 300)"
        )
        metrics_rss = max(r[2] for r in results["replay.read_metrics"])
        print(
            f"read_metrics / read_json time: {ratio('replay.read_metrics'):.2f} (target <= 1.5); "
            f"read_metrics peak RSS: {metrics_rss:.0f} MB (target <= 1000)"
        )
        print("per round (seconds):")
        for name in runs:
            print(f"  {name:32} " + " ".join(f"{r[0]:6.2f}" for r in results[name]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
