"""Streaming with a real in-process tailer and real websockets clients (DESIGN §3)."""

from __future__ import annotations

import asyncio
import os
import socket

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from recorder.format import encode_message, format_timestamp
from tailer.server import serve_directory
from tests._tailer_helpers import (
    Writer,
    aio,
    assert_silent,
    http_get,
    recv_json,
    recv_n,
    ws_connect,
)


@aio()
async def test_firehose_streams_new_lines_of_every_experiment(tmp_path):
    """WS / gets new messages of all experiments live, with experiment_id and seq spliced in."""
    old = Writer(tmp_path, "old")
    old.message("epoch_start", {"epoch": 0, "total_epochs": 2})
    async with serve_directory(tmp_path, port=0) as app, ws_connect(app.ws_url) as ws:
        await assert_silent(ws, 0.2)  # history is not replayed on the firehose
        old.message("epoch_end", {"epoch": 0, "phase": "train", "metrics": {"loss": 0.5}}, run="x")
        got = await recv_json(ws)
        assert got["type"] == "epoch_end" and got["experiment_id"] == "old" and got["seq"] == 1
        assert got["data"]["metrics"]["loss"] == 0.5 and got["run"] == "x" and "timestamp" in got
        new = Writer(tmp_path, "new")  # a file appearing while serving
        new.message("training_start")
        got = await recv_json(ws)
        assert (got["experiment_id"], got["seq"], got["type"]) == ("new", 0, "training_start")


@aio()
async def test_partial_line_is_held_until_its_newline(tmp_path):
    """A line written in pieces is sent once, when its newline arrives."""
    w = Writer(tmp_path, "p")
    async with serve_directory(tmp_path, port=0) as app, ws_connect(app.ws_url) as ws:
        line = b'{"type":"epoch_end","timestamp":"2025-01-01T00:00:00Z","data":{"epoch":7}}\n'
        w.raw(line[:20])
        await assert_silent(ws, 0.3)
        w.raw(line[20:-1])
        await assert_silent(ws, 0.3)
        w.raw(b"\n")
        got = await recv_json(ws)
        assert got["data"] == {"epoch": 7} and got["seq"] == 0


@aio()
async def test_malformed_lines_count_in_seq_and_are_never_forwarded(tmp_path):
    """Bad lines take a seq but never reach a client, and never stop the stream."""
    w = Writer(tmp_path, "m")
    async with serve_directory(tmp_path, port=0) as app, ws_connect(app.ws_url) as ws:
        w.message("a")
        w.raw(b'not json\n[1]\n{"type": 5}\n' + b'{"type":"x","pad":"' + b"z" * (1 << 20) + b'"}\n')
        w.message("b")
        first, second = await recv_n(ws, 2)
        assert (first["type"], first["seq"]) == ("a", 0)
        assert (second["type"], second["seq"]) == ("b", 5)
        await assert_silent(ws, 0.2)
        _, _, body = await http_get(app.port, "/api/experiments")
        (entry,) = orjson.loads(body)
        assert entry["malformed"] == 4 and entry["messages"] == 2


@aio()
async def test_experiment_endpoint_sends_history_then_live(tmp_path):
    """/experiments/{id} starts from seq 0 (or after since) and then continues live."""
    w = Writer(tmp_path, "h")
    for i in range(5):
        w.message("batch_metrics", {"step": i})
    w.raw(b"garbage\n")
    async with serve_directory(tmp_path, port=0) as app:
        async with ws_connect(app.ws_url + "experiments/h") as ws:
            assert [m["seq"] for m in await recv_n(ws, 5)] == [0, 1, 2, 3, 4]
            w.message("batch_metrics", {"step": 6})
            assert (await recv_json(ws))["seq"] == 6
        async with ws_connect(app.ws_url + "experiments/h?since=3") as ws:
            assert [m["seq"] for m in await recv_n(ws, 2)] == [4, 6]
            await assert_silent(ws, 0.2)
        async with ws_connect(app.ws_url + "?experiment=h&since=-1") as ws:
            assert [m["seq"] for m in await recv_n(ws, 6)] == [0, 1, 2, 3, 4, 6]
        async with ws_connect(app.ws_url + "?experiment=h") as ws:
            w.message("x")
            assert (await recv_json(ws))["seq"] == 7  # live only, and only this experiment
            Writer(tmp_path, "other").message("y")
            await assert_silent(ws, 0.3)


