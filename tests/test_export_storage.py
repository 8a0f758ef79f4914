"""``tailer export --out URL``: object storage (a real S3 server, moto's), file:// and --incremental."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow.dataset as ds
import pytest

import replay.export as export_module
from replay._manifest import MANIFEST_NAME
from replay.export import ExportError, export
from replay.tables import SkippedLinesWarning, read_metrics
from tests._replay_helpers import line, mixed_run, write_run
from tests._s3_helpers import S3_ENV, S3Server, moto_server
from tests.test_export_cli import tailer as cli

KEY = ["experiment_id", "rank", "seq", "metric"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedLinesWarning)
        yield


def make_runs(runs: Path) -> Path:
    """Two plain runs and one run written by two ranks."""
    mixed_run(runs / "alpha.jsonl")
    mixed_run(runs / "beta.jsonl", epochs=5)
    for rank in (0, 1):
        write_run(
            runs / f"ddp.rank{rank}.jsonl",
            [line("epoch_end", {"epoch": e, "metrics": {"loss": e + rank}}) for e in range(4)],
        )
    return runs


def append(path: Path, *lines: bytes) -> None:
    with open(path, "ab") as file:
        file.write(b"".join(lines))


def sorted_frame(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    frame = frame.assign(experiment_id=frame["experiment_id"].astype(str))[columns]
    return frame.sort_values(KEY, kind="stable").reset_index(drop=True)


def read_s3_dataset(s3: S3Server, path: str) -> pd.DataFrame:
    table = ds.dataset(path, filesystem=s3.filesystem(), partitioning="hive").to_table()
    return table.to_pandas()


def test_cli_exports_to_s3_read_back_by_pyarrow_and_polars(tmp_path: Path, s3: S3Server) -> None:
    """``tailer export DIR --out s3://bucket/prefix --endpoint-url URL``: pyarrow and Polars read it back."""
    runs = make_runs(tmp_path / "runs")
    bucket = s3.new_bucket()
    result = cli(runs, "--out", f"s3://{bucket}/team/metrics", "--endpoint-url", s3.endpoint)
    assert result.returncode == 0, result.stderr
    assert "from 3 runs" in result.stdout and "4 files" in result.stdout
    assert sorted(s3.keys(bucket)) == [
        f"{bucket}/team/metrics/{MANIFEST_NAME}",
        f"{bucket}/team/metrics/experiment_id=alpha/part-0.parquet",
        f"{bucket}/team/metrics/experiment_id=beta/part-0.parquet",
        f"{bucket}/team/metrics/experiment_id=ddp/part-rank0.parquet",
        f"{bucket}/team/metrics/experiment_id=ddp/part-rank1.parquet",
    ]  # no staging object left behind
    want = read_metrics(runs)
    columns = list(want.columns)
    back = read_s3_dataset(s3, f"{bucket}/team/metrics")
    pd.testing.assert_frame_equal(sorted_frame(back, columns), sorted_frame(want, columns))

    import polars as pl

    frame = pl.read_parquet(
        f"s3://{bucket}/team/metrics/**/*.parquet",
        storage_options=s3.polars_options(),
        hive_partitioning=True,
    )
    assert frame.height == len(want)
    counts = dict(frame.group_by("experiment_id").len().iter_rows())
    assert counts == want.groupby("experiment_id").size().to_dict()
    assert frame.schema["rank"] == pl.Int64 and frame.schema["value"] == pl.Float64


