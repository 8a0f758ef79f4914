"""Files truncated, replaced and deleted under live writers and clients: log_reset, no stale data, no crash."""

from __future__ import annotations

import asyncio
import os
import re
import sys

import orjson
import pytest

from recorder.format import encode_message
from tailer.server import serve_directory
from tests._reliability_helpers import (
    ResumingClient,
    env_without_tailer,
    file_truth,
    kill_all,
    start_writer,
    strip_wire,
    wait_for,
    write_script,
)
from tests._tailer_helpers import ROOT, Writer, aio, http_get, recv_json, ws_connect


def _caught_up(clients: list[ResumingClient], truth: dict, segment: int) -> bool:
    """Every client is in segment number ``segment`` and has its last line."""
    return all(
        len(c.segments) > segment
        and c.segments[segment]
        and c.segments[segment][-1]["seq"] >= max(truth)
        for c in clients
    )


def _assert_segment_is(segment: list[dict], truth: dict, what: str) -> None:
    seqs = [m["seq"] for m in segment]
    assert seqs == sorted(truth), f"{what}: got seqs {seqs[:5]}..{seqs[-5:]} of {len(seqs)}"
    for m in segment:
        assert strip_wire(m) == truth[m["seq"]], f"{what}: stale or wrong data at {m['seq']}"


@pytest.mark.slow
@aio(180)
async def test_truncate_replace_delete_under_live_writers(tmp_path):
    """Each rewrite of the file is one log_reset; what follows it is exactly the new content."""
    script = write_script(tmp_path)
    path = tmp_path / "rot.jsonl"
    procs = []
    async with serve_directory(tmp_path, port=0) as app:
        experiment = ResumingClient(lambda s: f"{app.ws_url}experiments/rot?since={s}", "rot")
        # The firehose is live only: it must see the file from its creation on.
        firehose = ResumingClient(lambda s: app.ws_url, "rot")
        clients = [experiment.start(), firehose.start()]
        await wait_for(lambda: experiment.connections and firehose.connections, 30, "connect")
        try:
            # 1. Two writer processes at 1 kHz; truncation to 0 while they go on (O_APPEND:
            #    they continue at the new end).
            procs = [start_writer(script, tmp_path, "rot", f"a{k}", 3000, 1000) for k in (0, 1)]
            await wait_for(lambda: path.exists() and path.stat().st_size > 100_000, 60, "growth")
            os.truncate(path, 0)
            for p in procs:
                assert (await asyncio.to_thread(p.wait, 120)) == 0
            truncated = file_truth(path)
            assert truncated and min(truncated) == 0
            await wait_for(lambda: _caught_up(clients, truncated, 1), 60, "after truncation")
            for c in clients:
                _assert_segment_is(c.segments[1], truncated, "after truncation")

            # 2. Replaced by rename (log rotation): a new inode under the same name.
            fresh = tmp_path / "rot.tmp"
            fresh.write_bytes(b"".join(encode_message("rotated", {"i": i}) for i in range(300)))
            os.replace(fresh, path)
            replaced = file_truth(path)
            await wait_for(lambda: _caught_up(clients, replaced, 2), 60, "after replacement")
            for c in clients:
                _assert_segment_is(c.segments[2], replaced, "after replacement")

            # 3. Deleted, then created again by a new writer.
            path.unlink()
            await wait_for(
                lambda: not any(e["experiment_id"] == "rot" for e in app.summaries()),
                30,
                "the deletion to be seen",
            )
            procs = [start_writer(script, tmp_path, "rot", "c", 1500, 1000)]
            assert (await asyncio.to_thread(procs[0].wait, 120)) == 0
            recreated = file_truth(path)
            await wait_for(lambda: _caught_up(clients, recreated, 3), 60, "after re-creation")
        finally:
            kill_all(procs)
            for c in clients:
                await c.stop()
        for c in clients:
            _assert_segment_is(c.segments[3], recreated, "after re-creation")
            # One new segment per rewrite: truncation, replacement, deletion.
            assert len(c.segments) == 4, [len(s) for s in c.segments]
        assert sum(1 for m in firehose.control if m["type"] == "log_reset") == 3
        assert experiment.connections >= 2  # the deletion closed it (1000); it came back
        status, _, _ = await http_get(app.port, "/healthz")
        assert status == 200
        summary = {e["experiment_id"]: e for e in app.summaries()}["rot"]
        assert summary["messages"] == len(recreated) == 1500