@aio()
async def test_subscribing_before_the_file_exists(tmp_path):
    """/experiments/{id} for a run not started yet waits, then streams it from seq 0."""
    async with (
        serve_directory(tmp_path, port=0) as app,
        ws_connect(app.ws_url + "experiments/later") as ws,
    ):
        await assert_silent(ws, 0.2)
        Writer(tmp_path, "later").message("training_start")
        assert (await recv_json(ws))["seq"] == 0


@pytest.mark.slow
@aio(120)
async def test_history_to_live_switch_neither_drops_nor_repeats(tmp_path):
    """Lines appended while a long history is being sent arrive exactly once, in order."""
    w = Writer(tmp_path, "race")
    w.many(60_000)
    total = 60_000
    async with serve_directory(tmp_path, port=0, index_every=1000) as app:
        stop = asyncio.Event()

        async def keep_writing() -> None:
            nonlocal total
            while not stop.is_set():
                w.many(7, start=total)
                total += 7
                await asyncio.sleep(0.002)

        writer = asyncio.create_task(keep_writing())
        seqs = []
        async with ws_connect(app.ws_url + "experiments/race", max_queue=4) as ws:
            while len(seqs) < 60_000:
                seqs.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10))["seq"])
                if len(seqs) % 5000 == 0:
                    await asyncio.sleep(0.02)  # a client reading slower than the writer, at times
            stop.set()
            await writer
            while len(seqs) < total:
                seqs.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10))["seq"])
            await assert_silent(ws, 0.3)
        assert seqs == list(range(total))
        assert total > 60_000


@aio()
async def test_truncation_sends_log_reset_and_renumbers(tmp_path):
    """A truncated file sends log_reset to its subscribers, then numbers the new content from 0."""
    w = Writer(tmp_path, "t")
    w.message("a")
    w.message("b")
    async with (
        serve_directory(tmp_path, port=0) as app,
        ws_connect(app.ws_url + "experiments/t") as ws,
        ws_connect(app.ws_url) as fire,
    ):
        assert len(await recv_n(ws, 2)) == 2
        os.truncate(w.path, 0)
        w.message("c")
        for client in (ws, fire):
            reset = await recv_json(client)
            assert reset["type"] == "log_reset" and reset["experiment_id"] == "t"
            got = await recv_json(client)
            assert (got["type"], got["seq"]) == ("c", 0)


@aio()
async def test_replaced_file_sends_log_reset(tmp_path):
    """A file replaced by rename (new inode) is a reset too, even if it is longer."""
    w = Writer(tmp_path, "r")
    w.message("a")
    async with (
        serve_directory(tmp_path, port=0) as app,
        ws_connect(app.ws_url + "experiments/r") as ws,
    ):
        await recv_json(ws)
        fresh = Writer(tmp_path, "r-new")
        for t in ("x", "y", "z"):
            fresh.message(t)
        os.replace(fresh.path, w.path)
        assert (await recv_json(ws))["type"] == "log_reset"
        assert [(m["type"], m["seq"]) for m in await recv_n(ws, 3)] == [
            ("x", 0),
            ("y", 1),
            ("z", 2),
        ]


@aio()
async def test_deleted_file_ends_its_streams_with_close_1000(tmp_path):
    """Deleting a file closes its experiment's subscribers (1000); the firehose gets log_reset."""
    w = Writer(tmp_path, "d")
    w.message("a")
    async with serve_directory(tmp_path, port=0) as app:
        async with ws_connect(app.ws_url + "experiments/d") as ws, ws_connect(app.ws_url) as fire:
            await recv_json(ws)
            w.path.unlink()
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd.code == 1000 and "deleted" in closed.value.rcvd.reason
            reset = await recv_json(fire)  # the firehose is told to forget the experiment
            assert (reset["type"], reset["experiment_id"]) == ("log_reset", "d")
            Writer(tmp_path, "e").message("still")
            assert (await recv_json(fire))["experiment_id"] == "e"
        _, _, body = await http_get(app.port, "/api/experiments")
        assert [e["experiment_id"] for e in orjson.loads(body)] == ["e"]


