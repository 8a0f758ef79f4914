"""``tailer export`` as a user runs it: exit codes, one-line errors, summary, no progress off a TTY."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest

from replay.tables import SkippedLinesWarning, read_metrics
from tests._replay_helpers import ROOT, line, mixed_run, write_run


def tailer(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tailer", "export", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tailer export: error:") and text in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_export_file_prints_summary_and_no_progress(tmp_path: Path) -> None:
    """A file exports to Parquet; stdout has one summary line, stderr stays empty off a terminal."""
    run = write_run(
        tmp_path / "run-1.jsonl",
        [line("epoch_end", {"epoch": 0, "metrics": {"loss": 0.5}}), b"oops\n"],
    )
    out = tmp_path / "run-1.parquet"
    result = tailer(run, "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    summary = result.stdout.strip().splitlines()
    assert len(summary) == 1
    assert "1 metrics rows" in summary[0] and "1 file" in summary[0] and " s" in summary[0]
    assert "1 malformed line" in summary[0]
    with pytest.warns(SkippedLinesWarning):
        pd.testing.assert_frame_equal(pd.read_parquet(out), read_metrics(run))


def test_export_directory_to_dataset_and_messages_table(tmp_path: Path) -> None:
    """A directory exports to a hive dataset; --table messages writes the message table."""
    mixed_run(tmp_path / "runs" / "a.jsonl")
    mixed_run(tmp_path / "runs" / "b.jsonl")
    result = tailer(tmp_path / "runs", "--out", tmp_path / "ds", "--table", "messages")
    assert result.returncode == 0, result.stderr
    assert "2 runs" in result.stdout and "2 files" in result.stdout
    table = ds.dataset(tmp_path / "ds", partitioning="hive").to_table()
    assert set(table.column("experiment_id").to_pylist()) == {"a", "b"}
    assert "data" in table.schema.names


def test_refuses_overwrite_without_force(tmp_path: Path) -> None:
    """An existing destination is an error without --force and replaced with it."""
    run = mixed_run(tmp_path / "run.jsonl")
    out = tmp_path / "out.parquet"
    out.write_text("keep me")
    assert_one_line_error(tailer(run, "--out", out), 1, "already exists; pass --force")
    assert out.read_text() == "keep me"
    result = tailer(run, "--out", out, "--force")
    assert result.returncode == 0, result.stderr
    assert len(pd.read_parquet(out)) == len(read_metrics(run))


def test_missing_source(tmp_path: Path) -> None:
    """A source that does not exist: one line on stderr, exit 1, no traceback."""
    assert_one_line_error(
        tailer(tmp_path / "nope.jsonl", "--out", tmp_path / "x.parquet"), 1, "nope.jsonl"
    )
    assert not (tmp_path / "x.parquet").exists()


def test_source_without_runs(tmp_path: Path) -> None:
    """A directory with no *.jsonl runs: one line on stderr, exit 1."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    assert_one_line_error(tailer(tmp_path / "empty", "--out", tmp_path / "ds"), 1, "holds no runs")


def test_unwritable_destination(tmp_path: Path) -> None:
    """A destination under a regular file: one line on stderr, exit 1 (root ignores permissions)."""
    run = mixed_run(tmp_path / "run.jsonl")
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    assert_one_line_error(tailer(run, "--out", blocker / "out.parquet"), 1, "not a directory")
    mixed_run(tmp_path / "runs" / "a.jsonl")
    assert_one_line_error(tailer(tmp_path / "runs", "--out", blocker / "ds"), 1, "not a directory")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    """A missing --out or an unknown table is a usage error (exit 2)."""
    run = mixed_run(tmp_path / "run.jsonl")
    assert tailer(run).returncode == 2
    assert tailer(run, "--out", tmp_path / "x", "--table", "nope").returncode == 2


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """With stderr on a terminal a progress bar is drawn there; --no-progress turns it off."""
    import os
    import pty

    run = mixed_run(tmp_path / "run.jsonl")

    def stderr_on_tty(*extra: str) -> str:
        leader, follower = pty.openpty()
        try:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tailer",
                    "export",
                    str(run),
                    "--out",
                    str(tmp_path / "o.parquet"),
                    "--force",
                    *extra,
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=follower,
                timeout=120,
                env={**os.environ, "COLUMNS": "100"},
            )
            os.close(follower)
            follower = -1
            chunks = []
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO once the terminal has no writer left
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            if follower >= 0:
                os.close(follower)
            os.close(leader)
        assert proc.returncode == 0
        assert b"exported" in proc.stdout
        return b"".join(chunks).decode(errors="replace")

    assert "exporting" in stderr_on_tty()
    assert "exporting" not in stderr_on_tty("--no-progress")
