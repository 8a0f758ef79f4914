"""The flower_digits example as a user runs it, and the federated sample run it produced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from recorder.format import decode_line

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_runs" / "federated-digits.jsonl"
SERVER_TYPES = {
    "training_mode",
    "training_start",
    "status",
    "round_start",
    "client_training_start",
    "client_complete",
    "round_end",
    "round_metrics",
    "training_end",
}


def _messages(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [decode_line(line) for line in raw.splitlines()]


def _check_federated_run(messages: list[dict[str, Any]], rounds: int, clients: int) -> None:
    """What a recorded flower_digits run must hold, server and clients together."""
    types = [m["type"] for m in messages]
    server = [m for m in messages if m["type"] in SERVER_TYPES and "client_id" not in m["data"]]
    server += [m for m in messages if m["type"] in ("client_training_start", "client_complete")]
    server.sort(key=messages.index)
    assert server[0]["type"] == "training_mode"
    assert server[0]["data"] == {"is_federated": True, "num_rounds": rounds, "num_clients": clients}
    assert types[-2:] == ["training_end", "status"]
    assert messages[-1]["data"]["status"] == "completed"

    starts = [m["data"]["round"] for m in messages if m["type"] == "round_start"]
    ends = [m["data"]["round"] for m in messages if m["type"] == "round_end"]
    assert starts == ends == list(range(1, rounds + 1))
    client_ids = {m["data"]["client_id"] for m in messages if m["type"] == "client_training_start"}
    assert len(client_ids) == clients

    seq_of_complete = {
        (m["data"]["round"], m["data"]["client_id"]): i
        for i, m in enumerate(messages)
        if m["type"] == "client_complete"
    }
    assert len(seq_of_complete) == rounds * clients
    for server_round in range(1, rounds + 1):
        for client_id in client_ids:
            local = [
                i
                for i, m in enumerate(messages)
                if m["type"] == "local_epoch"
                and m["data"]["client_id"] == client_id
                and m["data"]["round"] == server_round
            ]
            # Each client recorded its local epochs (train and val) in its own process,
            # all before the server recorded that client's reply.
            assert len(local) >= 2
            assert max(local) < seq_of_complete[(server_round, client_id)]

    accuracy = {
        m["data"]["round"]: m["data"]["metrics"]["test_acc"]
        for m in messages
        if m["type"] == "round_metrics"
    }
    assert sorted(accuracy) == list(range(rounds + 1))
    assert accuracy[rounds] > accuracy[0] + 0.3  # federated training did learn


def test_the_sample_run_is_a_complete_federated_run():
    """sample_runs/federated-digits.jsonl is a whole 5-round, 3-client run, small enough to ship."""
    assert SAMPLE.stat().st_size < 500_000
    messages = _messages(SAMPLE)
    _check_federated_run(messages, rounds=5, clients=3)
    assert not any(m["type"] == "batch_metrics" for m in messages)
    assert str(ROOT) not in SAMPLE.read_text()  # nothing machine-specific


def test_bad_arguments_exit_with_a_message(capsys, tmp_path):
    """A bad or taken experiment id, or a bad round count, ends the command with status 2."""
    from examples.flower_digits.__main__ import main

    assert main(["--experiment-id", "../escape"]) == 2
    assert "invalid experiment id" in capsys.readouterr().err
    (tmp_path / "taken.jsonl").write_text("")
    assert main(["--log-dir", str(tmp_path), "--experiment-id", "taken"]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["--rounds", "0"])
    assert exited.value.code == 2
    assert "at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_the_example_runs_with_one_command(tmp_path):
    """``python -m examples.flower_digits`` trains 3 clients and records server and clients."""
    pytest.importorskip("flwr")
    pytest.importorskip("ray")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.flower_digits",
            "--rounds",
            "2",
            "--log-dir",
            str(tmp_path),
            "--experiment-id",
            "digits-test",
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 rounds, 3 clients" in done.stdout
    assert f"recorded: {tmp_path / 'digits-test.jsonl'}" in done.stdout
    _check_federated_run(_messages(tmp_path / "digits-test.jsonl"), rounds=2, clients=3)
