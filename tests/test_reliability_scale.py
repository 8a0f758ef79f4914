"""10,000 experiments in one directory, and watching when the kernel runs out of inotify watches."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import random
import time

import orjson
import pytest

from recorder.format import encode_message
from tailer.server import serve_directory
from tests._reliability_helpers import mib, rss_of
from tests._tailer_helpers import Writer, aio, http_get, recv_json, tailer_cli, ws_connect

N = 10_000


@pytest.mark.slow
@aio(300)
async def test_ten_thousand_experiments_start_list_and_stream(tmp_path):
    """tailer serve on 10,000 files starts, lists them all, and streams a new line of any of them."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for i in range(N):
        (runs / f"exp-{i:05d}.jsonl").write_bytes(
            encode_message("training_start", {"i": i})
            + encode_message("epoch_end", {"epoch": 0, "phase": "train", "metrics": {"loss": 1.0}})
            + encode_message("status", {"status": "completed" if i % 2 else "running"})
        )
    started = time.monotonic()
    async with tailer_cli("serve", str(runs), "--port", "0", "-q", log=tmp_path / "serve.log") as (
        proc,
        port,
        _,
    ):
        startup = time.monotonic() - started
        rss_started = rss_of(proc.pid)
        t0 = time.monotonic()
        status, _, body = await http_get(port, "/api/experiments")
        listing_time = time.monotonic() - t0
        assert status == 200
        listing = orjson.loads(body)
        assert len(listing) == N
        assert [e["experiment_id"] for e in listing] == [f"exp-{i:05d}" for i in range(N)]
        assert all(e["messages"] == 3 for e in listing)
        assert sum(e["status"] == "completed" for e in listing) == N // 2
        # A new line in any of them reaches its subscriber (and the firehose).
        async with ws_connect(f"ws://127.0.0.1:{port}/") as fire:
            for i in [0, N - 1, *random.Random(7).sample(range(1, N - 1), 3)]:
                exp = f"exp-{i:05d}"
                async with ws_connect(f"ws://127.0.0.1:{port}/experiments/{exp}?since=2") as ws:
                    t0 = time.monotonic()
                    Writer(runs, exp).message("epoch_end", {"epoch": 1, "i": i})
                    got = await recv_json(ws, timeout=30)
                    latency = time.monotonic() - t0
                    assert (got["experiment_id"], got["seq"], got["data"]["i"]) == (exp, 3, i)
                    assert (await recv_json(fire, timeout=30))["experiment_id"] == exp
                print(f"{exp}: new line delivered in {latency * 1000:.1f} ms")
        # A brand-new experiment among the 10,000 is picked up too.
        async with ws_connect(f"ws://127.0.0.1:{port}/experiments/new-one") as ws:
            Writer(runs, "new-one").message("training_start")
            assert (await recv_json(ws, timeout=30))["seq"] == 0
        rss_end = rss_of(proc.pid)
    print(
        f"10,000 experiments: start-up {startup:.2f} s, /api/experiments {listing_time:.2f} s "
        f"({len(body) / 2**20:.1f} MiB), RSS after start {mib(rss_started)}, at end {mib(rss_end)}"
    )
    assert rss_started < 1 << 30  # loose: about 100 KiB per experiment would be a leak


class _LimitedLibc:
    """libc whose inotify calls fail the way an exhausted kernel makes them fail."""

    def __init__(self, real: ctypes.CDLL, *, init_errno: int = 0, watch_errno: int = 0) -> None:
        self._real = real
        self._init_errno = init_errno
        self._watch_errno = watch_errno

    def inotify_init1(self, flags: int) -> int:
        if self._init_errno:  # fs.inotify.max_user_instances reached
            ctypes.set_errno(self._init_errno)
            return -1
        return self._real.inotify_init1(flags)

    def inotify_add_watch(self, fd: int, path: bytes, mask: int) -> int:
        if self._watch_errno:  # fs.inotify.max_user_watches reached
            ctypes.set_errno(self._watch_errno)
            return -1
        return self._real.inotify_add_watch(fd, path, mask)


@aio(60)
async def test_no_inotify_watches_left_falls_back_to_polling_with_a_warning(
    tmp_path, monkeypatch, caplog
):
    """inotify_add_watch failing with ENOSPC: one clear warning, and appends and new files still stream."""
    from tailer import watcher

    real = watcher._libc()
    monkeypatch.setattr(watcher, "_libc", lambda: _LimitedLibc(real, watch_errno=errno.ENOSPC))
    caplog.set_level(logging.WARNING, logger="tailer")
    w = Writer(tmp_path, "old")
    w.message("m", {"i": 0})
    async with (
        serve_directory(tmp_path, port=0, poll_interval=0.05, scan_interval=60) as app,
        ws_connect(app.ws_url) as ws,
    ):
        await asyncio.sleep(0.2)
        w.message("m", {"i": 1})
        got = await recv_json(ws)
        assert (got["experiment_id"], got["data"]["i"]) == ("old", 1)
        Writer(tmp_path, "brand-new").message("m", {"i": 2})
        assert (await recv_json(ws))["experiment_id"] == "brand-new"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("max_user_watches" in m and "periodically" in m for m in warnings), warnings


@aio(60)
async def test_no_inotify_instances_left_tries_watchfiles_then_polls(tmp_path, monkeypatch, caplog):
    """inotify_init1 failing (EMFILE) and watchfiles hitting the same limit: a warning, then polling."""
    import watchfiles

    from tailer import watcher

    real = watcher._libc()
    monkeypatch.setattr(watcher, "_libc", lambda: _LimitedLibc(real, init_errno=errno.EMFILE))

    async def exhausted(*args, **kwargs):
        raise OSError("OS file watch limit reached. about [...]")  # what watchfiles raises
        yield  # pragma: no cover - makes this an async generator like awatch

    monkeypatch.setattr(watchfiles, "awatch", exhausted)
    caplog.set_level(logging.WARNING, logger="tailer")
    w = Writer(tmp_path, "x")
    async with (
        serve_directory(tmp_path, port=0, poll_interval=0.05, scan_interval=60) as app,
        ws_connect(app.ws_url) as ws,
    ):
        await asyncio.sleep(0.2)
        for i in range(3):
            w.message("m", {"i": i})
        assert [(await recv_json(ws))["data"]["i"] for _ in range(3)] == [0, 1, 2]
        assert (await http_get(app.port, "/healthz"))[0] == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("notifications unavailable" in m and "--poll" in m for m in warnings), warnings
