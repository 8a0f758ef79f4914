"""The committed sample runs in ``sample_runs/`` are valid runtail logs of the runs they claim to be.

These tests read the committed files; they never retrain. The one slow test
runs ``scripts/make_sample_runs.py --epochs 2`` into a temporary directory and
checks what it makes with the same checks.
"""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from recorder.format import (
    STATUS_TYPES,
    decode_line,
    is_valid_experiment_id,
    parse_timestamp,
    status_of,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "sample_runs"
SCRIPT = REPO_ROOT / "scripts" / "make_sample_runs.py"

CENTRALIZED = "centralized-digits"
FAILED = "failed-digits"
RUNNING = "running-digits"
FEDERATED = "federated-digits"

#: The committed samples' settings (the script's defaults).
EPOCHS = 10
#: Where the script makes the failed run fail and the running run die (0-based epochs).
FAIL_EPOCH = 3
KILL_EPOCH = 4
MAX_TOTAL_BYTES = 2 * 1024 * 1024

RFC3339_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")

SAMPLE_FILES = sorted(SAMPLES.glob("*.jsonl"))


# --------------------------------------------------------------------------- checks


def read_run(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` decoded; fails on a malformed or unterminated line."""
    raw = path.read_bytes()
    assert raw, f"{path} is empty"
    assert raw.endswith(b"\n"), f"{path} ends in an incomplete line"
    lines = raw[:-1].split(b"\n")
    return [decode_line(line) for line in lines]


def check_well_formed(path: Path) -> list[dict[str, Any]]:
    """The DESIGN §1 rules every run file keeps; returns the messages."""
    assert is_valid_experiment_id(path.stem), path.name
    messages = read_run(path)
    previous = None
    for number, message in enumerate(messages):
        where = f"{path.name} line {number + 1}"
        assert isinstance(message["type"], str) and message["type"], where
        assert isinstance(message.get("data"), dict), where
        timestamp = message.get("timestamp")
        assert isinstance(timestamp, str) and RFC3339_Z.fullmatch(timestamp), (where, timestamp)
        moment = parse_timestamp(timestamp)
        if previous is not None:
            assert moment >= previous, f"{where}: timestamp goes back in time"
        previous = moment
        if "experiment_id" in message:
            assert message["experiment_id"] == path.stem, where
        if message["type"] == "training_start" and "experiment_id" in message["data"]:
            assert message["data"]["experiment_id"] == path.stem, where
    return messages


def final_status(messages: list[dict[str, Any]]) -> str | None:
    """The status a reader derives: that of the last status, training_end or error message."""
    status = None
    for message in messages:
        if message["type"] in STATUS_TYPES:
            status = status_of(message) or status
    return status


def of_type(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m["data"] for m in messages if m["type"] == kind]


def epoch_ends(messages: list[dict[str, Any]], phase: str) -> list[dict[str, Any]]:
    return [d for d in of_type(messages, "epoch_end") if d.get("phase") == phase]


def check_numbers(metrics: dict[str, Any], where: str) -> None:
    assert metrics, f"{where}: no metrics"
    for name, value in metrics.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (where, name)
        assert math.isfinite(value), (where, name, value)


def check_training_prefix(messages: list[dict[str, Any]], epochs: int) -> None:
    """What every run records from its start: training_start, status running, epoch messages."""
    assert messages[0]["type"] == "training_start"
    assert messages[0]["data"]["model"] == "DigitsMLP"
    assert messages[1]["type"] == "status" and messages[1]["data"]["status"] == "running"
    for start in of_type(messages, "epoch_start"):
        assert start["total_epochs"] == epochs
    for phase in ("train", "val"):
        for data in epoch_ends(messages, phase):
            check_numbers(data["metrics"], f"{phase} epoch {data['epoch']}")
            assert {"loss", "accuracy", "recall", "f1"} <= set(data["metrics"]), data
    batches = of_type(messages, "batch_metrics")
    assert batches, "no batch_metrics"
    steps = [b["step"] for b in batches]
    assert steps == sorted(set(steps)), "batch_metrics steps are not increasing"
    for batch in batches:
        check_numbers(
            {k: batch[k] for k in ("loss", "accuracy", "recall", "f1")}, f"step {batch['step']}"
        )


def check_centralized(path: Path, epochs: int) -> dict[str, Any]:
    messages = check_well_formed(path)
    check_training_prefix(messages, epochs)
    counts = Counter(m["type"] for m in messages)
    assert [d["epoch"] for d in of_type(messages, "epoch_start")] == list(range(epochs))
    for phase in ("train", "val"):
        assert [d["epoch"] for d in epoch_ends(messages, phase)] == list(range(epochs)), phase
    tests = epoch_ends(messages, "test")
    assert len(tests) == 1
    check_numbers(tests[0]["metrics"], "test epoch")
    assert counts["training_end"] == 1
    assert counts["error"] == 0
    # The fit ends with training_end then status completed; the test epoch that
    # `trainer.test()` runs afterwards follows them, as it does for users.
    end = next(i for i, m in enumerate(messages) if m["type"] == "training_end")
    assert messages[end + 1]["type"] == "status"
    assert messages[end + 1]["data"]["status"] == "completed"
    assert all(
        m["type"] not in STATUS_TYPES and m["type"] != "epoch_start" for m in messages[end + 2 :]
    ), "only the test stage may follow the end of training"
    assert final_status(messages) == "completed"
    assert of_type(messages, "lr_update") and of_type(messages, "gradient_stats")
    assert of_type(messages, "hparams") and of_type(messages, "metrics")
    return {"messages": messages, "counts": counts}


def check_failed(path: Path, epochs: int) -> list[dict[str, Any]]:
    messages = check_well_formed(path)
    check_training_prefix(messages, epochs)
    fail_epoch = min(FAIL_EPOCH, epochs - 1)
    error, status = messages[-2], messages[-1]
    assert error["type"] == "error"
    assert error["data"]["error_type"] == "OutOfMemoryError"
    assert "CUDA out of memory" in error["data"]["error"]
    traceback = error["data"]["traceback"]
    assert traceback.startswith("Traceback (most recent call last):")
    assert "training_step" in traceback and "OutOfMemoryError" in traceback
    assert status["type"] == "status" and status["data"]["status"] == "failed"
    assert not of_type(messages, "training_end")
    assert [d["epoch"] for d in epoch_ends(messages, "val")] == list(range(fail_epoch))
    assert final_status(messages) == "failed"
    return messages


def check_running(path: Path, epochs: int) -> list[dict[str, Any]]:
    messages = check_well_formed(path)
    check_training_prefix(messages, epochs)
    kill_epoch = min(KILL_EPOCH, epochs - 1)
    assert not of_type(messages, "training_end")
    assert not of_type(messages, "error")
    assert [d["status"] for d in of_type(messages, "status")] == ["running"]
    assert final_status(messages) == "running"
    # Killed in the middle of an epoch: it started, some batches ran, it never ended.
    assert of_type(messages, "epoch_start")[-1]["epoch"] == kill_epoch
    assert [d["epoch"] for d in epoch_ends(messages, "val")] == list(range(kill_epoch))
    assert of_type(messages, "batch_metrics")[-1]["epoch"] == kill_epoch
    return messages


def check_same_training(out: Path) -> None:
    """The three runs share seed and data, so their common epochs have the very same metrics."""
    runs = {name: read_run(out / f"{name}.jsonl") for name in (CENTRALIZED, FAILED, RUNNING)}
    complete = runs[CENTRALIZED]
    for name in (FAILED, RUNNING):
        for phase in ("train", "val"):
            partial = epoch_ends(runs[name], phase)
            assert partial, (name, phase)
            expected = [d["metrics"] for d in epoch_ends(complete, phase)[: len(partial)]]
            assert [d["metrics"] for d in partial] == expected, (name, phase)


# --------------------------------------------------------------------------- committed samples


def test_samples_are_committed() -> None:
    """The three samples this area owns are in sample_runs/."""
    for name in (CENTRALIZED, FAILED, RUNNING):
        assert (SAMPLES / f"{name}.jsonl").is_file(), name


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=[p.name for p in SAMPLE_FILES])
def test_every_sample_is_a_valid_run_file(path: Path) -> None:
    """Every line of every sample decodes, with an RFC 3339 Z timestamp that never goes back."""
    messages = check_well_formed(path)
    assert final_status(messages) in ("running", "completed", "failed")


def test_samples_total_under_two_megabytes() -> None:
    """The committed samples stay small enough to keep in the repository."""
    total = sum(p.stat().st_size for p in SAMPLE_FILES)
    assert 0 < total < MAX_TOTAL_BYTES, total


def test_centralized_sample_is_a_complete_run() -> None:
    """The centralized run has every epoch's train and val results, batches, a test epoch and an end."""
    run = check_centralized(SAMPLES / f"{CENTRALIZED}.jsonl", EPOCHS)
    counts = run["counts"]
    assert counts["epoch_end"] == 2 * EPOCHS + 1
    assert counts["batch_metrics"] >= 5 * EPOCHS
    # It really learned: the last validation accuracy of a 10-epoch run on digits.
    final_val = epoch_ends(run["messages"], "val")[-1]["metrics"]
    assert final_val["accuracy"] > 0.9
    first_val = epoch_ends(run["messages"], "val")[0]["metrics"]
    assert final_val["loss"] < first_val["loss"]


def test_failed_sample_ends_with_error_and_failed_status() -> None:
    """The failed run ends with an error carrying its traceback, then status failed."""
    check_failed(SAMPLES / f"{FAILED}.jsonl", EPOCHS)


def test_running_sample_has_no_end() -> None:
    """The killed run stops mid-epoch with no training_end, error or final status."""
    check_running(SAMPLES / f"{RUNNING}.jsonl", EPOCHS)


def test_samples_come_from_one_seeded_training() -> None:
    """The failed and running samples repeat the complete run's first epochs exactly."""
    check_same_training(SAMPLES)


def test_federated_sample_if_present() -> None:
    """The federated sample, once the Flower example made it, is a completed federated run."""
    path = SAMPLES / f"{FEDERATED}.jsonl"
    if not path.exists():
        pytest.skip("sample_runs/federated-digits.jsonl has not been made yet")
    messages = check_well_formed(path)
    modes = of_type(messages, "training_mode")
    assert modes and modes[0]["is_federated"] is True
    assert of_type(messages, "round_end")
    assert final_status(messages) == "completed"


# --------------------------------------------------------------------------- the script


@pytest.mark.slow
def test_script_makes_the_three_samples(tmp_path: Path) -> None:
    """make_sample_runs.py --epochs 2 writes the three runs afresh and leaves other files alone."""
    out = tmp_path / "samples"
    out.mkdir()
    (out / f"{CENTRALIZED}.jsonl").write_bytes(b"stale content from an earlier run\n")
    federated = out / f"{FEDERATED}.jsonl"
    federated.write_bytes(b"not ours\n")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--epochs", "2", "--seed", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    epochs = 2
    check_centralized(out / f"{CENTRALIZED}.jsonl", epochs)
    check_failed(out / f"{FAILED}.jsonl", epochs)
    check_running(out / f"{RUNNING}.jsonl", epochs)
    assert federated.read_bytes() == b"not ours\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}.jsonl" for name in (CENTRALIZED, FAILED, RUNNING, FEDERATED)
    )
    check_same_training(out)
    for name in (CENTRALIZED, FAILED, RUNNING):
        assert f"[{name}] wrote" in result.stdout


@pytest.mark.slow
def test_script_makes_one_sample_of_one_epoch(tmp_path: Path) -> None:
    """--only running-digits --epochs 1 kills the child in its only epoch and writes nothing else."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--epochs", "1", "--only", RUNNING],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in tmp_path.iterdir()] == [f"{RUNNING}.jsonl"]
    messages = check_running(tmp_path / f"{RUNNING}.jsonl", 1)
    assert not of_type(messages, "epoch_end")


@pytest.mark.parametrize("epochs", ["0", "-3", "ten"])
def test_script_refuses_bad_epochs(epochs: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --epochs is refused with a usage message and exit status 2, before any training."""
    spec = importlib.util.spec_from_file_location("make_sample_runs", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--epochs", epochs])
    assert exit_info.value.code == 2
    assert "--epochs" in capsys.readouterr().err
