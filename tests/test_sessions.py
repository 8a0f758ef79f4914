"""Cookie sessions on `/` (DESIGN §11): a client that never sends `since` resumes by cookie."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from tailer.server import serve_directory
from tailer.sessions import (
    SESSION_COOKIE,
    Record,
    Session,
    SessionStore,
    default_state_dir,
    parse_duration,
)
from tests._tailer_helpers import (
    ROOT,
    Writer,
    aio,
    assert_silent,
    free_port,
    http_get,
    recv_json,
    recv_n,
    ws_connect,
)


def _cookie(ws) -> str:
    """The `name=value` part of the runtail_session cookie a 101 answer set."""
    (value,) = [
        v for v in ws.response.headers.get_all("Set-Cookie") if v.startswith(SESSION_COOKIE)
    ]
    return value.split(";")[0]


def _connect(url: str, cookie: str | None = None):
    return ws_connect(url, additional_headers={"Cookie": cookie} if cookie else None)


async def _settled(app) -> None:
    """Let the server see the acknowledgements of what it sent (loopback: at once)."""
    await asyncio.sleep(0.05)
    app.sessions.settle_all()


async def _visit(app, writer: Writer, n: int, query: str = "") -> str:
    """Connect without a cookie, receive ``n`` new lines of ``writer``, leave; the cookie."""
    async with ws_connect(app.ws_url + query) as ws:
        writer.many(n)
        await recv_n(ws, n)
        await _settled(app)
        return _cookie(ws)


@aio()
async def test_root_handshake_sets_the_session_cookie(tmp_path):
    """The 101 answer to `/` sets runtail_session: random, HttpOnly, SameSite=Lax, Path=/."""
    async with serve_directory(tmp_path, port=0) as app:
        async with ws_connect(app.ws_url) as one, ws_connect(app.ws_url) as two:
            first, second = (
                one.response.headers["Set-Cookie"],
                two.response.headers["Set-Cookie"],
            )
        attributes = {a.strip().split("=")[0] for a in first.split(";")[1:]}
        assert {"Path", "HttpOnly", "SameSite", "Max-Age"} <= attributes
        assert "SameSite=Lax" in first and "Path=/;" in first
        value = first.split(";")[0].split("=", 1)[1]
        assert len(value) >= 40 and first.split(";")[0] != second.split(";")[0]
        # Presented again, the same session is kept (and renewed).
        async with _connect(app.ws_url, _cookie(one)) as again:
            assert _cookie(again) == _cookie(one)
        # Other endpoints do not get one.
        (tmp_path / "x.jsonl").write_bytes(b"")
        status, headers, _ = await http_get(app.port, "/experiments/x", upgrade=True)
        assert status == 101 and "set-cookie" not in {k.lower() for k in headers}


@aio()
async def test_reconnect_with_cookie_gets_what_it_missed_then_live(tmp_path):
    """After a drop, the cookie brings every missed line of every experiment (new ones from 0), then live."""
    a = Writer(tmp_path, "a")
    a.message("m", {"i": "old"})  # before the first connection: not owed
    quiet = Writer(tmp_path, "quiet")
    quiet.message("m")
    async with serve_directory(tmp_path, port=0) as app:
        async with ws_connect(app.ws_url) as ws:
            cookie = _cookie(ws)
            a.many(3)
            assert [m["seq"] for m in await recv_n(ws, 3)] == [1, 2, 3]
            await _settled(app)
        a.many(2, start=3)  # while away
        b = Writer(tmp_path, "b")  # created while away
        b.many(2)
        await asyncio.sleep(0.3)
        async with _connect(app.ws_url, cookie) as ws:
            got = await recv_n(ws, 4)
            assert sorted((m["experiment_id"], m["seq"]) for m in got) == [
                ("a", 4),
                ("a", 5),
                ("b", 0),
                ("b", 1),
            ]
            a.message("m", {"i": "live"})
            assert (await recv_json(ws))["seq"] == 6
            await assert_silent(ws, 0.3)
        # Without the cookie: live only, as before.
        a.many(1, start=7)
        await asyncio.sleep(0.3)
        async with ws_connect(app.ws_url) as ws:
            await assert_silent(ws, 0.3)


@aio()
async def test_filtered_session_resumes_only_its_experiment(tmp_path):
    """`/?experiment=a` with the cookie resumes a only; other runs' lines never arrive."""
    a, b = Writer(tmp_path, "a"), Writer(tmp_path, "b")
    async with serve_directory(tmp_path, port=0) as app:
        cookie = await _visit(app, a, 2, "?experiment=a")
        a.many(3, start=2)
        b.many(3)
        await asyncio.sleep(0.3)
        async with _connect(app.ws_url + "?experiment=a", cookie) as ws:
            got = await recv_n(ws, 3)
            assert [(m["experiment_id"], m["seq"]) for m in got] == [("a", 2), ("a", 3), ("a", 4)]
            b.many(1, start=3)
            await assert_silent(ws, 0.3)


