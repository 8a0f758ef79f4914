"""The live path (DESIGN §13, latency): notification -> read -> frame -> socket in one callback.

Speed itself is measured by ``benchmarks/bench_latency.py``; these tests pin
the structure that makes it fast: no task between the inotify callback and
the client's transport, and the event loop ``tailer serve`` picks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

import pytest

from tailer import eventloop
from tailer import reader as reader_module
from tailer.fanout import DirectoryFanout
from tailer.reader import FileReader
from tailer.server import serve_directory
from tailer.sessions import SessionClient
from tailer.watcher import watch_directory
from tests._tailer_helpers import Writer, aio, recv_json, ws_connect


class _Recorder:
    """Stands in for a client: keeps what is delivered and in which task it was."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, str, int]] = []
        self.closing = False

    def deliver(self, frames: bytes, experiment_id: str, seq: int) -> None:
        self.got.append((frames, experiment_id, seq))


@contextlib.asynccontextmanager
async def _serving(directory, experiment_id):
    """A tailer on ``directory`` holding one line of ``experiment_id``, a firehose client on it."""
    w = Writer(directory, experiment_id)
    w.message("m", {"i": 0})
    async with (
        serve_directory(directory, port=0, scan_interval=60) as app,
        ws_connect(app.ws_url) as ws,
    ):
        await asyncio.sleep(0.1)
        yield app, ws, w


@aio()
async def test_refresh_now_reads_frames_and_delivers_before_returning(tmp_path):
    """Known files are read and sent synchronously; ids it does not know are handed back."""
    w = Writer(tmp_path, "a")
    w.message("m", {"i": 0})
    fanout = DirectoryFanout(tmp_path)
    await fanout.refresh(startup=True)
    client = _Recorder()
    fanout.firehose.add(client)  # type: ignore[arg-type]
    w.message("m", {"i": 1})
    Writer(tmp_path, "b").message("m")
    assert fanout.refresh_now({"a", "b"}) == {"b"}  # "b": a new file, for the full refresh
    assert [(e, s) for _, e, s in client.got] == [("a", 1)]
    assert b'"i":1' in client.got[0][0]
    assert "b" not in fanout.readers
    await fanout.close()


@aio()
async def test_refresh_now_hands_a_burst_beyond_one_step_to_a_background_task(tmp_path):
    """One bounded step in the callback; the rest of a big append is read by a task of its own."""
    w = Writer(tmp_path, "big")
    w.message("m")
    fanout = DirectoryFanout(tmp_path)
    await fanout.refresh(startup=True)
    client = _Recorder()
    fanout.firehose.add(client)  # type: ignore[arg-type]
    w.many(10_000, start=1)  # more than MAX_LINES_PER_STEP
    assert fanout.refresh_now({"big"}) == set()
    assert client.got and client.got[-1][2] < 10_000  # only the first step so far
    assert fanout.readers["big"] in fanout._catch_ups
    for _ in range(200):
        if client.got[-1][2] == 10_000:
            break
        await asyncio.sleep(0.01)
    assert client.got[-1][2] == 10_000
    await fanout.close()


@aio()
async def test_the_watcher_hands_named_files_to_at_once_in_its_callback(tmp_path):
    """``at_once`` runs in the inotify callback itself (no task); what it leaves goes on."""
    seen: list[tuple[set[str], bool]] = []
    later: list[set[str] | None] = []
    done = asyncio.Event()

    def at_once(ids: set[str], named: set[str]) -> set[str]:
        seen.append((set(ids), asyncio.current_task() is None))
        return {i for i in ids if i == "leftover"}

    async def on_change(ids: set[str] | None) -> None:
        later.append(ids)
        if ids:
            done.set()

    watcher = asyncio.create_task(
        watch_directory(tmp_path, on_change, scan_interval=60, at_once=at_once)
    )
    await asyncio.sleep(0.05)
    Writer(tmp_path, "run").message("m")
    Writer(tmp_path, "leftover").message("m")
    await asyncio.wait_for(done.wait(), 5)
    watcher.cancel()
    assert {i for ids, _ in seen for i in ids} == {"run", "leftover"}
    assert all(outside_any_task for _, outside_any_task in seen)
    assert {i for ids in later if ids for i in ids} == {"leftover"}


