"""Per-rank files are one run: ``<id>.rank<N>.jsonl`` is rank N of run ``<id>`` (DESIGN §10)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pandas as pd
import pyarrow.dataset as ds
import pytest

from recorder import MetricsRecorder
from recorder.format import rank_file_id, split_rank, validate_experiment_id, validate_run_id
from replay import read_messages, read_metrics
from replay.export import export
from tests._tailer_helpers import ROOT, aio, http_get, recv_n, tailer_cli, ws_connect


@pytest.mark.parametrize(
    ("file_id", "run", "rank"),
    [
        ("a", "a", None),
        ("a.rank0", "a", 0),
        ("exp-1.rank12", "exp-1", 12),
        ("a.rank1.rank2", "a.rank1", 2),
        ("a.rankx", "a.rankx", None),
        ("a.rank", "a.rank", None),
        ("a_rank3", "a_rank3", None),
        ("a.rank3.jsonl", "a.rank3.jsonl", None),
    ],
)
def test_split_rank(file_id: str, run: str, rank: int | None) -> None:
    """split_rank reads ``.rank<digits>`` at the very end only; rank_file_id builds it back."""
    assert split_rank(file_id) == (run, rank)
    if rank is not None:
        assert rank_file_id(run, rank) == file_id


@pytest.mark.parametrize("bad", ["a.rank1", "x.rank007", "run-2.rank3"])
def test_an_id_may_not_end_in_a_rank_suffix(tmp_path: Path, bad: str) -> None:
    """A run id ending in .rank<digits> is refused by the recorder; the file id itself stays valid."""
    assert validate_experiment_id(bad) == bad  # as a file's id (wire, URLs) it is fine
    with pytest.raises(ValueError, match=r"may not end in '\.rank<digits>'"):
        validate_run_id(bad)
    with pytest.raises(ValueError, match=r"\.rank"):
        MetricsRecorder(tmp_path, bad)
    assert list(tmp_path.iterdir()) == []
    assert validate_run_id("a.ranked") == "a.ranked"


def test_lightning_classes_refuse_a_rank_suffix(tmp_path: Path) -> None:
    """RecorderCallback and JsonlLogger apply the same rule."""
    pytest.importorskip("lightning")
    from recorder.lightning import JsonlLogger, RecorderCallback

    with pytest.raises(ValueError, match=r"\.rank"):
        RecorderCallback(log_dir=tmp_path, experiment_id="x.rank0")
    with pytest.raises(ValueError, match=r"\.rank"):
        JsonlLogger(log_dir=tmp_path, experiment_id="x.rank0")


def _per_rank_runs(directory: Path) -> None:
    """Run ``job`` written by ranks 0 and 1 (per_rank), and a plain run ``solo``."""
    for rank in (0, 1):
        with MetricsRecorder(directory, "job", per_rank=True, rank=rank) as rec:
            assert rec.path.name == f"job.rank{rank}.jsonl" and rec.experiment_id == "job"
            rec.send_status("running")
            for epoch in range(3):
                rec.send_epoch_end(epoch, "train", {"loss": 1.0 / (epoch + 1 + rank)})
    with MetricsRecorder(directory, "solo") as rec:
        rec.send_epoch_end(0, "train", {"loss": 0.5})


def test_replay_tables_use_the_run_id_and_a_rank_column(tmp_path: Path) -> None:
    """read_metrics and read_messages: experiment_id is the run, rank an Int64 (null for a plain file)."""
    _per_rank_runs(tmp_path)
    metrics = read_metrics(tmp_path)
    assert list(metrics.columns[:3]) == ["experiment_id", "rank", "seq"]
    assert metrics["rank"].dtype == pd.Int64Dtype()
    per_run = metrics.groupby("experiment_id", dropna=False)["rank"].agg(
        lambda ranks: sorted(ranks.dropna().unique().tolist())
    )
    assert per_run.to_dict() == {"job": [0, 1], "solo": []}
    assert metrics.loc[metrics.experiment_id == "solo", "rank"].isna().all()
    # seq stays the line's index in its own file
    rank1 = metrics[(metrics.experiment_id == "job") & (metrics["rank"] == 1)]
    assert rank1["seq"].tolist() == [1, 2, 3]
    assert rank1["value"].tolist() == pytest.approx([1 / 2, 1 / 3, 1 / 4])

    messages = read_messages(tmp_path)
    assert list(messages.columns[:3]) == ["experiment_id", "rank", "seq"]
    assert messages["rank"].dtype == pd.Int64Dtype()
    assert messages.groupby(["experiment_id", "rank"], dropna=False).size().to_dict() == {
        ("job", 0): 4,
        ("job", 1): 4,
        ("solo", pd.NA): 1,
    }
    # a rank file named on its own is that rank of its run
    alone = read_metrics(tmp_path / "job.rank1.jsonl")
    assert set(alone["experiment_id"]) == {"job"} and set(alone["rank"]) == {1}


def test_export_puts_a_runs_ranks_in_one_partition(tmp_path: Path) -> None:
    """The hive dataset has one partition per run, a Parquet file per rank, and the rank column."""
    runs = tmp_path / "runs"
    _per_rank_runs(runs)
    dest = tmp_path / "out"
    result = export(runs, dest)
    assert result.runs == 2 and result.files == 3
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.parquet")) == [
        "experiment_id=job/part-rank0.parquet",
        "experiment_id=job/part-rank1.parquet",
        "experiment_id=solo/part-0.parquet",
    ]
    back = ds.dataset(dest, partitioning="hive").to_table().to_pandas()
    want = read_metrics(runs)
    key = ["experiment_id", "rank", "seq", "metric"]
    got = back.assign(experiment_id=back["experiment_id"].astype(str))[list(want.columns)]
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True)
    )
    # a single rank file exports to one file carrying both columns
    export(runs / "job.rank0.jsonl", tmp_path / "one.parquet")
    one = pd.read_parquet(tmp_path / "one.parquet")
    assert set(one["experiment_id"]) == {"job"} and set(one["rank"]) == {0}


def test_tailer_ls_json_carries_run_and_rank(tmp_path: Path) -> None:
    """``tailer ls --json``: each file is its own entry, with ``run`` and ``rank``."""
    _per_rank_runs(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "tailer", "ls", "--json", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = orjson.loads(result.stdout)
    assert [(r["experiment_id"], r["run"], r["rank"]) for r in rows] == [
        ("job.rank0", "job", 0),
        ("job.rank1", "job", 1),
        ("solo", "solo", None),
    ]


@aio(90)
async def test_api_experiments_and_the_wire_keep_each_files_id(tmp_path: Path) -> None:
    """/api/experiments has run and rank; on the wire each rank file has its own id and seq."""
    _per_rank_runs(tmp_path)
    async with tailer_cli("serve", str(tmp_path), "--port", "0", log=tmp_path / "err.log") as (
        _,
        port,
        _,
    ):
        status, _, body = await http_get(port, "/api/experiments")
        assert status == 200
        listed = {e["experiment_id"]: (e["run"], e["rank"]) for e in orjson.loads(body)}
        assert listed == {"job.rank0": ("job", 0), "job.rank1": ("job", 1), "solo": ("solo", None)}
        async with ws_connect(f"ws://127.0.0.1:{port}/experiments/job.rank1") as ws:
            frames = await recv_n(ws, 4)
        assert [(f["experiment_id"], f["seq"]) for f in frames] == [
            ("job.rank1", seq) for seq in range(4)
        ]
