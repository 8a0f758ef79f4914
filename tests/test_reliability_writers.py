"""Writers that die or run out of space: at most one torn line, and nothing valid after it is lost."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
import subprocess
import sys
import warnings

import pytest

from recorder import MetricsRecorder
from tailer.server import serve_directory
from tests._reliability_helpers import (
    ResumingClient,
    file_truth,
    kill_all,
    start_writer,
    strip_wire,
    wait_for,
    write_script,
)
from tests._tailer_helpers import ROOT, aio


def _complete_lines_and_tail(raw: bytes) -> tuple[list[bytes], bytes]:
    *lines, tail = raw.split(b"\n")
    return lines, tail


@pytest.mark.slow
@aio(120)
async def test_a_writer_killed_mid_line_tears_at_most_the_last_line(tmp_path):
    """SIGKILL of a writer of 100 KB lines, then a torn tail and a new writer: only the torn line is lost."""
    import replay

    script = write_script(tmp_path)
    async with serve_directory(tmp_path, port=0) as app:
        client = ResumingClient(lambda s: f"{app.ws_url}experiments/big?since={s}", "big").start()
        writer = start_writer(script, tmp_path, "big", "w", 100_000, 200, pad=100_000)
        path = tmp_path / "big.jsonl"
        try:
            await wait_for(
                lambda: path.exists() and path.stat().st_size > 3 << 20, 60, "3 MB written"
            )
            writer.send_signal(signal.SIGKILL)
            await asyncio.to_thread(writer.wait, 10)
        finally:
            kill_all([writer])
        lines, tail = _complete_lines_and_tail(path.read_bytes())
        # Every complete line the killed writer left is a valid message, in order.
        assert [json.loads(x)["data"]["i"] for x in lines] == list(range(len(lines)))
        killed_with = len(lines)
        # Make sure the file ends in a torn line (the kill itself rarely lands mid-write).
        if not tail:
            with open(path, "ab") as f:
                f.write(b'{"type":"batch_metrics","timestamp":"2026-01-01T00:00:00Z","data":{"i":')
        # A new writer (a restarted training job) appends to the same run.
        with MetricsRecorder(tmp_path, "big", resume=True) as again:
            for i in range(5):
                again.record("after", {"i": i, "loss": 0.5 + i})
        truth = file_truth(path)
        after = [m["data"]["i"] for m in truth.values() if m["type"] == "after"]
        assert after == [0, 1, 2, 3, 4], "a message written after the torn line was lost"
        assert len(truth) == killed_with + 5
        # The tailer skipped the torn line and streamed everything else exactly once.
        await wait_for(lambda: client.last_seq >= max(truth), 60, "the client to catch up")
        await client.stop()
        assert [m["seq"] for m in client.received] == sorted(truth)
        assert all(strip_wire(m) == truth[m["seq"]] for m in client.received)
        assert app.source.fanout is not None and app.source.fanout.readers["big"].malformed == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = replay.read_metrics(path)
    assert any("malformed" in str(w.message) for w in caught)
    assert sorted(set(table["seq"])) == sorted(truth)
    after_loss = table[(table["type"] == "after") & (table["metric"] == "loss")]
    assert list(after_loss["value"]) == [0.5, 1.5, 2.5, 3.5, 4.5]


@aio(60)
async def test_a_torn_tail_is_held_until_a_new_writer_completes_the_file(tmp_path):
    """A partial last line is never streamed; a new recorder's messages after it all arrive."""
    w = MetricsRecorder(tmp_path, "torn")
    w.record("before", {"i": 0})
    w.close()
    with open(tmp_path / "torn.jsonl", "ab") as f:
        f.write(b'{"type":"before","data":{"i":1')  # the process died here
    async with serve_directory(tmp_path, port=0) as app:
        client = ResumingClient(lambda s: f"{app.ws_url}?experiment=torn&since={s}", "torn").start()
        await wait_for(lambda: client.last_seq == 0, 30, "the first message")
        await asyncio.sleep(0.3)
        assert client.last_seq == 0  # the torn line is held, not sent
        with MetricsRecorder(tmp_path, "torn") as again:
            again.record("after", {"i": 2})
            again.record("after", {"i": 3})
        truth = file_truth(tmp_path / "torn.jsonl")
        await wait_for(lambda: client.last_seq >= max(truth), 30, "the new writer's messages")
        await client.stop()
    assert [m["data"]["i"] for m in client.received] == [0, 2, 3]
    assert [m["seq"] for m in client.received] == sorted(truth)


