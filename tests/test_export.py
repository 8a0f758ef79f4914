"""replay.export: Parquet files and hive datasets that pandas, pyarrow, DuckDB and Polars read."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import replay._arrow as arrow
import replay._jsonparse as jsonparse
import replay._source as source
from recorder.format import decode_line, encode_line
from replay.export import ExportError, export
from replay.tables import MetricsBuilder, SkippedLinesWarning, metrics_schema, read_metrics
from tests._replay_helpers import SAMPLE_RUNS, line, mixed_run, write_run


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedLinesWarning)
        yield


def runs_dir(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    mixed_run(runs / "alpha.jsonl")
    mixed_run(runs / "beta-2.jsonl", epochs=5)
    write_run(
        runs / "gamma.jsonl",
        [
            line(
                "local_epoch",
                {"client_id": "c1", "round": 1, "local_epoch": 0, "metrics": {"loss": math.nan}},
            ),
            b"broken\n",
        ],
    )
    return runs


def test_file_export_reads_back_equal_to_read_metrics(tmp_path: Path) -> None:
    """A run file exports to one Parquet file that pandas reads back equal to read_metrics."""
    run = mixed_run(tmp_path / "run-a.jsonl")
    result = export(run, tmp_path / "out" / "run-a.parquet")
    assert result.rows == len(read_metrics(run)) and result.files == 1
    back = pd.read_parquet(tmp_path / "out" / "run-a.parquet")
    pd.testing.assert_frame_equal(back, read_metrics(run))


def test_file_export_in_many_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log read in many blocks is written as many row groups with the same content."""
    import replay.export as export_module

    run = mixed_run(tmp_path / "run-a.jsonl", epochs=40)
    monkeypatch.setattr(source, "BLOCK_BYTES", 2048)
    monkeypatch.setattr(jsonparse, "FAST_BLOCK_BYTES", 2048)
    monkeypatch.setattr(export_module, "ROW_GROUP_ROWS", 30)
    export(run, tmp_path / "a.parquet")
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.num_row_groups > 5
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a.parquet"), read_metrics(run))