@aio()
async def test_a_live_line_reaches_the_transport_in_the_notification_callback(
    tmp_path, monkeypatch
):
    """End to end: the frame of an appended line is written with no task in between."""
    in_task: list[bool] = []
    deliver = SessionClient.deliver

    def spy(self, frames, experiment_id, seq):
        in_task.append(asyncio.current_task() is not None)
        deliver(self, frames, experiment_id, seq)

    monkeypatch.setattr(SessionClient, "deliver", spy)
    async with _serving(tmp_path, "live") as (_app, ws, w):
        for i in range(1, 4):
            w.message("m", {"i": i})
            assert (await recv_json(ws))["data"] == {"i": i}
    assert in_task == [False, False, False]


def test_the_loop_is_uvloop_when_installed_and_asyncio_on_request():
    pytest.importorskip("uvloop")

    async def kind() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert eventloop.run(kind()) == "uvloop"
    assert eventloop.run(kind(), "uvloop") == "uvloop"
    assert eventloop.run(kind(), "asyncio") == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError

    async def kind() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert eventloop.run(kind()) == "asyncio"
    eventloop.check("auto")
    with pytest.raises(ValueError, match="not installed"):
        eventloop.check("uvloop")
    with pytest.raises(ValueError, match="must be one of"):
        eventloop.check("tokio")


def test_serve_loop_uvloop_without_uvloop_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from tailer.cli import main

    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert main(["serve", str(tmp_path), "--port", "0", "--loop", "uvloop"]) == 2
    err = capsys.readouterr().err
    assert "uvloop is not installed" in err and err.count("\n") == 1