@aio()
async def test_file_truncated_while_away_gives_log_reset_then_the_new_file(tmp_path):
    """A run rewritten shorter while the client was away: log_reset, then the new file from seq 0."""
    a = Writer(tmp_path, "a")
    async with serve_directory(tmp_path, port=0, poll_interval=0.05) as app:
        cookie = await _visit(app, a, 5)
        a.close()
        os.truncate(a.path, 0)
        a = Writer(tmp_path, "a")
        a.many(2)
        await asyncio.sleep(0.5)
        async with _connect(app.ws_url, cookie) as ws:
            got = await recv_n(ws, 3)
            assert got[0]["type"] == "log_reset" and got[0]["experiment_id"] == "a"
            assert [m["seq"] for m in got[1:]] == [0, 1]
            await assert_silent(ws, 0.3)


@aio()
async def test_file_deleted_while_away_gives_log_reset(tmp_path):
    """A run deleted while the client was away: the resume says log_reset, as the firehose does live."""
    a = Writer(tmp_path, "a")
    async with serve_directory(tmp_path, port=0) as app:
        cookie = await _visit(app, a, 2)
        a.close()
        a.path.unlink()
        await asyncio.sleep(0.5)
        async with _connect(app.ws_url, cookie) as ws:
            message = await recv_json(ws)
            assert message["type"] == "log_reset" and message["experiment_id"] == "a"
            await assert_silent(ws, 0.3)


@aio()
async def test_acknowledged_bytes_match_what_was_written(tmp_path):
    """Once the peer has read everything, TCP_INFO's bytes_acked equals the bytes written (Linux)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("tcpi_bytes_acked is Linux-only")
    a = Writer(tmp_path, "a")
    async with serve_directory(tmp_path, port=0) as app, ws_connect(app.ws_url) as ws:
        a.many(50)
        await recv_n(ws, 50)
        await ws.send('{"type":"ping"}')
        await recv_json(ws)
        await asyncio.sleep(0.05)
        (client,) = app.clients
        assert client.counter.acked() == client.counter.written > 50 * 60
        client.settle()
        assert client.record.cursors == {"a": 49} and not client.marks


@aio()
async def test_unknown_or_expired_cookie_gets_a_new_session_and_live_only(tmp_path):
    """A forged or expired cookie is never adopted: a new session, live only."""
    a = Writer(tmp_path, "a")
    async with serve_directory(tmp_path, port=0, session_ttl=0.5) as app:
        async with _connect(app.ws_url, f"{SESSION_COOKIE}=forged") as ws:
            assert _cookie(ws) != f"{SESSION_COOKIE}=forged"
            cookie = _cookie(ws)
        a.many(2)
        await asyncio.sleep(0.7)  # past the ttl
        async with _connect(app.ws_url, cookie) as ws:
            assert _cookie(ws) != cookie
            await assert_silent(ws, 0.3)


def test_state_survives_a_restart_of_the_store(tmp_path):
    """Records written by one store are read by the next; expired and unreadable files are removed."""
    store = SessionStore(tmp_path, ttl=3600)
    store.load()
    session, value = store.session_for(None)
    session.push(Record(None, {"a": 4, "b": -1}))
    store.flush_now()
    (tmp_path / "junk.json").write_bytes(b"{not json")
    expired = Session("0" * 32, time.time() - 1, [Record(None, {"a": 1})])
    (tmp_path / f"{expired.key}.json").write_bytes(expired.to_json())
    again = SessionStore(tmp_path, ttl=3600)
    again.load()
    restored, same = again.session_for(f"{SESSION_COOKIE}={value}")
    assert same == value and restored.closed[0].cursors == {"a": 4, "b": -1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{session.key}.json"]


def test_loading_sessions_leaves_the_identities_file_alone(tmp_path, caplog):
    """The state dir also holds tailer.identities' files.json: not a session, never deleted."""
    from tailer import identities

    identities.save(tmp_path, {"run": (10, 1234, 2)})
    store = SessionStore(tmp_path, ttl=3600)
    store.load()
    assert identities.load(tmp_path) == {"run": (10, 1234, 2)}
    assert "unreadable session file" not in caplog.text