def test_endpoint_from_environment_and_a_single_file(
    tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_ENDPOINT_URL names the server without a flag; a run file becomes one object."""
    run = mixed_run(tmp_path / "one.jsonl")
    bucket = s3.new_bucket()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    result = cli(run, "--out", f"s3://{bucket}/one.parquet")
    assert result.returncode == 0, result.stderr
    assert list(s3.keys(bucket)) == [f"{bucket}/one.parquet"]
    import pyarrow.parquet as pq

    back = pq.read_table(f"{bucket}/one.parquet", filesystem=s3.filesystem()).to_pandas()
    pd.testing.assert_frame_equal(back, read_metrics(run))
    again = cli(run, "--out", f"s3://{bucket}/one.parquet")
    assert again.returncode == 1 and "already exists; pass --force" in again.stderr
    assert cli(run, "--out", f"s3://{bucket}/one.parquet", "--force").returncode == 0


def test_incremental_rewrites_only_changed_runs_on_s3(
    tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--incremental: an unchanged run is not read again; grown, new and re-ranked runs are rewritten."""
    runs = make_runs(tmp_path / "runs")
    bucket = s3.new_bucket()
    url = f"s3://{bucket}/ds"
    first = export(runs, url, incremental=True, endpoint_url=s3.endpoint)
    assert (first.runs, first.unchanged) == (3, 0)
    same = export(runs, url, incremental=True, endpoint_url=s3.endpoint)
    assert (same.runs, same.unchanged, same.rows) == (0, 3, 0)

    written: list[str] = []
    real_write = export_module._write_run

    def spy(target: Any, batches: Any, schema: Any, compression: str) -> int:
        batches = list(batches)
        written.append(f"{len(batches)} batches")
        return real_write(target, iter(batches), schema, compression)

    monkeypatch.setattr(export_module, "_write_run", spy)
    append(runs / "alpha.jsonl", line("epoch_end", {"epoch": 9, "metrics": {"loss": 0.01}}))
    write_run(runs / "ddp.rank2.jsonl", [line("epoch_end", {"epoch": 0, "metrics": {"loss": 7}})])
    write_run(runs / "gamma.jsonl", [line("epoch_end", {"epoch": 0, "metrics": {"acc": 1}})])
    again = export(runs, url, incremental=True, endpoint_url=s3.endpoint)
    assert (again.runs, again.unchanged, again.files) == (3, 1, 5)  # alpha, ddp (3 ranks), gamma
    assert len(written) == 5
    want = read_metrics(runs)
    back = read_s3_dataset(s3, f"{bucket}/ds")
    columns = list(want.columns)
    pd.testing.assert_frame_equal(sorted_frame(back, columns), sorted_frame(want, columns))

    # a run deleted from the source stays at the destination (an archive outlives pruned logs)
    (runs / "gamma.jsonl").unlink()
    kept = export(runs, url, incremental=True, endpoint_url=s3.endpoint)
    assert (kept.runs, kept.unchanged, kept.kept) == (0, 3, 1)
    assert f"{bucket}/ds/experiment_id=gamma/part-0.parquet" in s3.keys(bucket)
    manifest = orjson.loads(
        s3.filesystem().open_input_stream(f"{bucket}/ds/{MANIFEST_NAME}").read()
    )
    assert sorted(manifest["runs"]) == ["alpha", "beta", "ddp", "gamma"]
    assert sorted(manifest["runs"]["ddp"]["files"]) == [f"ddp.rank{r}.jsonl" for r in (0, 1, 2)]


def test_a_failed_run_leaves_its_partition_as_it_was(
    tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export that fails on one run: the runs before it are committed, that run's old
    partition is untouched, no staging object remains, and the next export redoes it."""
    runs = make_runs(tmp_path / "runs")
    bucket = s3.new_bucket()
    url = f"s3://{bucket}/ds"
    export(runs, url, incremental=True, endpoint_url=s3.endpoint)
    before = s3.keys(bucket)
    for name in ("alpha.jsonl", "beta.jsonl"):
        append(runs / name, line("epoch_end", {"epoch": 99, "metrics": {"loss": 0.5}}))
    real_write = export_module._write_run

    def failing(target: Any, batches: Any, schema: Any, compression: str) -> int:
        rows = real_write(target, batches, schema, compression)
        if failing.calls == 1:  # the second run: beta
            raise OSError(28, "No space left on device")
        failing.calls += 1
        return rows

    failing.calls = 0  # type: ignore[attr-defined]
    monkeypatch.setattr(export_module, "_write_run", failing)
    with pytest.raises(ExportError, match="No space left"):
        export(runs, url, incremental=True, endpoint_url=s3.endpoint)
    after = s3.keys(bucket)
    assert sorted(after) == sorted(before)  # same keys: no staging left
    assert (
        after[f"{bucket}/ds/experiment_id=alpha/part-0.parquet"]
        != before[f"{bucket}/ds/experiment_id=alpha/part-0.parquet"]
    )  # alpha was committed
    beta = read_s3_dataset(s3, f"{bucket}/ds").query("experiment_id == 'beta'")
    assert 99 not in set(beta["epoch"].dropna())  # beta is the previous export's, whole
    monkeypatch.setattr(export_module, "_write_run", real_write)
    redo = export(runs, url, incremental=True, endpoint_url=s3.endpoint)
    assert redo.runs == 2  # the manifest is written last: alpha is redone too, harmlessly
    back = read_s3_dataset(s3, f"{bucket}/ds")
    want = read_metrics(runs)
    pd.testing.assert_frame_equal(
        sorted_frame(back, list(want.columns)), sorted_frame(want, list(want.columns))
    )


def test_refuses_to_write_into_a_prefix_that_is_not_a_dataset(tmp_path: Path, s3: S3Server) -> None:
    """A prefix holding other objects is left alone; an existing dataset needs --force or --incremental."""
    runs = make_runs(tmp_path / "runs")
    bucket = s3.new_bucket()
    with s3.filesystem().open_output_stream(f"{bucket}/other/notes.txt") as out:
        out.write(b"keep me")
    with pytest.raises(ExportError, match="not an exported dataset"):
        export(runs, f"s3://{bucket}/other", endpoint_url=s3.endpoint, force=True)
    export(runs, f"s3://{bucket}/ds", endpoint_url=s3.endpoint)
    with pytest.raises(ExportError, match=r"--force .* or --incremental"):
        export(runs, f"s3://{bucket}/ds", endpoint_url=s3.endpoint)
    (runs / "beta.jsonl").unlink()
    export(runs, f"s3://{bucket}/ds", endpoint_url=s3.endpoint, force=True)
    assert not any("experiment_id=beta" in key for key in s3.keys(bucket))  # --force replaces


def test_local_incremental_and_file_urls(tmp_path: Path) -> None:
    """file:// URLs and plain paths: --incremental swaps only changed partitions, atomically."""
    runs = make_runs(tmp_path / "runs")
    dest = tmp_path / "out"
    first = export(runs, f"file://{dest}", incremental=True)
    assert first.runs == 3 and (dest / MANIFEST_NAME).is_file()
    beta_part = dest / "experiment_id=beta" / "part-0.parquet"
    beta_inode = beta_part.stat().st_ino
    append(runs / "alpha.jsonl", line("epoch_end", {"epoch": 9, "metrics": {"loss": 0.01}}))
    (runs / "ddp.rank1.jsonl").unlink()
    again = export(runs, dest, incremental=True)
    assert (again.runs, again.unchanged) == (2, 1)
    assert beta_part.stat().st_ino == beta_inode  # not rewritten
    assert sorted(p.name for p in (dest / "experiment_id=ddp").iterdir()) == ["part-rank0.parquet"]
    assert sorted(p.name for p in dest.iterdir() if p.name.startswith(".")) == []
    want = read_metrics(runs)
    back = ds.dataset(dest, partitioning="hive").to_table().to_pandas()
    pd.testing.assert_frame_equal(
        sorted_frame(back, list(want.columns)), sorted_frame(want, list(want.columns))
    )
    # a plain export over it still needs --force, and then replaces it whole
    with pytest.raises(ExportError, match="already exists"):
        export(runs, dest)
    export(runs, dest, force=True)
    assert not (dest / MANIFEST_NAME).exists()


def test_incremental_needs_a_directory_and_memory_urls_work(tmp_path: Path) -> None:
    """--incremental on a file is refused; an fsspec-only URL (memory://) is written through fsspec."""
    run = mixed_run(tmp_path / "one.jsonl")
    with pytest.raises(ExportError, match="needs a directory"):
        export(run, tmp_path / "x", incremental=True)
    runs = make_runs(tmp_path / "runs")
    export(runs, "memory://runtail-test/ds")
    import fsspec

    memory = fsspec.filesystem("memory")
    names = sorted(p.rsplit("/", 2)[-2] for p in memory.glob("/runtail-test/ds/*/*.parquet"))
    assert names == [
        "experiment_id=alpha",
        "experiment_id=beta",
        "experiment_id=ddp",
        "experiment_id=ddp",
    ]
    with pytest.raises(ExportError, match="nope"):
        export(runs, "nope://x/y")
