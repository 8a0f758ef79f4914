"""kill -9 of a real ``tailer serve`` mid-stream: clients resume with ``since``, nothing lost or repeated."""

from __future__ import annotations

import asyncio
import time

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
from tests._tailer_helpers import aio, free_port, http_get, tailer_cli

# Four writer processes at ~1 kHz each; two of them share a file (O_APPEND interleaving).
WRITERS = [("exp-a", "w0"), ("exp-a", "w1"), ("exp-b", "w2"), ("exp-c", "w3")]
RATE = 1000.0
SECONDS = 6.0


@pytest.mark.slow
@aio(240)
async def test_kill_9_of_the_tailer_mid_stream_loses_and_repeats_nothing(tmp_path):
    """4 writers at 1 kHz, tailer SIGKILLed and restarted: every client ends with exactly the files' lines."""
    runs = tmp_path / "runs"
    runs.mkdir()
    script = write_script(tmp_path)
    port = free_port()
    n = int(RATE * SECONDS)
    writers = []
    clients: list[ResumingClient] = []
    try:
        async with tailer_cli(
            "serve", str(runs), "--port", str(port), "-q", log=tmp_path / "first.log"
        ) as (proc, _, _):
            writers = [
                start_writer(script, runs, exp, name, n, RATE, pad=40) for exp, name in WRITERS
            ]
            base = f"ws://127.0.0.1:{port}"
            # Both endpoints that resume: /experiments/ID?since=N and /?experiment=ID&since=N.
            clients = [
                ResumingClient(lambda s: f"{base}/experiments/exp-a?since={s}", "exp-a").start(),
                ResumingClient(lambda s: f"{base}/?experiment=exp-a&since={s}", "exp-a").start(),
                ResumingClient(lambda s: f"{base}/experiments/exp-b?since={s}", "exp-b").start(),
                ResumingClient(lambda s: f"{base}/?experiment=exp-c&since={s}", "exp-c").start(),
            ]
            # Mid-stream: every client has something, the writers are far from done.
            await wait_for(
                lambda: all(len(c.received) > 300 for c in clients), 60, "first messages"
            )
            proc.kill()
            await proc.wait()
            killed_at = [c.last_seq for c in clients]
        await asyncio.sleep(1.0)  # the writers go on while no tailer runs
        started = time.monotonic()
        async with tailer_cli(
            "serve", str(runs), "--port", str(port), "-q", log=tmp_path / "second.log"
        ) as (proc2, _, _):
            print(f"restart took {time.monotonic() - started:.2f} s")
            for w in writers:
                out, err = await asyncio.to_thread(w.communicate, timeout=120)
                assert w.returncode == 0, err.decode()
                assert out.strip() == b"lost=0"
            truths = {exp: file_truth(runs / f"{exp}.jsonl") for exp in {e for e, _ in WRITERS}}
            assert sum(len(t) for t in truths.values()) == n * len(WRITERS)

            def complete() -> bool:
                return all(c.last_seq >= max(truths[c.experiment_id]) for c in clients)

            await wait_for(complete, 90, "every client to catch up after the restart")
            for c in clients:
                await c.stop()
            assert (await http_get(port, "/healthz"))[0] == 200
            assert proc2.returncode is None
    finally:
        for c in clients:
            await c.stop()
        kill_all(writers)

    for c, before in zip(clients, killed_at, strict=True):
        truth = truths[c.experiment_id]
        seqs = [m["seq"] for m in c.received]
        assert c.connections >= 2, "the client never reconnected"
        assert before < max(truth), "the tailer was killed after everything was sent"
        assert len(seqs) == len(set(seqs)), f"duplicates for {c.experiment_id}"
        assert seqs == sorted(seqs), f"out of order for {c.experiment_id}"
        assert set(seqs) == set(truth), f"gap for {c.experiment_id}"
        for m in c.received:
            assert m["experiment_id"] == c.experiment_id
            assert strip_wire(m) == truth[m["seq"]]
    # Each writer's messages arrived complete, whatever the interleaving in a shared file.
    for exp, name in WRITERS:
        got = [
            m["data"]["i"]
            for m in clients[0 if exp == "exp-a" else (2 if exp == "exp-b" else 3)].received
            if m["data"]["writer"] == name
        ]
        assert got == list(range(n)), f"writer {name} in {exp}"
