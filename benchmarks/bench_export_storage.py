"""``tailer export`` to object storage: MB/s to a local S3 server against a local disk.

Generates ``--runs`` run files of ``--lines`` messages each (``bench_export``'s
generator: 90 % batch_metrics, 5 % epoch_end, 5 % round_end), starts moto's S3
server on 127.0.0.1 (``moto_server``, in the dev extra), and exports the
directory, in ``--repeat`` alternating rounds, to

* a local directory (the rename path);
* ``s3://bucket/...`` on the moto server (staging keys, server-side copies, manifest);
* the same S3 prefix with ``--incremental`` after appending to one run (what a cron job pays);
* the same again with nothing changed (the manifest check alone).

It prints the median time of each and MB/s of JSONL read. moto keeps objects
in memory in a Python process on the same machine, so the S3 figures are a
floor for the protocol's cost here, not a measure of a real object store.

Usage::

    .venv/bin/python benchmarks/bench_export_storage.py [--runs 8] [--lines 25000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_export import generate  # noqa: E402
from replay.export import export  # noqa: E402
from tests._s3_helpers import S3_ENV, moto_server  # noqa: E402


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--lines", type=int, default=25_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(S3_ENV)
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        runs = tmp / "runs"
        runs.mkdir()
        for i in range(args.runs):
            generate(runs / f"run-{i}.jsonl", args.lines, seed=i)
        size = sum(p.stat().st_size for p in runs.iterdir())
        with moto_server(tmp / "moto.log") as s3:
            bucket = s3.new_bucket()
            url = f"s3://{bucket}/metrics"
            times: dict[str, list[float]] = {
                "local directory": [],
                "s3:// (moto, full)": [],
                "s3:// --incremental, 1 run grown": [],
                "s3:// --incremental, unchanged": [],
            }
            grown = runs / "run-0.jsonl"
            for round_ in range(args.repeat):
                times["local directory"].append(
                    timed(lambda r=round_: export(runs, tmp / f"out-{r}"))
                )
                times["s3:// (moto, full)"].append(
                    timed(lambda: export(runs, url, force=True, endpoint_url=s3.endpoint))
                )
                with open(grown, "ab") as out, open(runs / "run-1.jsonl", "rb") as more:
                    out.write(more.read(200_000).rpartition(b"\n")[0] + b"\n")
                times["s3:// --incremental, 1 run grown"].append(
                    timed(lambda: export(runs, url, incremental=True, endpoint_url=s3.endpoint))
                )
                times["s3:// --incremental, unchanged"].append(
                    timed(lambda: export(runs, url, incremental=True, endpoint_url=s3.endpoint))
                )
        mb = size / 1e6
        print(
            f"{args.runs} runs x {args.lines:,} lines = {mb:.1f} MB of JSONL; "
            f"median of {args.repeat} rounds"
        )
        for name, values in times.items():
            seconds = statistics.median(values)
            rate = f"{mb / seconds:7.1f} MB/s" if "incremental" not in name else ""
            print(f"  {name:<36}{seconds:7.2f} s  {rate}")


if __name__ == "__main__":
    main()