@aio()
async def test_restart_and_resume_with_since_has_no_gap_or_duplicate(tmp_path):
    """seq is stable across tailer restarts, so since=<last seen> resumes exactly."""
    w = Writer(tmp_path, "s")
    for i in range(10):
        w.message("m", {"i": i})
    async with (
        serve_directory(tmp_path, port=0) as app,
        ws_connect(app.ws_url + "experiments/s") as ws,
    ):
        seen = await recv_n(ws, 10)
    last = seen[-1]["seq"]
    w.raw(b"oops\n")
    for i in range(10, 15):
        w.message("m", {"i": i})
    async with (
        serve_directory(tmp_path, port=0) as app,
        ws_connect(app.ws_url + f"experiments/s?since={last}") as ws,
    ):
        rest = await recv_n(ws, 5)
        w.message("m", {"i": 15})
        rest.append(await recv_json(ws))
    assert [m["data"]["i"] for m in seen + rest] == list(range(16))
    assert [m["seq"] for m in rest] == [11, 12, 13, 14, 15, 16]


@aio()
async def test_resume_past_a_file_replaced_while_stopped_gets_log_reset_then_the_file(tmp_path):
    """since beyond the file's lines (replaced or truncated while the tailer was down): log_reset, then seq 0 on."""
    w = Writer(tmp_path, "g")
    for i in range(10):
        w.message("old", {"i": i})
    async with (
        serve_directory(tmp_path, port=0) as app,
        ws_connect(app.ws_url + "experiments/g") as ws,
    ):
        last = (await recv_n(ws, 10))[-1]["seq"]
    assert last == 9
    # While no tailer runs, the run is started over: a shorter file under the same name.
    fresh = Writer(tmp_path, "g-new")
    for i in range(3):
        fresh.message("new", {"i": i})
    os.replace(fresh.path, w.path)
    async with serve_directory(tmp_path, port=0) as app:
        # The dashboard's run view and a filtered firehose, both resuming after seq 9.
        for target in (f"experiments/g?since={last}", f"?experiment=g&since={last}"):
            async with ws_connect(app.ws_url + target) as ws:
                reset = await recv_json(ws)
                assert (reset["type"], reset["experiment_id"]) == ("log_reset", "g"), target
                got = await recv_n(ws, 3)
                assert [(m["type"], m["seq"]) for m in got] == [("new", 0), ("new", 1), ("new", 2)]
                await assert_silent(ws)
        # since=2 is the file's last line: nothing is claimed that is not there, no reset.
        async with ws_connect(app.ws_url + "experiments/g?since=2") as ws:
            await assert_silent(ws)
            fresh2 = Writer(tmp_path, "g")
            fresh2.message("live")
            got = await recv_json(ws)
            assert (got["type"], got["seq"]) == ("live", 3)
        # The file now ends at seq 3: since=4 claims one line too many, since=3 none.
        async with ws_connect(app.ws_url + "experiments/g?since=4") as ws:
            assert (await recv_json(ws))["type"] == "log_reset"
            assert [m["seq"] for m in await recv_n(ws, 4)] == [0, 1, 2, 3]
        async with ws_connect(app.ws_url + "experiments/g?since=3") as ws:
            await assert_silent(ws)
        # A file deleted while the client was away: reset at once; a new file starts from 0.
        async with ws_connect(app.ws_url + "experiments/gone?since=5") as ws:
            assert (await recv_json(ws))["type"] == "log_reset"
            Writer(tmp_path, "gone").message("first")
            got = await recv_json(ws)
            assert (got["type"], got["seq"]) == ("first", 0)