# A training loop whose process may write at most LIMIT bytes per file (a full disk, as
# RLIMIT_FSIZE makes it: a short write, then EFBIG for every later one).
_FSIZE_LOOP = """
import json, sys, warnings
sys.path.insert(0, {root!r})
from recorder import MetricsRecorder
n = int(sys.argv[2])
rec = MetricsRecorder(sys.argv[1], "quota")
iterations = refused = 0
weights = 0.0
for i in range(n):
    weights += 0.001 * i  # the "training" goes on whatever the recorder does
    if not rec.record("batch_metrics", {{"step": i, "loss": 1.0 / (i + 1), "pad": "q" * 50}}):
        refused += 1
    iterations += 1
lost = rec.lost
rec.close()
print(json.dumps({{"iterations": iterations, "refused": refused, "lost": lost}}), flush=True)
"""


def _limit_file_size(limit: int):  # runs in the child between fork and exec
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@aio(120)
async def test_a_full_disk_keeps_training_and_counts_exactly_what_was_lost(tmp_path):
    """Under RLIMIT_FSIZE the loop runs to the end; lines written + lost == messages, and close() says so."""
    script = write_script(tmp_path, "quota.py", _FSIZE_LOOP)
    runs = tmp_path / "runs"
    runs.mkdir()
    n = 3000
    limit = 100_000 + 37  # not a line boundary: the last write that fits is cut short
    async with serve_directory(runs, port=0) as app:
        client = ResumingClient(lambda s: f"{app.ws_url}experiments/quota?since={s}", "quota")
        client.start()
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(script), str(runs), str(n)],
            capture_output=True,
            timeout=90,
            preexec_fn=_limit_file_size(limit),
        )
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        result = json.loads(proc.stdout)
        raw = (runs / "quota.jsonl").read_bytes()
        truth = file_truth(runs / "quota.jsonl")
        await wait_for(lambda: client.last_seq >= max(truth), 30, "the client to catch up")
        await client.stop()
    assert result["iterations"] == n
    assert len(raw) == limit
    assert 0 < result["lost"] < n
    assert result["refused"] == result["lost"]
    assert len(truth) + result["lost"] == n  # every message is either in the file or counted
    assert [m["data"]["step"] for m in truth.values()] == list(range(len(truth)))
    assert not raw.endswith(b"\n")  # the one cut line, which readers skip
    stderr = proc.stderr.decode()
    reported = re.findall(r"runtail: (\d+) message\(s\) could not be written", stderr)
    # Once as a warning and once through logging's last-resort handler: the same exact count.
    assert reported and set(reported) == {str(result["lost"])}, stderr[-2000:]
    assert "file size limit reached" in stderr
    assert [m["seq"] for m in client.received] == sorted(truth)
    assert all(strip_wire(m) == truth[m["seq"]] for m in client.received)


def test_a_full_disk_before_the_first_byte_loses_everything_without_raising(tmp_path):
    """RLIMIT_FSIZE of 0: the file stays empty, every message is counted, exit code 0."""
    script = write_script(tmp_path, "quota.py", _FSIZE_LOOP)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "200"],
        capture_output=True,
        timeout=60,
        preexec_fn=_limit_file_size(0),
        cwd=ROOT,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert json.loads(proc.stdout) == {"iterations": 200, "refused": 200, "lost": 200}
    assert (tmp_path / "quota.jsonl").read_bytes() == b""
    assert b"runtail: 200 message(s) could not be written" in proc.stderr


# A training loop whose SIGALRM handler records too (as a SIGTERM handler that sends
# status "failed" would): the handler may run while the loop's record() holds the lock.
_SIGNAL_LOOP = """
import json, signal, sys
sys.path.insert(0, {root!r})
from recorder import MetricsRecorder
rec = MetricsRecorder(sys.argv[1], "sig")
handled = 0
def on_alarm(signum, frame):
    global handled
    rec.send_status("running", "checkpoint requested")
    handled += 1
signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
n = int(sys.argv[2])
for i in range(n):
    rec.record("batch_metrics", {{"i": i}})
signal.setitimer(signal.ITIMER_REAL, 0, 0)
rec.close()
print(json.dumps({{"n": n, "handled": handled, "lost": rec.lost}}))
"""


def test_recording_from_a_signal_handler_never_deadlocks(tmp_path):
    """A signal handler that records while the main loop is inside record(): no hang, every line whole."""
    script = write_script(tmp_path, "sig.py", _SIGNAL_LOOP)
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(tmp_path), "200000"],
            capture_output=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the training loop hung in record()")
    assert proc.returncode == 0, proc.stderr.decode()[-1500:]
    result = json.loads(proc.stdout)
    assert result["handled"] > 0 and result["lost"] == 0
    truth = file_truth(tmp_path / "sig.jsonl")
    raw = (tmp_path / "sig.jsonl").read_bytes()
    assert raw.count(b"\n") == len(truth) == result["n"] + result["handled"]
    assert [m["data"]["i"] for m in truth.values() if m["type"] == "batch_metrics"] == list(
        range(result["n"])
    )