def test_text_reads_back_as_strings_whichever_way_each_block_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export builds its text columns as dictionaries; every reader still sees strings.

    Blocks pyarrow parses and blocks read line by line (a broken line sends one
    there) share row groups; the file's Arrow schema is the metrics table's.
    """
    import replay.export as export_module

    run = mixed_run(tmp_path / "run-a.jsonl", epochs=40)
    lines = run.read_bytes().splitlines(keepends=True)
    run.write_bytes(b"".join([*lines[:100], b"broken\n", *lines[100:]]))
    monkeypatch.setattr(jsonparse, "FAST_BLOCK_BYTES", 4096)
    monkeypatch.setattr(export_module, "ROW_GROUP_ROWS", 60)
    taken: list[str] = []

    def spy(real: Any, way: str) -> Any:
        def counted(self: Any, *args: Any) -> Any:
            taken.append(way)
            return real(self, *args)

        return counted

    monkeypatch.setattr(arrow._FastMetrics, "batch", spy(arrow._FastMetrics.batch, "arrow"))
    monkeypatch.setattr(MetricsBuilder, "add", spy(MetricsBuilder.add, "careful"))
    export(run, tmp_path / "a.parquet")
    assert "careful" in taken and "arrow" in taken
    schema = metrics_schema()
    assert pq.read_schema(tmp_path / "a.parquet").equals(schema, check_metadata=True)
    expected = read_metrics(run)
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.schema.equals(schema) and table.num_rows == len(expected)
    pd.testing.assert_frame_equal(table.to_pandas(), expected)
    metadata = pq.ParquetFile(tmp_path / "a.parquet").metadata
    assert metadata.num_row_groups > 3
    metric = schema.names.index("metric")
    assert all(  # stored as Parquet dictionaries, as before
        "RLE_DICTIONARY" in metadata.row_group(i).column(metric).encodings
        for i in range(metadata.num_row_groups)
    )


def test_empty_run_exports_schema(tmp_path: Path) -> None:
    """A run without values gives a valid Parquet file with zero rows and the full schema."""
    run = write_run(
        tmp_path / "empty.jsonl", [line("status", {"status": "running", "message": ""})]
    )
    export(run, tmp_path / "empty.parquet")
    back = pd.read_parquet(tmp_path / "empty.parquet")
    pd.testing.assert_frame_equal(back, read_metrics(run))
    assert len(back) == 0


def test_dataset_read_by_pyarrow_pandas_duckdb_polars(tmp_path: Path) -> None:
    """A directory exports to a hive dataset every engine reads with the same rows and ids."""
    runs = runs_dir(tmp_path)
    dest = tmp_path / "dataset"
    result = export(runs, dest)
    expected = read_metrics(runs)
    ids = {"alpha", "beta-2", "gamma"}
    assert result.files == 3 and result.rows == len(expected)
    assert sorted(p.name for p in dest.iterdir()) == [f"experiment_id={i}" for i in sorted(ids)]
    for part in dest.glob("*/*.parquet"):
        assert "experiment_id" not in pq.read_schema(part).names  # only in the path, never twice

    dataset = ds.dataset(dest, partitioning="hive")
    table = dataset.to_table()
    assert table.num_rows == len(expected)
    assert set(table.column("experiment_id").to_pylist()) == ids

    frame = pd.read_parquet(dest)
    assert len(frame) == len(expected)
    assert frame["epoch"].dtype == pd.Int64Dtype()
    got = frame.assign(experiment_id=frame["experiment_id"].astype(str))[list(expected.columns)]
    got = got.sort_values(["experiment_id", "seq", "metric"], kind="stable").reset_index(drop=True)
    want = expected.sort_values(["experiment_id", "seq", "metric"], kind="stable").reset_index(
        drop=True
    )
    pd.testing.assert_frame_equal(got, want)

    import duckdb

    # Each engine decodes every column's encoding (deltas, split floats, dictionaries) alike.
    want_sums = []
    for run_id, group in expected.groupby("experiment_id"):
        values = group["value"].to_numpy()
        finite = values[np.isfinite(values)]
        want_sums.append(
            (
                run_id,
                len(group),
                int(group["seq"].sum()),
                int(group["step"].count()),
                int(group["step"].fillna(0).sum()),
                group["timestamp"].max().to_pydatetime(),
                round(float(finite.sum()), 9),
                int(np.isnan(values).sum()),
                int(group["metric"].str.len().sum()),
            )
        )
    sums = duckdb.sql(
        "SET TimeZone = 'UTC'; SELECT experiment_id, count(*), sum(seq), count(step), "
        "sum(coalesce(step, 0)), max(timestamp), "
        "round(coalesce(sum(value) FILTER (WHERE isfinite(value)), 0), 9), "
        "count(*) FILTER (WHERE isnan(value)), sum(length(metric)) "
        f"FROM read_parquet('{dest}/**/*.parquet', hive_partitioning=true) GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert sums == want_sums

    import polars as pl

    polars_frame = pl.read_parquet(dest, hive_partitioning=True)
    assert polars_frame.height == len(expected)
    assert set(polars_frame["experiment_id"].to_list()) == ids
    assert polars_frame.schema["epoch"] == pl.Int64 and polars_frame.schema["value"] == pl.Float64
    polars_sorted = polars_frame.sort(["experiment_id", "seq", "metric"])
    np.testing.assert_array_equal(polars_sorted["value"].to_numpy(), want["value"].to_numpy())
    for column in ("seq", "step", "timestamp", "metric"):
        wanted = want[column].astype(object).where(want[column].notna(), None).to_list()
        assert polars_sorted[column].to_list() == wanted, column


def test_sample_runs_export(tmp_path: Path) -> None:
    """The committed sample runs export to a dataset with one partition per run."""
    runs = sorted(SAMPLE_RUNS.glob("*.jsonl"))
    if not runs:
        pytest.skip("no sample runs committed yet")
    result = export(SAMPLE_RUNS, tmp_path / "samples")
    assert result.files == len(runs)
    table = ds.dataset(tmp_path / "samples", partitioning="hive").to_table()
    assert table.num_rows == len(read_metrics(SAMPLE_RUNS))


def rebuild(row: dict[str, Any]) -> dict[str, Any]:
    """A message from a row of the lossless table, as its schema's docstring says."""
    message: dict[str, Any] = {"type": row["type"]}
    if row["timestamp_text"] is not None:
        message["timestamp"] = row["timestamp_text"]
    if row["data"] is not None:
        message["data"] = orjson.loads(row["data"])
    if row["extra"] is not None:
        message.update(orjson.loads(row["extra"]))
    return message


def test_messages_table_rebuilds_every_message(tmp_path: Path) -> None:
    """--table messages keeps every message: rebuilt dict-equal, and byte-equal for recorder lines."""
    recorded = [
        line(
            "epoch_end",
            {"epoch": 0, "phase": "train", "metrics": {"loss": math.nan, "a": math.inf}},
        ),
        line("status", {"status": "running", "message": 'caf\u00e9 \u2603 "quoted" data":'}),
        line(
            "custom",
            {"data": {"data": 1}, "nested": [1, 2.5, None, True]},
            extra={"host": "n1", "rank": 0},
        ),
        line("custom", None),
        line('x"data":y', [1, 2]),
        line("big", {"id": 2**64 - 1, "tiny": 1e-300, "neg": -0.0}),
    ]
    odd = [
        b'{"data": {"b": 1,  "a": 2}, "type": "reordered", "timestamp": "2025-10-22T11:10:16Z"}',
        b'{"type":"nodata","timestamp":"2025-10-22T11:10:16.1Z"}',
        b'{"type":"nulldata","timestamp":"2025-10-22T11:10:16Z","data":null}',
        b'{"type":"numts","timestamp":1761131416.5,"data":{"v":1}}',
        b'{"type":"nots","data":{"v":1},"extra":[1]}',
        b'{"type":"spaced" , "timestamp" : "2025-10-22T11:10:16Z" , "data" : { "v" : 1 } }',
        b'{"type":"escaped","timestamp":"2025-10-22T11:10:16Z","data":{"s":"\\u00e9\\n"}}',
    ]
    lines = [*recorded, *(raw + b"\n" for raw in odd), b"broken\n"]
    run = write_run(tmp_path / "msgs.jsonl", lines)
    export(run, tmp_path / "messages.parquet", table="messages")
    table = pq.read_table(tmp_path / "messages.parquet")
    assert table.schema.names == [
        "experiment_id",
        "rank",
        "seq",
        "attempt",
        "timestamp",
        "type",
        "data",
        "extra",
        "timestamp_text",
    ]
    rows = table.to_pylist()
    assert [r["seq"] for r in rows] == list(range(len(lines) - 1))
    for row, raw in zip(rows, lines, strict=False):  # the broken last line has no row
        original = decode_line(raw)
        assert rebuild(row) == original, raw
    for row, raw in zip(rows, recorded, strict=False):
        assert encode_line(rebuild(row)) == raw
    # The data text is the recorded text itself, escapes and spacing included.
    assert rows[len(recorded) + 6]["data"] == '{"s":"\\u00e9\\n"}'
    assert rows[len(recorded) + 5]["data"] == '{ "v" : 1 }'
    assert rows[len(recorded) + 3]["extra"] == '{"timestamp":1761131416.5}'
    assert rows[len(recorded) + 3]["timestamp"] is None
    assert rows[0]["timestamp"] is not None