@aio()
async def test_ping_pong_and_other_client_frames(tmp_path):
    """{"type":"ping"} gets a pong; junk, binary and unknown frames are ignored."""
    async with serve_directory(tmp_path, port=0) as app, ws_connect(app.ws_url) as ws:
        for junk in ("hello", "{}", "[1,2]", '{"type":"subscribe"}', b"\x00\xff", "{" * 1000):
            await ws.send(junk)
        await ws.send(orjson.dumps({"type": "ping"}).decode())
        assert await recv_json(ws) == {"type": "pong", "data": {}}
        Writer(tmp_path, "after").message("ok")
        assert (await recv_json(ws))["type"] == "ok"


@aio()
async def test_oversized_client_frame_closes_that_connection_only(tmp_path):
    """A frame over the limit closes its connection (1009); the server and others go on."""
    async with (
        serve_directory(tmp_path, port=0) as app,
        ws_connect(app.ws_url) as good,
        ws_connect(app.ws_url) as bad,
    ):
        await bad.send("x" * 100_000)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(bad.recv(), 10)
        assert closed.value.rcvd.code == 1009
        Writer(tmp_path, "a").message("ok")
        assert (await recv_json(good))["type"] == "ok"
        status, _, _ = await http_get(app.port, "/healthz")
        assert status == 200


@aio()
async def test_hundred_concurrent_clients_each_get_everything(tmp_path):
    """100 clients on different endpoints all receive every line, in order."""
    w = Writer(tmp_path, "c")
    w.message("m")
    async with serve_directory(tmp_path, port=0) as app:
        urls = (
            [app.ws_url] * 40
            + [app.ws_url + "?experiment=c"] * 30
            + [app.ws_url + "experiments/c?since=0"] * 30
        )
        clients = [await ws_connect(url).__aenter__() for url in urls]
        try:
            await asyncio.sleep(0.3)
            for i in range(200):
                w.message("m", {"i": i})
            results = await asyncio.gather(*(recv_n(c, 200) for c in clients))
            for got in results:
                assert [m["seq"] for m in got] == list(range(1, 201))
            assert len(app.clients) == 100
        finally:
            for c in clients:
                await c.close()


@pytest.mark.slow
@aio(180)
async def test_client_that_never_reads_is_closed_1013_without_hurting_others(tmp_path):
    """20,000 x 1 KB lines: the stalled client gets 1013, the others everything, memory stays bounded."""
    import psutil

    w = Writer(tmp_path, "big")
    w.message("start")
    process = psutil.Process()
    async with serve_directory(tmp_path, port=0, queue_bytes=2 << 20) as app:
        # A small receive buffer keeps the kernel from absorbing most of the 20 MB.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.connect(("127.0.0.1", app.port))
        stalled = await ws_connect(app.ws_url, max_queue=1, sock=sock).__aenter__()
        readers = [await ws_connect(app.ws_url).__aenter__() for _ in range(3)]
        rss_before = process.memory_info().rss
        line = b"".join(
            b'{"type":"batch_metrics","timestamp":"2025-01-01T00:00:00Z","data":{"step":%d,"pad":"%s"}}\n'
            % (i, b"x" * 960)
            for i in range(20_000)
        )

        async def write() -> None:
            # About 6 MB/s: the three reading clients (same process) keep up comfortably.
            for start in range(0, len(line), 64 << 10):
                w.raw(line[start : start + (64 << 10)])
                await asyncio.sleep(0.01)

        counts = await asyncio.gather(write(), *(_count_until(r, 20_000) for r in readers))
        rss_growth = process.memory_info().rss - rss_before
        assert counts[1:] == [20_000] * 3
        # The stalled client has been closed; it reads what was queued, then the 1013 close.
        received = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(stalled.recv(), 10)
                received += 1
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert 0 < received < 20_000
        assert rss_growth < 200 << 20, f"server process grew by {rss_growth / 2**20:.0f} MiB"
        # It resumes with since= the last seq it received: nothing lost.
        async with ws_connect(app.ws_url + f"?experiment=big&since={received}") as again:
            assert (await recv_json(again))["data"]["step"] == received
        for r in readers:
            await r.close()


async def _count_until(ws, n: int) -> int:
    count = 0
    while count < n:
        message = await asyncio.wait_for(ws.recv(), 30)
        if b'"batch_metrics"' in (message.encode() if isinstance(message, str) else message):
            count += 1
    return count


