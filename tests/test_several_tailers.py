"""Several ``tailer serve`` processes on one directory: a client resumes on any of them (DESIGN §10).

``seq`` is a function of the file alone, so a client that loses its tailer
(killed, or a proxy that moves it to another replica) reconnects to another
with ``since`` and continues with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests._reliability_helpers import (
    ResumingClient,
    file_truth,
    kill_all,
    start_writer,
    strip_wire,
    wait_for,
    write_script,
)
from tests._tailer_helpers import aio, http_get, tailer_cli

RATE = 500.0
N = 3000  # six seconds of writing


@pytest.mark.slow
@aio(240)
async def test_a_client_resumes_on_the_other_tailer_when_its_tailer_dies(tmp_path):
    """Two tailers serve one directory; the client's is SIGKILLed mid-stream; the client
    resumes on the other with since and ends with exactly the file's lines, in order."""
    runs = tmp_path / "runs"
    runs.mkdir()
    script = write_script(tmp_path)
    writers = []
    clients: list[ResumingClient] = []
    try:
        async with (
            tailer_cli("serve", str(runs), "--port", "0", "-q", log=tmp_path / "a.log") as (
                a,
                port_a,
                _,
            ),
            tailer_cli("serve", str(runs), "--port", "0", "-q", log=tmp_path / "b.log") as (
                b,
                port_b,
                _,
            ),
        ):
            ports = [port_a]  # where "the proxy" sends the client: A until A dies, then B
            writers = [start_writer(script, runs, "live", "w0", N, RATE, pad=40)]
            clients = [
                ResumingClient(
                    lambda s: f"ws://127.0.0.1:{ports[-1]}/experiments/live?since={s}", "live"
                ).start(),
                ResumingClient(
                    lambda s: f"ws://127.0.0.1:{ports[-1]}/?experiment=live&since={s}", "live"
                ).start(),
            ]
            await wait_for(lambda: all(len(c.received) > 300 for c in clients), 60, "A's lines")
            a.kill()
            await a.wait()
            killed_at = [c.last_seq for c in clients]
            ports.append(port_b)
            out, err = await asyncio.to_thread(writers[0].communicate, timeout=120)
            assert out.strip() == b"lost=0", err.decode()
            truth = file_truth(runs / "live.jsonl")
            assert len(truth) == N
            await wait_for(
                lambda: all(c.last_seq >= max(truth) for c in clients), 90, "catching up on B"
            )
            _, _, body = await http_get(port_b, "/api/experiments")
            assert orjson.loads(body)[0]["messages"] == N
            assert b.returncode is None
    finally:
        for c in clients:
            await c.stop()
        kill_all(writers)

    for c, before in zip(clients, killed_at, strict=True):
        seqs = [m["seq"] for m in c.received]
        assert c.connections >= 2, "the client never moved to the other tailer"
        assert before < N - 1, "tailer A was killed after everything was sent"
        assert seqs == list(range(N)), "a gap or a duplicate across the two tailers"
        assert all(strip_wire(m) == truth[m["seq"]] for m in c.received)
