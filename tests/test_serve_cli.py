"""The real ``tailer serve`` / ``replay`` / ``ls`` commands as subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from recorder.format import encode_message
from tests._tailer_helpers import (
    ROOT,
    Writer,
    aio,
    assert_silent,
    http_get,
    recv_json,
    tailer_cli,
    ws_connect,
)


@aio(90)
async def test_serve_prints_real_port_streams_and_exits_0_on_sigterm(tmp_path):
    """--port 0 prints the real URL; SIGTERM closes clients with 1001 and exits 0."""
    runs = tmp_path / "runs"  # created by the command
    log = tmp_path / "err.log"
    async with tailer_cli("serve", str(runs), "--port", "0", log=log) as (proc, port, line):
        assert f"serving {runs}" in line
        async with ws_connect(f"ws://127.0.0.1:{port}/") as ws:
            Writer(runs, "cli").message("epoch_end", {"epoch": 1})
            got = await recv_json(ws)
            assert (got["experiment_id"], got["seq"]) == ("cli", 0)
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd.code == 1001
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    text = log.read_text()
    assert "connected" in text and "closed: 1001" in text
    assert "Traceback" not in text


@aio(90)
async def test_sigint_exits_0(tmp_path):
    """Ctrl-C (SIGINT) is a clean shutdown too."""
    async with tailer_cli("serve", str(tmp_path), "--port", "0", log=tmp_path / "err.log") as (
        proc,
        port,
        _,
    ):
        assert (await http_get(port, "/healthz"))[0] == 200
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert "Traceback" not in (tmp_path / "err.log").read_text()


def test_port_in_use_exits_2_with_one_line(tmp_path):
    """A taken port gives one line on stderr, exit code 2, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAILER_")}
        result = subprocess.run(
            [sys.executable, "-m", "tailer", "serve", str(tmp_path), "--port", str(port), "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "already in use" in result.stderr and "Traceback" not in result.stderr


def test_bad_options_exit_2_without_traceback(tmp_path):
    """Invalid option values are one-line errors."""
    for args in (["--port", "70000"], ["--max-clients", "0"], ["--queue-bytes", "10"]):
        result = subprocess.run(
            [sys.executable, "-m", "tailer", "serve", str(tmp_path), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, args


@aio(90)
async def test_token_from_environment(tmp_path):
    """TAILER_TOKEN protects the server like --token; the printed URL carries it."""
    async with tailer_cli(
        "serve",
        str(tmp_path),
        "--port",
        "0",
        log=tmp_path / "e.log",
        env={"TAILER_TOKEN": "envtok"},
    ) as (proc, port, line):
        assert "?token=envtok" in line
        assert (await http_get(port, "/api/experiments"))[0] == 401
        assert (await http_get(port, "/api/experiments?token=envtok"))[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0


def _ls(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tailer", "ls", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ls_plain_table_and_json(tmp_path):
    """tailer ls prints an aligned table (not a TTY) and --json the same rows as /api/experiments."""
    w = Writer(tmp_path, "alpha")
    w.message("training_start", timestamp=None)
    w.raw(b"junk\n")
    w.message("training_end", {"run_id": "alpha"})
    Writer(tmp_path, "beta-2").message("epoch_start", {"epoch": 0, "total_epochs": 3})
    Writer(tmp_path, "gamma").message("error", {"error": "disk full", "error_type": "OSError"})
    result = _ls(str(tmp_path))
    assert result.returncode == 0, result.stderr
    header, first, second, third = result.stdout.strip().splitlines()
    assert header.split()[:4] == ["EXPERIMENT", "STATUS", "MESSAGES", "MALFORMED"]
    assert first.split()[:4] == ["alpha", "completed", "2", "1"]
    assert second.split()[:4] == ["beta-2", "running", "1", "0"]
    assert third.split()[:4] == ["gamma", "failed", "1", "0"]
    assert "\x1b[" not in result.stdout  # no colour codes in a pipe
    rows = orjson.loads(_ls(str(tmp_path), "--json").stdout)
    assert [r["experiment_id"] for r in rows] == ["alpha", "beta-2", "gamma"]
    assert [r["error"] for r in rows] == [None, None, "disk full"]
    assert rows[0]["bytes"] == w.path.stat().st_size and rows[0]["malformed"] == 1
    assert rows[0]["first_timestamp"] and rows[0]["last_timestamp"]
    assert all(0 <= row["stale"] < 600 for row in rows)  # seconds since the last line


def test_ls_missing_directory_is_an_error(tmp_path):
    """A missing directory is a one-line error with exit code 1."""
    result = _ls(str(tmp_path / "nope"))
    assert result.returncode == 1 and "no such directory" in result.stderr


@aio(120)
async def test_replay_serves_a_finished_run_on_root(tmp_path):
    """tailer replay FILE: each client on / gets the whole run from the start, then replay_end, and stays."""
    pytest.importorskip("replay.pacing")
    run = tmp_path / "done.jsonl"
    lines = [
        b'{"type":"training_start","timestamp":"2025-01-01T00:00:00.000Z","data":{}}\n',
        b"not json\n",
        b'{"type":"epoch_end","timestamp":"2025-01-01T00:00:00.200Z","data":{"epoch":0,"phase":"train","metrics":{"loss":1}}}\n',
        b'{"type":"training_end","timestamp":"2025-01-01T00:00:00.400Z","data":{"run_id":"done"}}\n',
    ]
    run.write_bytes(b"".join(lines))
    async with tailer_cli(
        "replay", str(run), "--port", "0", "--speed", "4", log=tmp_path / "e.log"
    ) as (proc, port, line):
        assert "replaying" in line
        for _ in range(2):  # every client gets its own replay from the start
            async with ws_connect(f"ws://127.0.0.1:{port}/") as ws:
                got = []
                while not got or got[-1]["type"] != "replay_end":
                    got.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
                # The connection stays open (DESIGN §11): nothing more, pings answered.
                await assert_silent(ws, 0.3)
                await ws.send('{"type":"ping"}')
                assert (await recv_json(ws))["type"] == "pong"
            assert [m["type"] for m in got] == [
                "training_start",
                "epoch_end",
                "training_end",
                "replay_end",
            ]
            assert [m.get("seq") for m in got[:3]] == [0, 2, 3]
            assert all(m.get("experiment_id") == "done" for m in got)
        async with ws_connect(f"ws://127.0.0.1:{port}/experiments/done?since=5") as ws:
            assert (await recv_json(ws))["seq"] == 0  # the dashboard's run view gets the replay too
        status, _, _ = await http_get(port, "/experiments/other", upgrade=True)
        assert status == 404
        _, _, body = await http_get(port, "/api/experiments")
        assert orjson.loads(body)[0]["status"] == "completed"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0


@aio(90)
async def test_replay_of_a_file_not_named_jsonl_serves_it_under_its_name(tmp_path):
    """`tailer replay a.log` works: the run's id is the file's whole name."""
    run = tmp_path / "a.log"
    run.write_bytes(encode_message("epoch_end", {"epoch": 0}, timestamp="2025-01-01T00:00:00Z"))
    async with tailer_cli(
        "replay", str(run), "--port", "0", "--speed", "0", log=tmp_path / "e.log"
    ) as (proc, port, line):
        assert "replaying" in line
        async with ws_connect(f"ws://127.0.0.1:{port}/") as ws:
            first = await recv_json(ws)
        assert (first["type"], first["experiment_id"]) == ("epoch_end", "a.log")
        _, _, body = await http_get(port, "/api/experiments")
        assert [e["experiment_id"] for e in orjson.loads(body)] == ["a.log"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0


async def _replayed(url: str) -> tuple[list[dict], int, float]:
    """Every message of one replay connection, its close code (None: still open 1 s after
    replay_end) and how long the messages took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    got: list[dict] = []
    code = None
    async with ws_connect(url) as ws:
        try:
            while not got or got[-1]["type"] != "replay_end":
                got.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
            took = loop.time() - start
            await asyncio.wait_for(ws.recv(), 1)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            took = loop.time() - start
        except TimeoutError:
            pass  # still open a second after replay_end
    return got, code, took


@aio(120)
async def test_replay_serves_the_dashboards_run_endpoint_at_the_replay_pace(tmp_path):
    """Under tailer replay, /experiments/<id> (the dashboard's run view) gets the run paced, then replay_end."""
    pytest.importorskip("replay.pacing")
    run = tmp_path / "paced-run.jsonl"
    run.write_bytes(
        b"".join(
            encode_message(
                "epoch_end" if i else "training_start",
                {"epoch": i, "phase": "train", "metrics": {"loss": 1 / (i + 1)}},
                timestamp=f"2025-01-01T00:00:0{i}.000Z",
            )
            for i in range(5)
        )
        + b"torn"  # an incomplete last line is not part of the run
    )
    speed = 4  # 4 s recorded -> 1 s replayed
    async with tailer_cli(
        "replay", str(run), "--port", "0", "--speed", str(speed), log=tmp_path / "e.log"
    ) as (proc, port, _):
        base = f"ws://127.0.0.1:{port}"
        # The run view's first connection, its reconnect with since, and the filtered firehose.
        for target in (
            "/experiments/paced-run",
            "/experiments/paced-run?since=3",
            "/?experiment=paced-run",
        ):
            got, code, took = await _replayed(base + target)
            # `/` stays open after the run (DESIGN §11); _replayed leaves at replay_end.
            assert code == (None if target.startswith("/?") else 1000), target
            assert [m["type"] for m in got] == ["training_start"] + ["epoch_end"] * 4 + [
                "replay_end"
            ]
            assert [m.get("seq") for m in got[:-1]] == [0, 1, 2, 3, 4], target
            assert all(m["experiment_id"] == "paced-run" for m in got)
            assert took >= 0.75 * 4 / speed, f"{target} was not paced ({took:.2f} s)"
        # The replay endpoint picks its own pace; other ids do not exist here.
        got, code, _ = await _replayed(base + "/experiments/paced-run/replay?speed=0")
        assert code == 1000 and len(got) == 6
        assert (await http_get(port, "/experiments/other", upgrade=True))[0] == 404
        assert (await http_get(port, "/experiments/other/replay", upgrade=True))[0] == 404
        status, _, page = await http_get(port, "/")
        assert status == 200 and b"<html" in page.lower()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0


def test_unusable_directory_exits_2(tmp_path):
    """DIR that is a file is a one-line error with exit code 2."""
    target = tmp_path / "file"
    target.write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "tailer", "serve", str(target), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "is a file" in result.stderr
    assert "Traceback" not in result.stderr