@aio()
async def test_api_experiments_lists_every_run_with_its_fields(tmp_path):
    """GET /api/experiments gives id, messages, bytes, first/last timestamp, status and error."""
    a = Writer(tmp_path, "a")
    a.message("training_start", timestamp=None)
    a.message("training_end", {"run_id": "a"})
    b = Writer(tmp_path, "b")
    b.message("epoch_start", {"epoch": 0, "total_epochs": 1})
    Writer(tmp_path, "c").message("batch_metrics", {"step": 1})
    d = Writer(tmp_path, "d")
    d.message("error", {"error": "first", "error_type": "x"})
    (tmp_path / "not an id.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("x")
    async with serve_directory(tmp_path, port=0) as app:
        b.message("status", {"status": "failed", "message": "oom"})
        d.message("error", {"error": "CUDA out of memory", "error_type": "oom"})
        d.message("status", {"status": "failed", "message": ""})
        await asyncio.sleep(0.3)
        status, headers, body = await http_get(app.port, "/api/experiments")
    assert status == 200 and headers["content-type"] == "application/json"
    entries = {e["experiment_id"]: e for e in orjson.loads(body)}
    assert sorted(entries) == ["a", "b", "c", "d"]
    assert entries["a"]["status"] == "completed"
    assert entries["b"]["status"] == "failed"
    assert entries["c"]["status"] == "unknown"
    # The last error message's text, kept as lines arrive; null when there is none.
    assert entries["d"]["status"] == "failed" and entries["d"]["error"] == "CUDA out of memory"
    assert entries["a"]["error"] is None and entries["b"]["error"] is None
    a_entry = entries["a"]
    assert a_entry["messages"] == 2 and a_entry["bytes"] == a.path.stat().st_size
    assert (
        a_entry["first_timestamp"].endswith("Z")
        and a_entry["last_timestamp"] >= a_entry["first_timestamp"]
    )
    assert set(a_entry) >= {
        "experiment_id",
        "messages",
        "bytes",
        "first_timestamp",
        "last_timestamp",
        "status",
        "malformed",
        "error",
    }


@aio()
async def test_poll_mode_sees_appends_without_inotify(tmp_path):
    """--poll (size checks only) still streams appended lines."""
    w = Writer(tmp_path, "n")
    async with (
        serve_directory(tmp_path, port=0, poll=True, poll_interval=0.05) as app,
        ws_connect(app.ws_url) as ws,
    ):
        w.message("x")
        assert (await recv_json(ws))["type"] == "x"


@aio()
async def test_directory_is_created_if_missing(tmp_path):
    """serve_directory creates DIR and serves it empty."""
    target = tmp_path / "a" / "runs"
    async with serve_directory(target, port=0) as app:
        _, _, body = await http_get(app.port, "/api/experiments")
        assert orjson.loads(body) == []
    assert target.is_dir()


@aio()
async def test_watchfiles_is_used_where_direct_inotify_is_unavailable(tmp_path, monkeypatch):
    """Without direct inotify the watchfiles watcher streams appends just as well."""
    from tailer import watcher

    def unavailable():
        raise watcher.NotificationsUnavailable("test")

    monkeypatch.setattr(watcher, "_libc", unavailable)
    w = Writer(tmp_path, "wf")
    async with (
        serve_directory(tmp_path, port=0, scan_interval=60) as app,
        ws_connect(app.ws_url) as ws,
    ):
        await asyncio.sleep(0.2)  # watchfiles' thread starts asynchronously
        for i in range(3):
            w.message("m", {"i": i})
        assert [m["data"]["i"] for m in await recv_n(ws, 3)] == [0, 1, 2]


@aio()
async def test_sweep_alone_catches_changes(tmp_path, monkeypatch):
    """With notifications failing entirely, the periodic size check still streams appends."""
    from tailer import watcher

    async def silent(*args, **kwargs):
        return None  # as if the watch ended at once

    monkeypatch.setattr(watcher, "_inotify", silent)
    w = Writer(tmp_path, "sw")
    async with (
        serve_directory(tmp_path, port=0, poll_interval=0.05) as app,
        ws_connect(app.ws_url) as ws,
    ):
        w.message("m")
        assert (await recv_json(ws))["type"] == "m"


@aio()
async def test_replay_endpoint_paces_a_run_and_closes_1000(tmp_path):
    """WS /experiments/{id}/replay?speed=0 sends the run, replay_end, then closes normally."""
    pytest.importorskip("replay.pacing")
    w = Writer(tmp_path, "rp")
    for i in range(5):
        w.message("epoch_end", {"epoch": i})
    w.raw(b"bad\n")
    w.message("training_end")
    async with serve_directory(tmp_path, port=0) as app:
        async with ws_connect(app.ws_url + "experiments/rp/replay?speed=0") as ws:
            got = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    got.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
        assert closed.value.rcvd.code == 1000
        assert [m["seq"] for m in got[:-1]] == [0, 1, 2, 3, 4, 6]
        assert got[-1]["type"] == "replay_end"
        status, _, _ = await http_get(app.port, "/experiments/rp/replay?speed=-1", upgrade=True)
        assert status == 400


@aio()
async def test_events_for_vanished_files_do_not_create_experiments(tmp_path):
    """A file created and deleted between two reads never shows up in /api/experiments."""
    async with serve_directory(tmp_path, port=0) as app:
        for i in range(20):
            path = tmp_path / f"blink-{i}.jsonl"
            path.write_bytes(b'{"type":"x"}\n')
            path.unlink()
        await asyncio.sleep(0.3)
        _, _, body = await http_get(app.port, "/api/experiments")
        assert orjson.loads(body) == []
        assert app.source.fanout is not None and app.source.fanout.readers == {}


@aio()
async def test_tailer_replay_keeps_root_open_after_the_run(tmp_path):
    """Under `tailer replay`, `/` stays open after replay_end (pings answered) until the client leaves.

    The unmodified React client reconnects 3 s after any close; a close here
    made it replay the whole run again and again (DESIGN §11).
    """
    pytest.importorskip("replay.pacing")
    from tailer.server import serve_replay

    w = Writer(tmp_path, "done")
    for i in range(3):
        w.message("epoch_end", {"epoch": i})
    async with serve_replay(w.path, speed=0, port=0) as app:
        for target in ("", "?experiment=done"):
            async with ws_connect(app.ws_url + target) as ws:
                got = await recv_n(ws, 4)
                assert [m["type"] for m in got] == ["epoch_end"] * 3 + ["replay_end"]
                await assert_silent(ws, 0.5)  # no close, no second replay
                await ws.send('{"type": "ping"}')
                assert await recv_json(ws) == {"type": "pong", "data": {}}
        # The explicit replay endpoint still ends with a normal close (DESIGN §3).
        async with ws_connect(app.ws_url + "experiments/done/replay?speed=0") as ws:
            assert len(await recv_n(ws, 4)) == 4
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
            assert closed.value.rcvd.code == 1000


@aio(60)
async def test_api_experiments_says_how_stale_each_run_is(tmp_path):
    """/api/experiments gives stale: seconds since each run's last line, growing while it is quiet."""
    import time

    old = format_timestamp(time.time() - 3 * 3600)
    (tmp_path / "died.jsonl").write_bytes(
        encode_message("status", {"status": "running", "message": ""}, timestamp=old)
    )
    Writer(tmp_path, "live").message("status", {"status": "running", "message": ""})
    async with serve_directory(tmp_path, port=0) as app:
        status, _, body = await http_get(app.port, "/api/experiments")
        assert status == 200
        stale = {e["experiment_id"]: e["stale"] for e in orjson.loads(body)}
        assert 3 * 3600 <= stale["died"] < 3 * 3600 + 60
        assert 0 <= stale["live"] < 60
        await asyncio.sleep(1.1)
        _, _, body = await http_get(app.port, "/api/experiments")
        later = {e["experiment_id"]: e["stale"] for e in orjson.loads(body)}
        assert later["live"] >= stale["live"] + 1