def test_session_writes_put_during_a_slow_write_are_merged_then_written_on_close():
    """The writer thread never queues up: work put meanwhile is merged, the newest bytes win."""
    from tailer.sessions import _Writer

    started, go = threading.Event(), threading.Event()
    calls: list[tuple[dict[str, bytes], set[str]]] = []

    def slow_write(changed: dict[str, bytes], removed: set[str]) -> None:
        calls.append((dict(changed), set(removed)))
        started.set()
        go.wait(10)

    writer = _Writer(slow_write)
    writer.put({"a": b"1"}, set())
    assert started.wait(10)
    writer.put({"a": b"2", "b": b"1"}, set())
    writer.put({"a": b"3"}, {"b"})
    writer.put({"c": b"1"}, {"d"})
    go.set()
    writer.close()  # waits until what it held is written
    assert calls == [({"a": b"1"}, set()), ({"a": b"3", "c": b"1"}, {"b", "d"})]


def test_state_is_bounded(tmp_path):
    """At most max_sessions sessions and MAX_RECORDS records per session are kept."""
    store = SessionStore(tmp_path, ttl=3600, max_sessions=5)
    store.load()
    sessions = [store.session_for(None)[0] for _ in range(12)]
    assert len(store.sessions) == 5 and sessions[-1].key in store.sessions
    for i in range(20):
        sessions[-1].push(Record(None, {"a": i}))
    assert [r.cursors["a"] for r in sessions[-1].closed] == list(range(12, 20))


def test_resume_takes_the_most_recent_closed_record_that_covers_the_filter():
    """A filtered record only serves that experiment; an unfiltered one serves any."""
    session = Session("k", time.time() + 60)
    session.push(Record(None, {"a": 1}))
    session.push(Record("b", {"b": 7}))
    assert session.resume_point(None, time.monotonic()).cursors == {"a": 1}
    assert session.resume_point("b", time.monotonic()).cursors == {"b": 7}
    assert session.resume_point("b", time.monotonic()) is None


