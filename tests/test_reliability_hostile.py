"""Hostile files and requests (DESIGN §12): nothing in DIR or on the wire leaks, stalls or crashes the tailer.

Each test drives a real ``tailer serve`` (a subprocess, so a stalled event loop
cannot stall the test) or an in-process server, and measures what the other
runs see while the hostile thing is present. Latency bounds here are loose
(seconds, against tens of seconds before the fix); the figures themselves
come from ``benchmarks/bench_hostile.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests._reliability_helpers import env_without_tailer, never_reading_client
from tests._tailer_helpers import ROOT, Writer, aio, http_get, recv_json, tailer_cli, ws_connect


async def _raw_status(port: int, request: bytes) -> int | None:
    """Send raw request bytes; the status the server answers with (None: it just closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else None


async def _healthz_seconds(port: int, timeout: float = 30) -> float:
    started = time.monotonic()
    status, _, _ = await asyncio.wait_for(http_get(port, "/healthz"), timeout)
    assert status == 200
    return time.monotonic() - started


async def _other_run_latency(
    port: int, runs: Path, rounds: int = 5, *, before=None, token: str | None = None
) -> float:
    """Worst time for a line appended to another run to reach its live subscriber.

    ``before`` (a coroutine) is awaited once the subscriber is connected.
    """
    w = Writer(runs, "good")
    worst = 0.0
    query = f"&token={token}" if token else ""
    url = f"ws://127.0.0.1:{port}/?experiment=good{query}"
    try:
        async with ws_connect(url, open_timeout=30) as ws:
            if before is not None:
                await before
            for i in range(rounds):
                started = time.monotonic()
                w.message("m", {"probe": i})
                got = await recv_json(ws, timeout=30)
                assert got["data"] == {"probe": i}
                worst = max(worst, time.monotonic() - started)
                await asyncio.sleep(0.1)
    finally:
        w.close()
    return worst


# --------------------------------------------------------------------------- item 7


def test_an_empty_token_is_refused(tmp_path):
    """--token "" exits 2 with one line; TAILER_TOKEN="" means no token (not an impossible one)."""
    import subprocess

    env = {**env_without_tailer(), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "tailer", "serve", str(tmp_path), "--port", "0", "--token", ""],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 2, done
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "token" in lines[0], lines
    Writer(tmp_path, "x").message("m")
    done = subprocess.run(
        [sys.executable, "-m", "tailer", "replay", str(tmp_path / "x.jsonl"), "--token", ""],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 2 and b"token" in done.stderr, done


@aio(60)
async def test_an_empty_tailer_token_in_the_environment_counts_as_unset(tmp_path):
    async with tailer_cli(
        "serve", str(tmp_path), "--port", "0", log=tmp_path / "serve.log", env={"TAILER_TOKEN": ""}
    ) as (_, port, line):
        assert "token=" not in line
        assert (await http_get(port, "/api/experiments"))[0] == 200


# --------------------------------------------------------------------------- item 6


@aio(60)
async def test_duplicated_headers_and_bad_targets_get_400_never_500(tmp_path):
    """Two Host, Origin or Authorization headers, or bytes no URL has, are a 400 and no traceback."""
    head = "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"
    cases = [
        head.format(target="/api/experiments", extra="Host: 127.0.0.1\r\n").encode(),
        head.format(target="/", extra="Origin: http://localhost\r\nOrigin: http://x\r\n").encode(),
        head.format(
            target="/api/experiments",
            extra="Authorization: Bearer t\r\nAuthorization: Bearer u\r\n",
        ).encode(),
        head.format(target="//[/", extra="").encode(),
        b"GET /\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"GET /api/\x01experiments HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"GET http://[::1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    ]
    log = tmp_path / "serve.log"
    for token in (None, "t"):
        args = ["serve", str(tmp_path), "--port", "0"] + (["--token", token] if token else [])
        async with tailer_cli(*args, log=log) as (proc, port, _):
            statuses = [await _raw_status(port, request) for request in cases]
            assert statuses == [400] * len(cases), statuses
            assert await _healthz_seconds(port) < 10
            assert proc.returncode is None
        text = log.read_text()
        assert "Traceback" not in text and " 500" not in text, text[-3000:]


# --------------------------------------------------------------------------- item 1


@aio(90)
async def test_a_fifo_swapped_in_under_a_replay_never_freezes_the_server(tmp_path):
    """`tailer replay x.jsonl`, then x.jsonl replaced by a FIFO: a client is refused, /healthz answers, SIGTERM stops it."""
    run = tmp_path / "x.jsonl"
    Writer(tmp_path, "x").message("m", {"i": 0})
    log = tmp_path / "replay.log"
    async with tailer_cli("replay", str(run), "--port", "0", "--speed", "0", log=log) as (
        proc,
        port,
        _,
    ):
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        os.replace(fifo, run)
        try:
            async with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=5) as ws:
                with pytest.raises(Exception):  # noqa: B017 - closed, or timed out if frozen
                    await asyncio.wait_for(ws.recv(), 5)
        except (OSError, TimeoutError):
            pass
        assert await _healthz_seconds(port, timeout=5) < 5
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert "Traceback" not in log.read_text()


# --------------------------------------------------------------------------- items 2 and 3


@pytest.mark.slow
@aio(240)
async def test_a_file_of_newlines_or_binary_data_does_not_hold_up_other_runs(tmp_path):
    """16 MiB of newlines, then 16 MiB of random bytes, appear at runtime: other runs' lines stay prompt."""
    runs = tmp_path / "runs"
    runs.mkdir()
    Writer(runs, "good").message("m", {"probe": -1})
    async with tailer_cli("serve", str(runs), "--port", "0", "-q", log=tmp_path / "serve.log") as (
        proc,
        port,
        _,
    ):
        figures = {}
        for name, data in (("newlines", b"\n" * (16 << 20)), ("binary", os.urandom(16 << 20))):
            (runs / f"{name}.jsonl").write_bytes(data)
            figures[name] = await _other_run_latency(port, runs)
            assert await _healthz_seconds(port) < 2
        print(
            "other runs' worst latency: "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in figures.items())
        )
        assert max(figures.values()) < 2, figures
        _, _, body = await http_get(port, "/api/experiments")
        assert {e["experiment_id"] for e in orjson.loads(body)} >= {"good", "newlines", "binary"}
        assert proc.returncode is None


def _sparse(path: Path, size: int = 5 << 30) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


@pytest.mark.slow
@aio(240)
async def test_a_huge_sparse_file_delays_neither_start_up_nor_other_runs(tmp_path):
    """A 5 GB sparse big.jsonl at start, and another appearing later: /healthz at once, other runs prompt."""
    runs = tmp_path / "runs"
    runs.mkdir()
    _sparse(runs / "big.jsonl")
    Writer(runs, "good").message("m", {"probe": -1})
    # Bigger than anything that can be read in the time allowed: only the start-up order counts.
    _sparse(runs / "bigger.jsonl", 200 << 30)
    started = time.monotonic()
    async with tailer_cli("serve", str(runs), "--port", "0", "-q", log=tmp_path / "serve.log") as (
        proc,
        port,
        _,
    ):
        listening = time.monotonic() - started
        healthz = await _healthz_seconds(port, timeout=10)
        at_start = await _other_run_latency(port, runs)
        _sparse(runs / "later.jsonl")
        await asyncio.sleep(0.2)
        at_runtime = await _other_run_latency(port, runs)
        print(
            f"5 GB + 200 GB sparse files: listening {listening:.2f} s after spawn, /healthz in "
            f"{healthz * 1000:.0f} ms; other runs' worst latency {at_start * 1000:.0f} ms at start, "
            f"{at_runtime * 1000:.0f} ms with another 5 GB appearing"
        )
        assert healthz < 1 and at_start < 2 and at_runtime < 2
        assert proc.returncode is None


# --------------------------------------------------------------------------- item 4


@aio(60)
async def test_symlinks_out_of_the_runs_directory_are_ignored_with_one_warning(tmp_path, caplog):
    """A link to a file outside DIR is no experiment (one warning); a link inside DIR is; --follow-symlinks lifts it."""
    from tailer.server import serve_directory

    caplog.set_level(logging.WARNING, logger="tailer")
    runs = tmp_path / "runs"
    runs.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = Writer(outside, "secret")
    secret.message("m", {"secret": 1})
    Writer(runs, "real").message("m", {"i": 0})
    (runs / "leak.jsonl").symlink_to(outside / "secret.jsonl")
    (runs / "etc.jsonl").symlink_to("/etc/hostname")
    (runs / "dangling.jsonl").symlink_to(tmp_path / "nothing.jsonl")
    (runs / "alias.jsonl").symlink_to("real.jsonl")
    async with serve_directory(runs, port=0) as app, ws_connect(app.ws_url) as fire:
        ids = [e["experiment_id"] for e in app.summaries()]
        assert ids == ["alias", "real"], ids
        (runs / "later.jsonl").symlink_to(outside / "secret.jsonl")
        secret.message("m", {"secret": 2})
        await asyncio.sleep(1.5)  # a sweep meets every link
        Writer(runs, "real").message("m", {"i": 1})
        got = [await recv_json(fire) for _ in range(2)]
        assert sorted(m["experiment_id"] for m in got) == ["alias", "real"]
        _, _, body = await http_get(app.port, "/api/experiments")
        assert b"secret" not in body and [e["experiment_id"] for e in orjson.loads(body)] == [
            "alias",
            "real",
        ]
        async with ws_connect(app.ws_url + "experiments/leak") as ws:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.5)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in ("leak", "etc", "later"):
        assert sum(f"{name}.jsonl" in m for m in warned) == 1, warned
    async with serve_directory(runs, port=0, follow_symlinks=True) as app:
        ids = [e["experiment_id"] for e in app.summaries()]
        assert ids == ["alias", "etc", "later", "leak", "real"], ids
    secret.close()


