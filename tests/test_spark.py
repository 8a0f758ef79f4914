"""A real distributed engine reads the export: PySpark (local mode) on the hive dataset.

Needs Java (``scripts/setup.sh --dev`` installs Debian's ``default-jre-headless``);
skipped, saying so, only where no ``java`` can be found.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from replay import read_metrics
from replay.export import export
from tests._replay_helpers import line, write_run


def _java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and Path(home, "bin", "java").exists():
        return str(Path(home, "bin", "java"))
    return shutil.which("java")


pytestmark = pytest.mark.skipif(
    _java() is None,
    reason="no Java runtime found (JAVA_HOME or java on PATH): PySpark cannot start; "
    "scripts/setup.sh --dev installs default-jre-headless",
)


def _runs(directory: Path) -> Path:
    """Three runs, one of them written by two ranks, with finite values only."""
    for name, epochs in (("alpha", 6), ("beta-2", 4)):
        write_run(
            directory / f"{name}.jsonl",
            [
                line(
                    "epoch_end",
                    {"epoch": e, "phase": "train", "metrics": {"loss": 1 / (e + 1), "acc": e / 10}},
                    at=e,
                )
                for e in range(epochs)
            ],
        )
    for rank in (0, 1):
        write_run(
            directory / f"ddp.rank{rank}.jsonl",
            [
                line("batch_metrics", {"step": s, "loss": s * 0.5 + rank, "epoch": 0}, at=s)
                for s in range(5)
            ],
        )
    return directory


@pytest.mark.slow
def test_spark_reads_the_exported_dataset_and_aggregates_like_pandas(tmp_path: Path) -> None:
    """Spark's per-run, per-metric count/sum/min/max over the dataset equal pandas' on read_metrics."""
    pyspark = pytest.importorskip("pyspark", reason="pyspark is in the dev extra")
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    runs = _runs(tmp_path / "runs")
    dest = tmp_path / "dataset"
    export(runs, dest)

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    started = time.perf_counter()
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("runtail-test")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.sql.codegen.wholeStage", "false")  # compiling costs more than it saves here
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
        .getOrCreate()
    )
    try:
        session_time = time.perf_counter() - started
        started = time.perf_counter()
        frame = spark.read.parquet(str(dest))
        assert {"experiment_id", "rank", "seq", "metric", "value"} <= set(frame.columns)
        rows = (
            frame.groupBy("experiment_id", "metric")
            .agg(
                F.count("value").alias("n"),
                F.sum("value").alias("total"),
                F.min("value").alias("low"),
                F.max("value").alias("high"),
                F.countDistinct("rank").alias("ranks"),
                # Columns written with delta encodings (seq, step, timestamp): read exactly.
                F.sum("seq").alias("seqs"),
                F.sum("step").alias("steps"),
                F.max("timestamp").alias("last"),
            )
            .collect()
        )
        read_time = time.perf_counter() - started
    finally:
        spark.stop()
    got = {
        (r["experiment_id"], r["metric"]): (r["n"], r["total"], r["low"], r["high"], r["ranks"])
        for r in rows
    }
    exact = {
        (r["experiment_id"], r["metric"]): (r["seqs"], r["steps"], r["last"].timestamp())
        for r in rows
    }

    metrics = read_metrics(runs)
    grouped = metrics.groupby(["experiment_id", "metric"])
    want = {
        key: (
            len(group),
            group["value"].sum(),
            group["value"].min(),
            group["value"].max(),
            group["rank"].nunique(),
        )
        for key, group in grouped
    }
    want_exact = {
        key: (
            group["seq"].sum(),
            None if group["step"].isna().all() else group["step"].sum(),
            group["timestamp"].max().timestamp(),
        )
        for key, group in grouped
    }
    assert exact == want_exact
    assert got.keys() == want.keys()
    for key, (n, total, low, high, ranks) in want.items():
        g = got[key]
        assert g[0] == n and g[4] == ranks, key
        assert all(
            math.isclose(a, b, rel_tol=1e-12)
            for a, b in zip(g[1:4], (total, low, high), strict=True)
        )
    assert got[("ddp", "loss")][4] == 2  # one run, two ranks
    print(
        f"pyspark {pyspark.__version__}: session {session_time:.1f} s, "
        f"read + aggregate {read_time:.1f} s ({len(metrics)} rows)"
    )
