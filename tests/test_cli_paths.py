"""The ``tailer`` command on paths a new user gets wrong: one line that says what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recorder.format import encode_message
from tests._tailer_helpers import ROOT


def _tailer(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tailer", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a command that failed cleanly."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_version() -> None:
    """tailer --version prints the distribution's version and exits 0."""
    from importlib.metadata import version

    result = _tailer("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"tailer (runtail) {version('runtail')}"


def test_serve_refuses_a_directory_whose_parent_is_missing(tmp_path: Path) -> None:
    """A typo deeper than the last component creates nothing: one line names the missing parent."""
    line = _one_line_error(_tailer("serve", str(tmp_path / "typo" / "runs"), "--port", "0"))
    assert str(tmp_path / "typo") in line and "does not exist" in line
    assert not (tmp_path / "typo").exists()


def test_serve_creates_a_missing_last_component_and_says_so(tmp_path: Path) -> None:
    """`tailer serve ./rusn`: the directory is created, and stderr says so before serving."""
    runs = tmp_path / "rusn"
    with open(tmp_path / "err.log", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tailer", "serve", str(runs), "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert proc.stdout is not None
        assert b"serving" in proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait(10)
    assert runs.is_dir()
    assert f"created {runs}" in (tmp_path / "err.log").read_text()


def test_serve_of_a_file_says_serve_its_directory_or_replay_it(tmp_path: Path) -> None:
    """`tailer serve FILE` is a one-line error naming both ways out."""
    run = tmp_path / "exp.jsonl"
    run.write_bytes(encode_message("status", {"status": "running", "message": ""}))
    line = _one_line_error(_tailer("serve", str(run), "--port", "0"))
    assert "is a file; serve its directory or `tailer replay` it" in line


def test_ls_of_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    """`tailer ls FILE` says it is a file and that ls wants the directory."""
    run = tmp_path / "exp.jsonl"
    run.write_bytes(encode_message("status", {"status": "running", "message": ""}))
    line = _one_line_error(_tailer("ls", str(run)))
    assert "is a file" in line and str(tmp_path) in line


def test_replay_of_a_directory_is_a_one_line_error(tmp_path: Path) -> None:
    """`tailer replay DIR` says it is a directory: replay plays one run file, serve a directory."""
    line = _one_line_error(_tailer("replay", str(tmp_path), "--port", "0"))
    assert "is a directory" in line and "tailer serve" in line


@pytest.mark.parametrize("content", [b"", b"\n\n", b"not json\n[1]\n", b'{"type": "torn'])
def test_replay_of_a_file_without_a_message_warns_and_fails(tmp_path: Path, content: bytes) -> None:
    """A file in which no line is a message: a warning and a non-zero exit, nothing served."""
    run = tmp_path / "empty.jsonl"
    run.write_bytes(content)
    line = _one_line_error(_tailer("replay", str(run), "--port", "0"))
    assert "warning" in line and "no message" in line