def test_refuses_existing_destination_without_force(tmp_path: Path) -> None:
    """An existing output is kept unless force; with force it is replaced whole."""
    run = mixed_run(tmp_path / "run.jsonl")
    out = tmp_path / "out.parquet"
    out.write_bytes(b"precious")
    with pytest.raises(ExportError, match="already exists"):
        export(run, out)
    assert out.read_bytes() == b"precious"
    export(run, out, force=True)
    assert pq.read_table(out).num_rows > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_force_replaces_a_dataset_but_not_any_directory(tmp_path: Path) -> None:
    """--force replaces an earlier dataset, never a directory that is not one."""
    runs = runs_dir(tmp_path)
    dest = tmp_path / "ds"
    export(runs, dest)
    (runs / "gamma.jsonl").unlink()
    export(runs, dest, force=True)
    assert sorted(p.name for p in dest.iterdir()) == ["experiment_id=alpha", "experiment_id=beta-2"]
    other = tmp_path / "home"
    (other / "docs").mkdir(parents=True)
    with pytest.raises(ExportError, match="not an exported dataset"):
        export(runs, other, force=True)
    assert (other / "docs").is_dir()
    with pytest.raises(ExportError, match="is a directory"):
        export(runs / "alpha.jsonl", other, force=True)


def test_source_errors(tmp_path: Path) -> None:
    """A missing source, a directory without runs and a destination under a file are clear errors."""
    with pytest.raises(ExportError, match="no such file"):
        export(tmp_path / "missing", tmp_path / "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="holds no runs"):
        export(tmp_path / "empty", tmp_path / "x")
    run = mixed_run(tmp_path / "run.jsonl")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export(run, blocker / "sub" / "out.parquet")
    with pytest.raises(ExportError, match="source"):
        export(run, run, force=True)
    assert run.stat().st_size > 0


def test_failed_export_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export that fails midway removes its temporary output and keeps the old one."""
    import replay.export as export_module

    runs = runs_dir(tmp_path)
    dest = tmp_path / "ds"
    export(runs, dest)
    before = sorted(p.name for p in dest.rglob("*"))

    def broken(*args: Any, **kwargs: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "_write_run", broken)
    with pytest.raises(ExportError, match="No space left"):
        export(runs, dest, force=True)
    assert sorted(p.name for p in dest.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_partition_type_can_be_pinned_for_numeric_ids(tmp_path: Path) -> None:
    """Ids made of digits stay strings when the reader is told the partition type (as documented)."""
    write_run(tmp_path / "runs" / "007.jsonl", [line("a", {"x": 1})])
    export(tmp_path / "runs", tmp_path / "ds")
    part = ds.partitioning(pa.schema([("experiment_id", pa.string())]), flavor="hive")
    table = ds.dataset(tmp_path / "ds", partitioning=part).to_table()
    assert table.column("experiment_id").to_pylist() == ["007"]


def test_sample_runs_rebuild_byte_for_byte(tmp_path: Path) -> None:
    """Every line of every sample run comes back byte for byte from the exported message dataset."""
    runs = sorted(SAMPLE_RUNS.glob("*.jsonl"))
    if not runs:
        pytest.skip("no sample runs committed yet")
    export(SAMPLE_RUNS, tmp_path / "messages", table="messages")
    table = ds.dataset(tmp_path / "messages", partitioning="hive").to_table()
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        by_run.setdefault(str(row["experiment_id"]), []).append(row)
    for run in runs:
        lines = run.read_bytes().split(b"\n")[:-1]
        rows = sorted(by_run[run.stem], key=lambda r: r["seq"])
        assert [r["seq"] for r in rows] == list(range(len(lines)))
        for row, raw in zip(rows, lines, strict=True):
            assert encode_line(rebuild(row)) == raw + b"\n"