async def _start_serve(runs, log):
    """``python -m tailer serve`` as a subprocess: a hang in it cannot block this test's loop."""
    with open(log, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tailer",
            "serve",
            str(runs),
            "--port",
            "0",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env={**env_without_tailer(), "PYTHONUNBUFFERED": "1"},
        )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
    except TimeoutError:
        line = b""
    match = re.search(rb"on http://127\.0\.0\.1:(\d+)/", line)
    return proc, int(match.group(1)) if match else None


async def _healthy(port: int) -> bool:
    try:
        status, _, _ = await asyncio.wait_for(http_get(port, "/healthz"), 5)
    except (TimeoutError, OSError):
        return False
    return status == 200


@aio(90)
async def test_a_fifo_or_directory_named_jsonl_is_not_an_experiment(tmp_path):
    """A FIFO or a directory called x.jsonl, at start-up or created later, never blocks or crashes the server."""
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "dir-at-start.jsonl").mkdir()
    os.mkfifo(runs / "fifo-at-start.jsonl")
    Writer(runs, "real").message("m", {"i": 0})
    proc, port = await _start_serve(runs, tmp_path / "serve.log")
    try:
        assert port is not None, (tmp_path / "serve.log").read_text()[-2000:]
        (runs / "dir-later.jsonl").mkdir()
        os.mkfifo(runs / "fifo-later.jsonl")
        async with ws_connect(f"ws://127.0.0.1:{port}/experiments/real") as ws:
            assert (await recv_json(ws))["data"]["i"] == 0
            await asyncio.sleep(1.5)  # a sweep (every second) meets both
            Writer(runs, "real").message("m", {"i": 1})
            assert (await recv_json(ws))["data"]["i"] == 1
        assert await _healthy(port)
        _, _, body = await http_get(port, "/api/experiments")
        assert [e["experiment_id"] for e in orjson.loads(body)] == ["real"]
    finally:
        if proc.returncode is None:
            proc.kill()  # SIGKILL: a process stuck opening a FIFO ignores SIGTERM
            await proc.wait()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


@aio(60)
async def test_the_runs_directory_deleted_and_created_again(tmp_path):
    """rm -rf DIR while serving (a writer still holding its file open): log_reset, then the new DIR streams."""
    import shutil

    runs = tmp_path / "runs"
    runs.mkdir()
    held = Writer(runs, "a")  # a training process that still has the deleted file open
    held.message("m", {"i": 0})
    async with (
        serve_directory(runs, port=0, poll_interval=0.1) as app,
        ws_connect(app.ws_url) as fire,
    ):
        shutil.rmtree(runs)
        assert await recv_json(fire) == {"type": "log_reset", "experiment_id": "a", "data": {}}
        held.message("m", {"i": -1})  # into the deleted file: nobody can see it
        runs.mkdir()
        fresh = Writer(runs, "a")
        fresh.message("m", {"i": 1})
        got = await recv_json(fire)
        assert (got["experiment_id"], got["seq"], got["data"]["i"]) == ("a", 0, 1)
        async with ws_connect(app.ws_url + "experiments/a") as ws:
            assert (await recv_json(ws))["data"]["i"] == 1
            fresh.message("m", {"i": 2})
            assert (await recv_json(ws))["data"]["i"] == 2
        assert (await recv_json(fire))["data"]["i"] == 2
    held.close()
    fresh.close()