# --------------------------------------------------------------------------- item 9


def test_an_unreadable_file_warns_once(tmp_path, monkeypatch, caplog):
    """EACCES on every open: one warning, not one a second; readable again, it streams."""
    from tailer import reader as reader_module
    from tailer.reader import FileReader

    caplog.set_level(logging.WARNING, logger="tailer")
    Writer(tmp_path, "locked").message("m", {"i": 0})
    real_open = os.open
    locked = [True]

    def guarded(path, flags, *args, **kwargs):
        if locked[0] and str(path).endswith("locked.jsonl"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(reader_module.os, "open", guarded)
    r = FileReader(tmp_path / "locked.jsonl", "locked")
    for _ in range(5):
        assert r.poll().kind == "none"
    assert len([x for x in caplog.records if "locked.jsonl" in x.getMessage()]) == 1
    locked[0] = False
    result = r.poll()
    assert result.kind == "data" and len(result.lines) == 1


def test_a_recorder_pointed_at_a_fifo_does_not_block(tmp_path):
    """runs/x.jsonl is a FIFO nobody reads: resuming it warns once and counts what it could not write."""
    import subprocess

    os.mkfifo(tmp_path / "x.jsonl")
    script = (
        "import sys, warnings; sys.path.insert(0, sys.argv[1])\n"
        "warnings.simplefilter('always')\n"
        "from recorder import MetricsRecorder\n"
        "r = MetricsRecorder(sys.argv[2], 'x', resume=True)\n"
        "for i in range(3): r.record('m', {'i': i})\n"
        "print('lost', r.lost, flush=True); r.close()\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, str(ROOT), str(tmp_path)],
            capture_output=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the recorder blocked opening a FIFO")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.strip() == b"lost 3"
    err = done.stderr.decode()
    assert err.count("RuntimeWarning: runtail: cannot open") == 1, err  # one warning, not 3


# --------------------------------------------------------------------------- item 10 (DESIGN §10)


def _lines(start: int, stop: int) -> bytes:
    from recorder.format import encode_message

    return b"".join(
        encode_message("batch_metrics", {"step": i, "loss": 0.5}) for i in range(start, stop)
    )


async def _sync(how: str, source: Path, dest: Path) -> None:
    """Bring ``dest`` up to date with ``source`` the way an offline machine's sync does."""
    import shutil

    if how == "cp":
        await asyncio.to_thread(shutil.copyfile, source, dest)  # truncates dest, then writes
        return
    args = ["rsync", "--append"] if how == "rsync --append" else ["rsync"]
    proc = await asyncio.create_subprocess_exec(*args, str(source), str(dest))
    assert await proc.wait() == 0


@aio(120)
async def test_a_re_synced_file_continues_as_an_append(tmp_path):
    """rsync (temp file + rename), rsync --append and cp over the run: only new lines, seq goes on; a changed prefix resets."""
    import shutil

    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed (scripts/setup.sh --dev installs it)")
    from tailer.server import serve_directory

    offline = tmp_path / "offline"
    runs = tmp_path / "runs"
    offline.mkdir()
    runs.mkdir()
    source = offline / "sync.jsonl"
    source.write_bytes(_lines(0, 1000))
    shutil.copyfile(source, runs / "sync.jsonl")
    async with (
        serve_directory(runs, port=0) as app,
        ws_connect(app.ws_url + "experiments/sync?since=-1") as ws,
        ws_connect(app.ws_url) as fire,
    ):
        assert [m["seq"] for m in [await recv_json(ws) for _ in range(1000)]] == list(range(1000))
        end = 1000
        for how in ("rsync", "rsync --append", "cp", "rsync", "cp"):
            with open(source, "ab") as f:
                f.write(_lines(end, end + 300))
            await _sync(how, source, runs / "sync.jsonl")
            for client in (ws, fire):
                got = [await recv_json(client) for _ in range(300)]
                assert [m.get("seq") for m in got] == list(range(end, end + 300)), how
                assert [m["data"]["step"] for m in got] == list(range(end, end + 300)), how
            end += 300
        # A copy whose already-read bytes differ is another run: log_reset, then from 0.
        source.write_bytes(_lines(5000, 6000) + _lines(0, 1000))
        await _sync("rsync", source, runs / "sync.jsonl")
        for client in (ws, fire):
            assert (await recv_json(client))["type"] == "log_reset"
            first = await recv_json(client)
            assert (first["seq"], first["data"]["step"]) == (0, 5000)
        summary = app.summaries()[0]
        assert summary["lines"] == 2000


# --------------------------------------------------------------------------- item 9: the directory, memory


@aio(60)
async def test_inotify_is_re_armed_when_the_runs_directory_comes_back(tmp_path):
    """rm -rf DIR; mkdir DIR: new lines arrive at once again, not at the next (here: 60 s) sweep."""
    import shutil

    from tailer.server import serve_directory

    runs = tmp_path / "runs"
    runs.mkdir()
    async with (
        serve_directory(runs, port=0, scan_interval=60, poll_interval=60) as app,
        ws_connect(app.ws_url) as fire,
    ):
        shutil.rmtree(runs)
        runs.mkdir()
        await asyncio.sleep(1)
        w = Writer(runs, "back")
        w.message("m", {"i": 1})
        got = await recv_json(fire, timeout=5)
        assert (got["experiment_id"], got["seq"]) == ("back", 0)
        w.message("m", {"i": 2})
        assert (await recv_json(fire, timeout=5))["data"] == {"i": 2}
        w.close()


async def _flood_past_never_readers(app, directory, queued) -> tuple[int, int]:
    """8 firehose clients that never read and an honest one; 12 MB written in 60 bursts.

    The bursts come faster than any closing handshake times out and go far past
    every kernel socket buffer. Returns the lines the honest client received
    and the peak of ``queued()`` (bytes waiting) after each burst.
    """
    from recorder.format import encode_message

    stuck = [await never_reading_client(app.port) for _ in range(8)]
    async with ws_connect(app.ws_url) as honest:
        w = Writer(directory, "flood")
        received = 0
        peak = 0
        pad = "x" * 1000
        for burst in range(60):
            w.raw(
                b"".join(
                    encode_message("m", {"i": burst * 200 + k, "pad": pad}) for k in range(200)
                )
            )
            for _ in range(200):
                await recv_json(honest)
                received += 1
            peak = max(peak, queued())
        w.close()
    for writer in stuck:
        writer.transport.abort()
    return received, peak


@aio(120)
async def test_a_global_queued_bytes_budget_closes_the_fullest_clients_first(tmp_path, caplog):
    """8 firehose clients that never read: what waits for all of them stays under --max-queued-bytes."""
    from tailer.server import serve_directory

    caplog.set_level(logging.WARNING, logger="tailer")
    budget = 3 << 20
    async with serve_directory(
        tmp_path, port=0, queue_bytes=2 << 20, max_queued_bytes=budget
    ) as app:
        received, peak = await _flood_past_never_readers(
            app,
            tmp_path,
            lambda: sum(c.transport.get_write_buffer_size() for c in app.clients if not c.closing),
        )
        assert received == 60 * 200
    print(f"8 never-reading clients: peak queued for all {peak / 2**20:.1f} MiB (budget 3 MiB)")
    assert peak <= budget + (256 << 10), peak
    closed = [r.getMessage() for r in caplog.records if "--max-queued-bytes" in r.getMessage()]
    assert closed, "nobody was closed for the global budget"


@aio(120)
async def test_clients_being_closed_still_count_against_the_queued_bytes_budget(tmp_path):
    """Never-readers closed with 1013 hold their queue until the socket goes: the budget counts it.

    A closed client's send buffer stays in memory until its closing handshake
    times out; a crowd of never-readers closed one after another would
    otherwise hold many times --max-queued-bytes (seen: 1.5 GB for 1,000).
    """
    from tailer.server import serve_directory

    budget = 3 << 20
    async with serve_directory(
        tmp_path, port=0, queue_bytes=1 << 20, max_queued_bytes=budget
    ) as app:
        # Every byte still waiting in a socket buffer, closing clients included.
        _, peak = await _flood_past_never_readers(
            app,
            tmp_path,
            lambda: sum(c.transport.get_write_buffer_size() for c in list(app.clients)),
        )
    print(f"8 never-reading clients: peak held for all {peak / 2**20:.1f} MiB (budget 3 MiB)")
    assert peak <= budget + (256 << 10), peak


# --------------------------------------------------------------------------- item 8


@aio(60)
async def test_host_any_binds_both_stacks_and_prints_urls_that_answer(tmp_path):
    """--host :: answers on 127.0.0.1 and [::1]; --host 0.0.0.0 prints only this machine's addresses."""
    import ipaddress
    import re

    import psutil

    async def healthz(host: str, port: int) -> int:
        reader, writer = await asyncio.open_connection(host, port)
        name = f"[{host}]" if ":" in host else host
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        return int(line.split()[1])

    async with tailer_cli(
        "serve", str(tmp_path), "--host", "::", "--port", "0", log=tmp_path / "a"
    ) as (
        _,
        port,
        _,
    ):
        assert await healthz("127.0.0.1", port) == 200
        assert await healthz("::1", port) == 200
    mine = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    async with tailer_cli(
        "serve", str(tmp_path), "--host", "0.0.0.0", "--port", "0", log=tmp_path / "b"
    ) as (proc, port, line):
        more = b""
        with contextlib.suppress(TimeoutError):
            while True:
                more += await asyncio.wait_for(proc.stdout.readline(), 1)
        urls = re.findall(r"http://([^/\s]+):(\d+)/", line + more.decode())
        assert urls and all(int(p) == port for _, p in urls), urls
        hosts = {h.strip("[]") for h, _ in urls}
        assert "127.0.0.1" in hosts
        assert hosts <= mine, (hosts, mine)
        assert all(ipaddress.ip_address(h).version == 4 for h in hosts)
        assert await healthz("127.0.0.1", port) == 200


# --------------------------------------------------------------------------- item 5


@pytest.mark.slow
@aio(180)
async def test_running_out_of_descriptors_never_stops_delivery(tmp_path):
    """ulimit -n 256, then 600 TCP connections that never send a byte: the connected client gets every line."""
    import resource

    from tests._reliability_helpers import mib, raise_nofile, rss_of

    raise_nofile(4096)

    def low_limit() -> None:  # runs in the child: soft and hard limit 256
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    runs = tmp_path / "runs"
    runs.mkdir()
    log = tmp_path / "serve.log"
    idle: list[asyncio.StreamWriter] = []

    async def crowd(port: int) -> None:
        for _ in range(600):
            try:
                idle.append((await asyncio.open_connection("127.0.0.1", port))[1])
            except OSError:
                break

    try:
        async with tailer_cli(
            "serve", str(runs), "--port", "0", "--token", "t", log=log, preexec_fn=low_limit
        ) as (proc, port, _):
            rss_before = rss_of(proc.pid)
            started = time.monotonic()
            # 100 lines over 10 s: past the 10 s handshake timeout of the first idle ones.
            worst = await _other_run_latency(port, runs, 100, before=crowd(port), token="t")
            elapsed = time.monotonic() - started
            rss_during = rss_of(proc.pid)
    finally:
        for writer in idle:
            writer.transport.abort()
    text = log.read_text()
    print(
        f"600 idle connections under ulimit -n 256: worst line latency {worst * 1000:.0f} ms, "
        f"RSS {mib(rss_before)} -> {mib(rss_during)}"
    )
    assert worst < 2, worst
    assert "Traceback" not in text, text[-3000:]
    noisy = [x for x in text.splitlines() if "accept" in x.lower() or "refusing" in x.lower()]
    assert len(noisy) <= elapsed + 3, noisy[:10]


# --------------------------------------------------------------------------- item 9: identity across restarts


@aio(90)
async def test_a_run_replaced_while_the_tailer_was_down_is_detected(tmp_path):
    """Stopped tailer, x.jsonl replaced by a longer, different run: resuming with since gets log_reset; a run that only grew continues."""
    from tailer.server import serve_directory

    runs = tmp_path / "runs"
    state = tmp_path / "state"
    runs.mkdir()
    (runs / "x.jsonl").write_bytes(_lines(0, 100))
    (runs / "grown.jsonl").write_bytes(_lines(0, 100))
    async with serve_directory(runs, port=0, state_dir=state) as app:
        for name in ("x", "grown"):
            async with ws_connect(f"{app.ws_url}experiments/{name}?since=-1") as ws:
                assert [(await recv_json(ws))["seq"] for _ in range(100)] == list(range(100))
    # While no tailer runs: x is replaced by another, longer run; grown only grows.
    other = runs / "x.tmp"
    other.write_bytes(_lines(1000, 1300))
    os.replace(other, runs / "x.jsonl")
    with open(runs / "grown.jsonl", "ab") as f:
        f.write(_lines(100, 150))
    async with serve_directory(runs, port=0, state_dir=state) as app:
        async with ws_connect(f"{app.ws_url}experiments/x?since=99") as ws:
            assert (await recv_json(ws))["type"] == "log_reset"
            first = await recv_json(ws)
            assert (first["seq"], first["data"]["step"]) == (0, 1000)
        async with ws_connect(f"{app.ws_url}experiments/grown?since=99") as ws:
            first = await recv_json(ws)
            assert (first["seq"], first["data"]["step"]) == (100, 100)


@aio(120)
async def test_what_a_big_file_held_at_start_goes_to_its_subscribers_not_the_firehose(tmp_path):
    """Lines read in the background after start-up are history: subscribers get them, the live firehose does not."""
    from tailer import fanout as fanout_module
    from tailer.server import serve_directory
    from tests._reliability_helpers import wait_for

    n = 300_000
    (tmp_path / "big.jsonl").write_bytes(_lines(0, n))
    saved = fanout_module.STARTUP_BUDGET
    fanout_module.STARTUP_BUDGET = 0  # everything past the first step goes to the background
    try:
        async with serve_directory(tmp_path, port=0) as app, ws_connect(app.ws_url) as fire:
            assert app.source.fanout is not None and app.source.fanout._catch_ups, (
                "read before listening"
            )
            async with ws_connect(f"{app.ws_url}experiments/big?since={n - 6}") as ws:
                got = [(await recv_json(ws, timeout=60))["seq"] for _ in range(5)]
                assert got == list(range(n - 5, n))
                await wait_for(lambda: not app.source.fanout._catch_ups, 60, "the background read")
                Writer(tmp_path, "big").message("m", {"i": "new"})
                assert (await recv_json(ws))["seq"] == n
            first = await recv_json(fire)
            assert (first["seq"], first["data"]) == (n, {"i": "new"})
    finally:
        fanout_module.STARTUP_BUDGET = saved