def test_default_state_dir_is_outside_the_runs_and_per_directory(tmp_path, monkeypatch):
    """$XDG_STATE_HOME/runtail/<hash of the resolved DIR>."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    one = default_state_dir(tmp_path / "runs")
    assert one.parent == tmp_path / "state" / "runtail"
    assert one != default_state_dir(tmp_path / "other")
    assert one == default_state_dir(tmp_path / "x" / ".." / "runs")


def test_parse_duration():
    """Seconds, or a number with s/m/h/d; anything else is refused."""
    assert parse_duration("90") == 90 and parse_duration("24h") == 86400
    assert parse_duration("30m") == 1800 and parse_duration("7d") == 7 * 86400
    for bad in ("", "0", "-1h", "h", "nan", "inf"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# --------------------------------------------------------------------------- real processes


async def _start_tailer(runs: Path, port: int, state: Path, log: Path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "tailer", "serve", str(runs), "--port", str(port), "--state-dir", str(state)),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=open(log, "ab"),  # noqa: SIM115 - the child keeps it
        env={k: v for k, v in os.environ.items() if not k.startswith("TAILER_")},
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert b"serving" in line, log.read_text()[-2000:]
    return proc


@aio(120)
async def test_cookie_resume_across_kill_9_and_restart_loses_nothing(tmp_path):
    """kill -9 of the tailer mid-stream, restart on the same port: the cookie resumes without a gap.

    Lines sent in the last ~100 ms before the kill may come twice (the state
    is flushed every 100 ms); none may be missing.
    """
    runs, state, log = tmp_path / "runs", tmp_path / "state", tmp_path / "tailer.log"
    runs.mkdir()
    port = free_port()
    a = Writer(runs, "a")
    proc = await _start_tailer(runs, port, state, log)
    url = f"ws://127.0.0.1:{port}/"
    seqs: list[int] = []
    stop = asyncio.Event()

    async def write() -> None:
        i = 0
        while not stop.is_set():
            a.message("batch_metrics", {"step": i})
            i += 1
            await asyncio.sleep(0.005)

    writer = asyncio.create_task(write())
    try:
        async with ws_connect(url) as ws:
            cookie = _cookie(ws)
            while len(seqs) < 100:
                seqs.append((await recv_json(ws))["seq"])
            proc.send_signal(signal.SIGKILL)  # mid-stream, no goodbye
            await proc.wait()
            try:
                while True:
                    seqs.append((await recv_json(ws))["seq"])
            except (ConnectionClosed, TimeoutError):  # died with the tailer
                pass
        await asyncio.sleep(0.5)  # lines keep coming while the tailer is down
        proc = await _start_tailer(runs, port, state, log)
        async with _connect(url, cookie) as ws:
            await asyncio.sleep(0.5)
            stop.set()
            await writer
            total = sum(1 for _ in a.path.open("rb"))
            while not seqs or seqs[-1] != total - 1:
                seqs.append((await recv_json(ws))["seq"])
            await assert_silent(ws, 0.3)
    finally:
        stop.set()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    first = seqs[0]
    assert set(range(first, total)) == set(seqs), "a line was lost across kill -9"
    duplicates = len(seqs) - len(set(seqs))
    # At ~200 lines/s, 100 ms is ~20 lines; allow scheduling noise on a loaded machine.
    assert duplicates <= 100, f"{duplicates} repeated lines"
    print(f"kill -9 resume: {total - first} lines, {duplicates} repeated")


def test_state_dir_files_never_hold_the_cookie(tmp_path):
    """The state on disk names sessions by a hash: reading it does not give a usable cookie."""
    store = SessionStore(tmp_path, ttl=3600)
    store.load()
    session, value = store.session_for(None)
    session.push(Record(None, {"a": 1}))
    store.flush_now()
    (path,) = tmp_path.iterdir()
    assert value not in path.name and value.encode() not in path.read_bytes()
    assert orjson.loads(path.read_bytes())["records"][0]["cursors"] == {"a": 1}


@aio()
async def test_tabs_sharing_a_cookie(tmp_path):
    """Two tabs, one cookie: a tab that reloads gets its own gap; a second tab opened later gets live."""
    a = Writer(tmp_path, "a")
    async with serve_directory(tmp_path, port=0) as app, ws_connect(app.ws_url) as first:
        cookie = _cookie(first)
        async with _connect(app.ws_url, cookie) as second:
            a.many(2)
            assert [m["seq"] for m in await recv_n(second, 2)] == [0, 1]
            await _settled(app)
        a.many(2, start=2)  # the second tab reloads meanwhile
        assert [m["seq"] for m in await recv_n(first, 4)] == [0, 1, 2, 3]
        await _settled(app)
        async with _connect(app.ws_url, cookie) as second:
            assert [m["seq"] for m in await recv_n(second, 2)] == [2, 3]
            await assert_silent(second, 0.2)
            async with _connect(app.ws_url, cookie) as third:  # a new tab: nothing owed
                await assert_silent(third, 0.3)
                a.many(1, start=4)
                assert (await recv_json(third))["seq"] == 4


@aio()
async def test_session_ttl_counts_from_the_last_use(tmp_path):
    """A connection open longer than the ttl keeps its session: the ttl restarts when it closes."""
    a = Writer(tmp_path, "a")
    async with serve_directory(tmp_path, port=0, session_ttl=0.5) as app:
        async with ws_connect(app.ws_url) as ws:
            cookie = _cookie(ws)
            await asyncio.sleep(0.8)  # longer than the ttl
            a.many(1)
            await recv_json(ws)
            await _settled(app)
        a.many(1, start=1)
        await asyncio.sleep(0.2)
        async with _connect(app.ws_url, cookie) as ws:
            assert _cookie(ws) == cookie
            assert (await recv_json(ws))["seq"] == 1


def test_a_line_not_written_to_a_closing_connection_never_moves_its_cursor():
    """Between a close frame and the socket's end nothing is written, so nothing counts as received.

    (Before: the line was skipped by the write but still marked as sent, so the
    acknowledgement of earlier bytes moved the cursor past it and a resume
    with the cookie never sent it.)
    """
    from types import SimpleNamespace

    from websockets.protocol import CLOSING, OPEN
    from websockets.server import ServerProtocol

    from tailer.sessions import SessionClient

    class Transport:
        def __init__(self) -> None:
            self.data = b""

        def write(self, data: bytes) -> None:
            self.data += data

        def get_write_buffer_size(self) -> int:
            return 0

        def is_closing(self) -> bool:
            return False

        def get_extra_info(self, name: str) -> None:
            return None

    transport = Transport()
    protocol = ServerProtocol()  # a real one: its state is what wsio reads
    protocol.state = OPEN
    connection = SimpleNamespace(transport=transport, response=None, protocol=protocol)
    session = Session("k", time.time() + 60)
    client = SessionClient(
        connection, queue_bytes=1 << 20, label="t", session=session, experiment=None
    )
    client.deliver(b"frame-1", "a", 1)
    protocol.state = CLOSING  # the peer's close frame arrived; the socket is still there
    client.deliver(b"frame-2", "a", 2)
    client.send_history(b"frame-3", "a", 3)
    assert transport.data == b"frame-1"
    client.settle(acked=len(transport.data))
    assert client.record.cursors == {"a": 1}