def test_import_recorder_does_not_need_uvloop():
    """uvloop is the tailer's; the recorder (in every training process) never imports it."""
    import subprocess

    code = (
        "import sys, recorder; assert 'uvloop' not in sys.modules and 'tailer' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- the kept descriptor


@aio()
async def test_the_watcher_says_which_files_had_more_than_their_content_changed(tmp_path):
    """Appends are content events; a create or a rename over the name is not."""
    calls: list[tuple[set[str], set[str]]] = []
    w = Writer(tmp_path, "grow")

    def at_once(ids: set[str], named: set[str]) -> set[str]:
        calls.append((set(ids), set(named)))
        return set()

    async def on_change(ids: set[str] | None) -> None:
        pass

    watcher = asyncio.create_task(
        watch_directory(tmp_path, on_change, scan_interval=60, at_once=at_once)
    )
    await asyncio.sleep(0.05)

    async def settled() -> tuple[set[str], set[str]]:
        await asyncio.sleep(0.1)
        ids = {i for c in calls for i in c[0]}
        named = {i for c in calls for i in c[1]}
        calls.clear()
        return ids, named

    w.message("m")
    assert await settled() == ({"grow"}, set())
    (tmp_path / "other.tmp").write_bytes(b"x\n")
    os.replace(tmp_path / "other.tmp", tmp_path / "grow.jsonl")
    assert await settled() == ({"grow"}, {"grow"})
    Writer(tmp_path, "fresh").message("m")
    _ids, named = await settled()
    assert "fresh" in named
    watcher.cancel()


@aio()
async def test_repeated_appends_and_renames_are_told_apart_one_wake_at_a_time(tmp_path):
    """Every wake-up reports what happened, whether or not its events were seen before.

    The second append to a file raises the same event, byte for byte, as the
    first (the watcher then skips parsing it): it must still name that file
    alone, as content only; a rename over the name, an append to another
    file, or to a file that is not a run, must not pass for it.
    """
    calls: list[tuple[set[str], set[str]]] = []

    def at_once(ids: set[str], named: set[str]) -> set[str]:
        calls.append((set(ids), set(named)))
        return set()

    async def on_change(ids: set[str] | None) -> None:
        pass

    a, b = Writer(tmp_path, "a"), Writer(tmp_path, "b")
    watcher = asyncio.create_task(
        watch_directory(tmp_path, on_change, scan_interval=60, at_once=at_once)
    )
    await asyncio.sleep(0.05)

    async def wake(change) -> list[tuple[set[str], set[str]]]:
        change()
        await asyncio.sleep(0.05)  # one wake-up per change
        got = list(calls)
        calls.clear()
        return got

    for _ in range(3):
        assert await wake(lambda: a.message("m")) == [({"a"}, set())]
        assert await wake(lambda: b.message("m")) == [({"b"}, set())]
    assert await wake(lambda: (tmp_path / "notes.txt").write_text("x")) == []

    def rename_over_a() -> None:
        (tmp_path / "a.tmp").write_bytes(b"{}\n")
        os.replace(tmp_path / "a.tmp", tmp_path / "a.jsonl")

    assert {i for _ids, named in await wake(rename_over_a) for i in named} == {"a"}
    for _ in range(2):
        assert await wake(lambda: a.message("m")) == [({"a"}, set())]
    watcher.cancel()


def _drain(reader: FileReader, appended: bool) -> list[tuple[str, list[tuple[int, bytes]]]]:
    """Poll until nothing more: what each poll gave (verifications run in place)."""
    out = []
    for _ in range(100):
        result = reader.poll(appended=appended)
        if result.kind == "verify":
            result = asyncio.run(reader.verify())
        if result.kind != "none" or result.lines:
            out.append((result.kind, result.lines))
        if not (result.more or result.kind in ("verify", "wait")):
            break
    return out


def test_appended_polls_read_the_kept_descriptor_and_open_nothing(tmp_path, monkeypatch):
    w = Writer(tmp_path, "k")
    w.message("m", {"i": 0})
    reader = FileReader(tmp_path / "k.jsonl", "k")
    assert [seq for seq, _ in reader.poll(appended=True).lines] == [0]
    opened = []
    monkeypatch.setattr(FileReader, "_open", lambda self: opened.append(1) or 1 / 0)
    for i in range(1, 4):
        w.message("m", {"i": i})
        assert [seq for seq, _ in reader.poll(appended=True).lines] == [i]
    assert reader.poll(appended=True).kind == "none"
    assert opened == []
    reader.release()


def test_content_changes_under_a_kept_descriptor_give_what_polls_by_name_give(tmp_path):
    """Appends, torn lines, truncation, rewrites in place, bursts: both ways agree, step by step."""
    import random

    rng = random.Random(13)
    path = tmp_path / "same.jsonl"
    path.touch()
    live = FileReader(path, "same", settle=0)
    by_name = FileReader(path, "same", settle=0)
    line = b'{"type":"m","timestamp":"2025-01-01T00:00:00Z","data":{"i":%d}}\n'
    for step in range(300):
        op = rng.choice(["append", "append", "burst", "torn", "truncate", "rewrite", "bad"])
        with open(path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if op == "append":
                f.write(line % step)
            elif op == "burst":
                f.write(b"".join(line % (step * 10_000 + i) for i in range(5000)))
            elif op == "torn":
                whole = line % step
                f.write(whole[: rng.randrange(1, len(whole))])
            elif op == "bad":
                f.write(b"not json\n")
            elif op == "truncate" and size:
                f.truncate(rng.randrange(size))
            elif op == "rewrite" and size > 2:
                f.seek(rng.randrange(size - 1))
                f.write(b"X")
        got, want = _drain(live, True), _drain(by_name, False)
        assert got == want, (step, op)
    assert live.next_seq == by_name.next_seq and live.crc == by_name.crc
    live.release()


def test_at_most_max_held_descriptors_stay_open(tmp_path):
    readers = []
    for i in range(reader_module.MAX_HELD + 8):
        Writer(tmp_path, f"r{i}").message("m")
        reader = FileReader(tmp_path / f"r{i}.jsonl", f"r{i}")
        assert reader.poll(appended=True).lines
        readers.append(reader)
    held = [r for r in readers if r._held_fd >= 0]
    assert len(held) == reader_module.MAX_HELD
    assert held == readers[-reader_module.MAX_HELD :]  # the most recently read
    for r in readers:
        Writer(tmp_path, r.experiment_id).message("m")
        assert [seq for seq, _ in r.poll(appended=True).lines] == [1]
    for r in readers:
        r.release()
    assert not reader_module._held


@aio()
async def test_a_file_replaced_while_its_descriptor_is_kept_is_noticed(tmp_path):
    """A rename over the name is a name event: the next poll opens by name and sees the new file."""
    async with _serving(tmp_path, "swap") as (app, ws, w):
        w.message("m", {"i": 1})
        assert (await recv_json(ws))["data"] == {"i": 1}
        assert app.source.fanout.readers["swap"]._held_fd >= 0
        (tmp_path / "new.tmp").write_bytes(b'{"type":"m","data":{"i":"new"}}\n')
        os.replace(tmp_path / "new.tmp", tmp_path / "swap.jsonl")
        assert (await recv_json(ws))["type"] == "log_reset"
        got = await recv_json(ws)
        assert (got["seq"], got["data"]) == (0, {"i": "new"})
        w.message("m", {"i": 2})  # the old, now nameless file: nobody's business
        Writer(tmp_path, "swap").message("m", {"i": "after"})
        got = await recv_json(ws)
        assert (got["seq"], got["data"]) == (1, {"i": "after"})


def _reader_state(reader: FileReader) -> tuple[object, ...]:
    """Everything a poll changes, bookkeeping included."""
    s = reader.splitter
    return (
        s.next_seq,
        s.consumed,
        s.read_pos,
        reader.crc,
        reader.size,
        reader.messages,
        list(reader.malformed_seqs),
        reader.first_timestamp,
        reader.last_timestamp,
        reader.status,
        reader.error,
        reader.index.seek(10**9),
        len(reader.index),
    )


def test_read_appended_gives_what_polls_by_name_give(tmp_path):
    """The one-call live read and polls by name agree on lines sent and every statistic.

    Random appends of one line or many, blank, malformed, torn and over-long
    lines, status and error messages, truncations and rewrites in place; the
    live side tries ``read_appended`` first and polls (appended) when it declines.
    """
    import random

    rng = random.Random(1313)
    path = tmp_path / "same.jsonl"
    path.touch()
    live = FileReader(path, "same", settle=0, index_every=7, max_line_bytes=400)
    by_name = FileReader(path, "same", settle=0, index_every=7, max_line_bytes=400)
    stamp = '"timestamp":"2025-01-01T00:00:%02dZ"'
    kinds = [
        b'{"type":"batch_metrics",%s,"data":{"i":%d}}\n',
        b'{"type":"status",%s,"data":{"status":"running","i":%d}}\n',
        b'{"type":"error",%s,"data":{"error":"boom %d"}}\n',
        b'{"type":"training_end",%s,"data":{"i":%d}}\n',
    ]

    def line(step: int) -> bytes:
        kind = rng.choice(kinds) if rng.random() < 0.3 else kinds[0]
        return kind % ((stamp % (step % 60)).encode(), step)

    sent: list[tuple[int, bytes]] = []
    declined = 0

    def send(experiment_id: str, lines: list[tuple[int, bytes]]) -> None:
        assert experiment_id == "same"
        sent.extend(lines)

    for step in range(400):
        op = rng.choice(
            ["one", "one", "one", "many", "blank", "bad", "torn", "long", "truncate", "rewrite"]
        )
        with open(path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if op == "one":
                f.write(line(step))
            elif op == "many":
                f.write(b"".join(line(step * 1000 + i) for i in range(rng.randrange(2, 40))))
            elif op == "blank":
                f.write(b"  \n" + line(step) + b"\n")
            elif op == "bad":
                f.write(b"not json\n" + line(step))
            elif op == "torn":
                whole = line(step)
                f.write(whole[: rng.randrange(1, len(whole))])
            elif op == "long":
                f.write(b'{"type":"m","data":"' + b"x" * 500 + b'"}\n')
            elif op == "truncate" and size:
                f.truncate(rng.randrange(size))
            elif op == "rewrite" and size > 2:
                f.seek(rng.randrange(size - 1))
                f.write(b"X")
        sent.clear()
        if not live.read_appended(send):
            declined += 1
            for _kind, lines in _drain(live, True):
                sent.extend(lines)
        want = [pair for _, lines in _drain(by_name, False) for pair in lines]
        assert sent == want, (step, op)
        assert _reader_state(live) == _reader_state(by_name), (step, op)
    assert 50 < declined < 300  # both ways were taken, often
    live.release()
