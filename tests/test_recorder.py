"""MetricsRecorder: the sender's payloads, ids, concurrent appends, and never raising into training."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder import MetricsRecorder
from recorder.format import (
    MAX_LINE_BYTES,
    MalformedLine,
    decode_line,
    encode_message,
    restore_non_finite,
)
from recorder.recorder import default_rank, new_experiment_id

sys.path.insert(0, str(Path(__file__).parent))
from _recorder_helpers import read_messages

ROOT = Path(__file__).resolve().parents[1]

# (method, args, kwargs, type, data) for the 13 methods of the sender runtail replaces.
SENDER_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], str, dict[str, Any]]] = [
    ("send_metrics", ({"loss": 0.5},), {}, "epoch_end", {"loss": 0.5}),
    ("send_metrics", ({"loss": 0.5}, "custom_kind"), {}, "custom_kind", {"loss": 0.5}),
    ("send_epoch_start", (1, 10), {}, "epoch_start", {"epoch": 1, "total_epochs": 10}),
    (
        "send_epoch_end",
        (1, "val", {"accuracy": 0.92, "loss": 0.15}),
        {},
        "epoch_end",
        {"epoch": 1, "phase": "val", "metrics": {"accuracy": 0.92, "loss": 0.15}},
    ),
    (
        "send_round_end",
        (2, 5),
        {},
        "round_end",
        {"round": 2, "total_rounds": 5, "fit_metrics": {}, "eval_metrics": {}},
    ),
    (
        "send_round_end",
        (2, 5, {"loss": 0.3}, {"acc": 0.8}),
        {},
        "round_end",
        {"round": 2, "total_rounds": 5, "fit_metrics": {"loss": 0.3}, "eval_metrics": {"acc": 0.8}},
    ),
    (
        "send_round_metrics",
        (3, 5, {"acc": 0.9}),
        {},
        "round_metrics",
        {"round": 3, "total_rounds": 5, "metrics": {"acc": 0.9}},
    ),
    ("send_status", ("running",), {}, "status", {"status": "running", "message": ""}),
    (
        "send_status",
        ("running", "Training in progress"),
        {},
        "status",
        {"status": "running", "message": "Training in progress"},
    ),
    (
        "send_error",
        ("CUDA out of memory",),
        {},
        "error",
        {"error": "CUDA out of memory", "error_type": "training_error"},
    ),
    (
        "send_early_stopping_triggered",
        (7, 0.91),
        {},
        "early_stopping",
        {"epoch": 7, "best_metric_value": 0.91, "metric_name": "val_recall", "patience": 7},
    ),
    (
        "send_training_mode",
        (True, 10, 4),
        {},
        "training_mode",
        {"is_federated": True, "num_rounds": 10, "num_clients": 4},
    ),
    (
        "send_training_end",
        ("run-1", {"best_epoch": 3, "best_val_recall": 0.9}),
        {},
        "training_end",
        {"run_id": "run-1", "best_epoch": 3, "best_val_recall": 0.9},
    ),
    (
        "send_batch_metrics",
        (100, 4, 0.7, 0.6, 2),
        {},
        "batch_metrics",
        {
            "step": 100,
            "batch_idx": 4,
            "loss": 0.7,
            "accuracy": 0.6,
            "recall": None,
            "f1": None,
            "epoch": 2,
        },
    ),
    (
        "send_batch_metrics",
        (100, 4, 0.7, 0.6, 2, 0.5, 0.55, "18446744073709551615", 3),
        {},
        "batch_metrics",
        {
            "step": 100,
            "batch_idx": 4,
            "loss": 0.7,
            "accuracy": 0.6,
            "recall": 0.5,
            "f1": 0.55,
            "epoch": 2,
            "client_id": "18446744073709551615",
            "round_num": 3,
        },
    ),
    (
        "send_gradient_stats",
        (50, 1.5, {"layer1": 1.0, "layer2": 0.5}, 1.0, 0.5),
        {},
        "gradient_stats",
        {
            "step": 50,
            "total_norm": 1.5,
            "layer_norms": {"layer1": 1.0, "layer2": 0.5},
            "max_norm": 1.0,
            "min_norm": 0.5,
        },
    ),
    (
        "send_lr_update",
        (0.001, 10, 1),
        {},
        "lr_update",
        {"current_lr": 0.001, "step": 10, "epoch": 1},
    ),
    (
        "send_lr_update",
        (0.001, 10, 1, "cosine"),
        {},
        "lr_update",
        {"current_lr": 0.001, "step": 10, "epoch": 1, "scheduler_type": "cosine"},
    ),
]

SENDER_METHODS = {
    "send_metrics",
    "send_epoch_start",
    "send_epoch_end",
    "send_round_end",
    "send_round_metrics",
    "send_status",
    "send_error",
    "send_early_stopping_triggered",
    "send_training_mode",
    "send_training_end",
    "send_batch_metrics",
    "send_gradient_stats",
    "send_lr_update",
}


def test_the_table_covers_all_13_sender_methods() -> None:
    """Every method of the original MetricsWebSocketSender exists and is exercised below."""
    assert {call[0] for call in SENDER_CALLS} == SENDER_METHODS
    for name in SENDER_METHODS:
        assert callable(getattr(MetricsRecorder, name))


@pytest.mark.parametrize(("method", "args", "kwargs", "kind", "data"), SENDER_CALLS)
def test_sender_methods_write_the_designed_payloads(
    tmp_path: Path,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    kind: str,
    data: dict[str, Any],
) -> None:
    """Each send_* method appends one {type, timestamp, data} line with DESIGN §2's payload."""
    with MetricsRecorder(tmp_path, "exp") as rec:
        getattr(rec, method)(*args, **kwargs)
    (message,) = read_messages(tmp_path / "exp.jsonl")
    assert set(message) == {"type", "timestamp", "data"}
    assert message["type"] == kind
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", message["timestamp"])
    got = dict(message["data"])
    if kind == "early_stopping":
        reason = got.pop("reason")
        assert "val_recall" in reason and "7" in reason
    assert got == data


def test_send_error_inside_except_adds_the_traceback(tmp_path: Path) -> None:
    """Called while an exception is handled, send_error records its traceback; outside, none."""
    with MetricsRecorder(tmp_path, "exp") as rec:
        try:
            raise KeyError("missing")
        except KeyError as exc:
            rec.send_error(str(exc), "KeyError")
        rec.send_error("plain")
        rec.send_error("given", traceback="Traceback: here")
    first, second, third = (m["data"] for m in read_messages(tmp_path / "exp.jsonl"))
    assert first["error_type"] == "KeyError"
    assert "raise KeyError" in first["traceback"] and "KeyError: 'missing'" in first["traceback"]
    assert "traceback" not in second
    assert third["traceback"] == "Traceback: here"


def test_record_is_the_generic_entry(tmp_path: Path) -> None:
    """record(type, data) writes any type, with extra top-level keys, and reports success."""
    with MetricsRecorder(tmp_path, "exp") as rec:
        assert rec.record(
            "client_progress", {"client_id": "7", "progress": 0.5}, extra={"node": "n1"}
        )
        assert rec.record("bare")
    first, second = read_messages(tmp_path / "exp.jsonl")
    assert first["type"] == "client_progress"
    assert first["node"] == "n1"
    assert first["data"] == {"client_id": "7", "progress": 0.5}
    assert second["data"] == {}


def test_messages_are_visible_when_the_call_returns(tmp_path: Path) -> None:
    """Each line is in the file, whole, as soon as the method returns (no buffering)."""
    rec = MetricsRecorder(tmp_path, "exp")
    try:
        for epoch in range(5):
            rec.send_epoch_end(epoch, "train", {"loss": 1.0 / (epoch + 1), "nan": float("nan")})
            raw = (tmp_path / "exp.jsonl").read_bytes()
            assert raw.endswith(b"\n")
            last = decode_line(raw.split(b"\n")[-2])
            assert last["data"]["epoch"] == epoch
            assert restore_non_finite(last["data"]["metrics"])["loss"] == 1.0 / (epoch + 1)
    finally:
        rec.close()


def test_a_missing_id_gets_a_unique_sortable_one(tmp_path: Path) -> None:
    """Without experiment_id the recorder makes a valid, unique id that sorts by time."""
    ids = [MetricsRecorder(tmp_path).experiment_id for _ in range(20)]
    assert len(set(ids)) == 20
    for eid in ids:
        assert re.fullmatch(r"run-\d{8}-\d{6}-[0-9a-f]{6}", eid)
        assert (tmp_path / f"{eid}.jsonl").exists()
    earlier = new_experiment_id()
    time.sleep(1.1)
    assert new_experiment_id()[:19] > earlier[:19]


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "a" * 129, ".hidden", "x/../../y", "sp ace"])
def test_invalid_ids_raise_and_create_nothing(tmp_path: Path, bad: str) -> None:
    """An invalid experiment id raises ValueError before any directory or file is made."""
    log_dir = tmp_path / "runs"
    with pytest.raises(ValueError, match="invalid experiment id"):
        MetricsRecorder(log_dir, bad)
    assert not log_dir.exists()
    assert list(tmp_path.iterdir()) == []


def test_default_log_dir_is_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MetricsRecorder() writes to ./runs/<generated id>.jsonl."""
    monkeypatch.chdir(tmp_path)
    with MetricsRecorder() as rec:
        rec.send_status("running")
    assert rec.path == Path("runs") / f"{rec.experiment_id}.jsonl"
    assert len(read_messages(tmp_path / rec.path)) == 1


_WRITER = """
import sys
sys.path.insert(0, {root!r})
from recorder import MetricsRecorder
proc, n, log_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
pad = "x" * 300
with MetricsRecorder(log_dir, "shared", resume=True) as rec:
    for i in range(n):
        rec.send_batch_metrics(i, i, 0.5, 0.25, 0, client_id=str(proc), round_num=1)
        rec.record("pad", {{"proc": proc, "i": i, "pad": pad}})
    assert rec.lost == 0
"""


def _run_at_once(commands: list[list[str]], go: Path | None = None) -> list[str]:
    """Run ``commands`` in parallel and return their stdout; each must exit 0.

    With ``go``, they are released together by creating that file (the
    scripts wait for it) once all had a second to start.
    """
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE) for command in commands]
    try:
        if go is not None:
            time.sleep(1.0)
            go.touch()
        out = [proc.communicate(timeout=240)[0].decode() for proc in procs]
        assert [proc.returncode for proc in procs] == [0] * len(procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return out


def test_four_processes_append_whole_lines_to_one_file(tmp_path: Path) -> None:
    """4 processes × 5,000 messages into one file give exactly 20,000 valid, whole lines."""
    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(root=str(ROOT)))
    n = 2500  # two messages per iteration: 5,000 messages per process
    _run_at_once([[sys.executable, str(script), str(p), str(n), str(tmp_path)] for p in range(4)])
    messages = read_messages(tmp_path / "shared.jsonl")
    assert len(messages) == 20_000
    pads = {(m["data"]["proc"], m["data"]["i"]) for m in messages if m["type"] == "pad"}
    batches = {
        (m["data"]["client_id"], m["data"]["step"])
        for m in messages
        if m["type"] == "batch_metrics"
    }
    assert pads == {(p, i) for p in range(4) for i in range(n)}
    assert batches == {(str(p), i) for p in range(4) for i in range(n)}


def test_threads_share_one_recorder(tmp_path: Path) -> None:
    """8 threads writing through one recorder produce only whole lines, none lost."""
    rec = MetricsRecorder(tmp_path, "threads")

    def work(t: int) -> None:
        for i in range(1000):
            rec.record("tick", {"thread": t, "i": i, "pad": "y" * (i % 200)})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rec.close()
    messages = read_messages(tmp_path / "threads.jsonl")
    assert sorted((m["data"]["thread"], m["data"]["i"]) for m in messages) == [
        (t, i) for t in range(8) for i in range(1000)
    ]
    assert rec.lost == 0


def _caught(fn: Any) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_an_unwritable_directory_costs_one_warning_and_counts_losses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A log_dir that cannot exist (under a regular file) never raises; losses are counted and reported."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file")
    rec_box: list[MetricsRecorder] = []

    def use() -> None:
        rec = MetricsRecorder(blocker / "runs", "exp")
        rec_box.append(rec)
        for epoch in range(25):
            rec.send_epoch_end(epoch, "train", {"loss": 0.1})
        rec.send_status("completed")

    first = _caught(use)
    rec = rec_box[0]
    assert len(first) == 1
    assert "cannot open" in str(first[0].message)
    assert rec.lost == 26
    at_close = _caught(rec.close)
    assert len(at_close) == 1
    assert "26 message(s) could not be written" in str(at_close[0].message)
    assert "26 message(s) could not be written" in caplog.text
    assert blocker.read_text() == "a regular file"


def test_a_full_disk_costs_one_warning_and_counts_losses(tmp_path: Path) -> None:
    """Writes that fail with ENOSPC (the run file is /dev/full) never raise; each is counted."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    (tmp_path / "full.jsonl").symlink_to("/dev/full")
    rec_box: list[MetricsRecorder] = []

    def use() -> None:
        rec = MetricsRecorder(tmp_path, "full")
        rec_box.append(rec)
        for step in range(40):
            rec.send_batch_metrics(step, step, 0.5, 0.5, 0)

    caught = _caught(use)
    assert len(caught) == 1
    assert "disk full" in str(caught[0].message)
    assert rec_box[0].lost == 40
    assert "40 message(s)" in str(_caught(rec_box[0].close)[0].message)


_FSIZE = """
import json, resource, sys, warnings
sys.path.insert(0, {root!r})
from recorder import MetricsRecorder
warnings.simplefilter("ignore")
rec = MetricsRecorder(sys.argv[1], "limited")
line = len(b'{{"type":"tick","timestamp":"2026-01-01T00:00:00.000000Z","data":{{"i":0,"pad":"' + b"z" * 100 + b'"}}}}\\n')
# The limit falls in the middle of the 6th line: a short write, then EFBIG.
resource.setrlimit(resource.RLIMIT_FSIZE, (5 * line + line // 2, resource.RLIM_INFINITY))
ok = [rec.record("tick", {{"i": i, "pad": "z" * 100}}) for i in range(10)]
lost_while_limited = rec.lost
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
ok += [rec.record("tick", {{"i": i, "pad": "z" * 100}}) for i in range(10, 13)]
rec.close()
print(json.dumps({{"ok": ok, "lost_while_limited": lost_while_limited, "lost": rec.lost}}))
"""


def test_a_file_size_limit_mid_line_loses_only_what_did_not_fit(tmp_path: Path) -> None:
    """RLIMIT_FSIZE cutting a line: the rest is counted lost, and later lines start on a fresh line."""
    script = tmp_path / "fsize.py"
    script.write_text(_FSIZE.format(root=str(ROOT)))
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] == [True] * 5 + [False] * 5 + [True] * 3
    assert result["lost_while_limited"] == 5
    assert result["lost"] == 5
    raw = (tmp_path / "limited.jsonl").read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b""
    good = [decode_line(x) for x in lines[:5]] + [decode_line(x) for x in lines[6:-1]]
    assert [m["data"]["i"] for m in good] == [0, 1, 2, 3, 4, 10, 11, 12]
    with pytest.raises(ValueError):  # the torn sixth line, which readers skip
        json.loads(lines[5])


def test_a_closed_recorder_warns_once_and_counts(tmp_path: Path) -> None:
    """Messages after close() are not written, warn once, and are counted in lost."""
    rec = MetricsRecorder(tmp_path, "exp")
    rec.send_status("running")
    rec.close()
    rec.close()  # idempotent

    def late() -> None:
        for _ in range(3):
            rec.send_status("completed")

    caught = _caught(late)
    assert len(caught) == 1
    assert "closed" in str(caught[0].message)
    assert rec.lost == 3
    assert rec.closed
    assert len(read_messages(tmp_path / "exp.jsonl")) == 1


def test_a_value_that_cannot_be_encoded_never_raises(tmp_path: Path) -> None:
    """A value whose str() raises is counted as lost instead of raising into training."""

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    rec = MetricsRecorder(tmp_path, "exp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert rec.record("x", {"v": Broken()}) is False
        rec.send_status("running")
        rec.close()
    assert rec.lost == 1
    assert [m["type"] for m in read_messages(tmp_path / "exp.jsonl")] == ["status"]


def test_a_line_over_the_readers_limit_is_not_written(tmp_path: Path) -> None:
    """A message longer than MAX_LINE_BYTES is counted as lost rather than written for readers to skip."""
    rec = MetricsRecorder(tmp_path, "exp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert rec.record("huge", {"blob": "a" * (MAX_LINE_BYTES + 10)}) is False
        assert rec.record("small", {})
        rec.close()
    assert rec.lost == 1
    assert [m["type"] for m in read_messages(tmp_path / "exp.jsonl")] == ["small"]


def test_a_forked_child_writes_even_if_the_lock_was_held(tmp_path: Path) -> None:
    """A child forked while the lock was held (another thread writing) gets a fresh lock and writes."""
    rec = MetricsRecorder(tmp_path, "fork")
    rec.send_status("running", "parent before fork")
    rec._lock.acquire()  # what a writing thread holds at the moment of a DataLoader fork
    try:
        pid = os.fork()
        if pid == 0:  # child
            try:
                rec.send_status("running", "child")
                os._exit(0 if rec.lost == 0 else 3)
            finally:
                os._exit(4)
    finally:
        rec._lock.release()
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child deadlocked on the inherited lock")
    assert os.waitstatus_to_exitcode(status) == 0
    rec.send_status("completed", "parent after fork")
    rec.close()
    messages = [m["data"]["message"] for m in read_messages(tmp_path / "fork.jsonl")]
    assert messages == ["parent before fork", "child", "parent after fork"]


def _child_writes(rec: MetricsRecorder, worker: int) -> None:
    for i in range(200):
        rec.record("worker", {"worker": worker, "i": i})


def test_multiprocessing_fork_workers_share_a_recorder(tmp_path: Path) -> None:
    """Worker processes forked after the recorder was made (as DataLoader workers are) append whole lines."""
    import multiprocessing

    rec = MetricsRecorder(tmp_path, "workers")
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_child_writes, args=(rec, w)) for w in range(3)]
    for w in workers:
        w.start()
    _child_writes(rec, 99)
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    rec.close()
    messages = read_messages(tmp_path / "workers.jsonl")
    assert sorted((m["data"]["worker"], m["data"]["i"]) for m in messages) == sorted(
        (w, i) for w in (0, 1, 2, 99) for i in range(200)
    )


@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, 0),
        ({"RANK": "3"}, 3),
        ({"LOCAL_RANK": "2"}, 2),
        ({"SLURM_PROCID": "5"}, 5),
        ({"RANK": "0", "LOCAL_RANK": "1"}, 0),
    ],
)
def test_rank_comes_from_the_usual_variables(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], rank: int
) -> None:
    """RANK, then LOCAL_RANK, then SLURM_PROCID decide the global rank; none means 0."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert default_rank() == rank


def test_only_rank_zero_writes_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a rank other than 0 the recorder creates no file, drops messages silently and loses none."""
    monkeypatch.setenv("RANK", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = MetricsRecorder(tmp_path / "runs", "ddp")
        rec.send_status("running")
        assert rec.record("x") is False
        rec.close()
    assert not rec.enabled
    assert rec.lost == 0
    assert not (tmp_path / "runs").exists()
    with MetricsRecorder(tmp_path / "runs", "ddp", rank=0) as rank0:
        rank0.send_status("running")
    assert len(read_messages(tmp_path / "runs" / "ddp.jsonl")) == 1


def test_per_rank_gives_every_rank_its_own_file(tmp_path: Path) -> None:
    """per_rank=True writes <id>.rank<N>.jsonl on every rank, rank 0 included."""
    for rank in range(3):
        with MetricsRecorder(tmp_path, "ddp", per_rank=True, rank=rank) as rec:
            rec.record("hello", {"rank": rank})
            assert rec.path == tmp_path / f"ddp.rank{rank}.jsonl"
    for rank in range(3):
        (message,) = read_messages(tmp_path / f"ddp.rank{rank}.jsonl")
        assert message["data"] == {"rank": rank}
    assert not (tmp_path / "ddp.jsonl").exists()


def test_per_rank_refuses_an_id_that_would_grow_too_long(tmp_path: Path) -> None:
    """The per-rank stem must itself be a valid id (at most 128 characters)."""
    with pytest.raises(ValueError, match="invalid experiment id"):
        MetricsRecorder(tmp_path, "a" * 125, per_rank=True, rank=12)
    assert list(tmp_path.iterdir()) == []


def test_fsync_syncs_every_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync=True calls os.fsync on the run file after each message (and on its directory once)."""
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    with MetricsRecorder(tmp_path, "sync", fsync=True) as rec:
        assert len(synced) == 1  # the directory, for the new file's entry
        for i in range(3):
            rec.send_epoch_start(i, 3)
    assert len(synced) == 4
    assert len(read_messages(tmp_path / "sync.jsonl")) == 3


def test_appending_to_an_existing_run_keeps_its_lines(tmp_path: Path) -> None:
    """A second recorder on the same id appends after the first one's lines."""
    with MetricsRecorder(tmp_path, "again") as rec:
        rec.send_status("running")
    with MetricsRecorder(tmp_path, "again") as rec:
        rec.send_status("completed")
    assert [m["data"]["status"] for m in read_messages(tmp_path / "again.jsonl")] == [
        "running",
        "completed",
    ]


def test_repr_names_the_file_and_state(tmp_path: Path) -> None:
    """repr shows the path, whether it writes and how many messages were lost."""
    rec = MetricsRecorder(tmp_path, "r")
    assert "r.jsonl" in repr(rec) and "writing" in repr(rec)
    rec.close()
    assert "closed" in repr(rec)
    json.dumps(repr(rec))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=json_values, kind=st.sampled_from(["epoch_end", "x", "null", "a" * 60]))
def test_the_recorders_fast_path_writes_what_encode_message_writes(
    tmp_path: Path, data: Any, kind: str
) -> None:
    """record() writes the same line as encode_message, bar the timestamp."""
    path = tmp_path / "same.jsonl"
    path.unlink(missing_ok=True)
    with MetricsRecorder(tmp_path, "same") as rec:
        assert rec.record(kind, data)
    (raw,) = path.read_bytes().split(b"\n")[:-1]
    written = decode_line(raw)
    assert raw + b"\n" == encode_message(kind, data, timestamp=written["timestamp"])
    json.loads(raw, parse_constant=lambda token: pytest.fail(f"non-standard token {token}"))


def _spawned_child(rec: MetricsRecorder) -> None:
    rec.send_status("running", "from a spawned process")
    rec.close()


def test_a_pickled_recorder_reopens_its_file(tmp_path: Path) -> None:
    """A recorder sent to a 'spawn' process (as DDP spawn does) appends to the same file there."""
    import multiprocessing
    import pickle

    with MetricsRecorder(tmp_path, "spawned") as rec:
        rec.send_status("running", "parent")
        clone = pickle.loads(pickle.dumps(rec))
        assert clone.path == rec.path and clone.experiment_id == "spawned"
        clone.send_status("running", "clone")
        clone.close()
        child = multiprocessing.get_context("spawn").Process(target=_spawned_child, args=(rec,))
        child.start()
        child.join(timeout=120)
        assert child.exitcode == 0
        rec.send_status("completed", "parent again")
    messages = [m["data"]["message"] for m in read_messages(tmp_path / "spawned.jsonl")]
    assert messages == ["parent", "clone", "from a spawned process", "parent again"]


# --------------------------------------------------------------------------- one id, one run


def _a_run_in(path: Path) -> None:
    """Write one message to ``path`` without a recorder (a run of another process)."""
    path.write_bytes(encode_message("status", {"status": "completed", "message": "earlier"}))


def test_a_new_run_never_goes_into_a_file_that_holds_one(tmp_path: Path) -> None:
    """An id whose file holds a run is versioned: -2, then -3; one warning names the id used."""
    _a_run_in(tmp_path / "exp.jsonl")
    with pytest.warns(UserWarning, match=r"'exp-2'") as caught:
        rec = MetricsRecorder(tmp_path, "exp")
    assert len(caught) == 1 and "resume=True" in str(caught[0].message)
    assert rec.experiment_id == "exp-2" and rec.path == tmp_path / "exp-2.jsonl"
    rec.send_status("running")
    rec.close()
    assert len(read_messages(tmp_path / "exp.jsonl")) == 1
    assert [m["data"]["status"] for m in read_messages(tmp_path / "exp-2.jsonl")] == ["running"]

    _a_run_in(tmp_path / "other.jsonl")
    _a_run_in(tmp_path / "other-2.jsonl")
    with pytest.warns(UserWarning, match=r"'other-3'"):
        assert MetricsRecorder(tmp_path, "other").experiment_id == "other-3"


def test_resume_appends_to_the_existing_run(tmp_path: Path) -> None:
    """resume=True writes into <id>.jsonl after the lines already there, without a warning."""
    _a_run_in(tmp_path / "exp.jsonl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = MetricsRecorder(tmp_path, "exp", resume=True)
    assert rec.experiment_id == "exp" and rec.path == tmp_path / "exp.jsonl"
    rec.send_status("running", "resumed")
    rec.close()
    assert [m["data"]["message"] for m in read_messages(tmp_path / "exp.jsonl")] == [
        "earlier",
        "resumed",
    ]


def test_an_empty_file_nobody_holds_is_taken_over(tmp_path: Path) -> None:
    """An empty <id>.jsonl (a touch, a run that died before its first message) holds no run."""
    (tmp_path / "exp.jsonl").touch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with MetricsRecorder(tmp_path, "exp") as rec:
            rec.send_status("running")
    assert rec.experiment_id == "exp"
    assert len(read_messages(tmp_path / "exp.jsonl")) == 1


def test_an_empty_file_a_live_recorder_holds_is_taken(tmp_path: Path) -> None:
    """An empty file another process claimed (it holds the flock) is not shared."""
    import fcntl

    held = os.open(tmp_path / "exp.jsonl", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.warns(UserWarning, match=r"'exp-2'"):
            rec = MetricsRecorder(tmp_path, "exp")
        assert rec.experiment_id == "exp-2"
        rec.close()
    finally:
        os.close(held)


def test_one_process_shares_one_file_per_id(tmp_path: Path) -> None:
    """Recorders of one process given the same (log_dir, id) write the file the first one claimed."""
    _a_run_in(tmp_path / "exp.jsonl")
    with pytest.warns(UserWarning):
        first = MetricsRecorder(tmp_path, "exp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per claim, not per recorder
        second = MetricsRecorder(tmp_path / "." / "", "exp")
        again = MetricsRecorder(tmp_path, first.experiment_id)  # by the id it was given
    assert first.path == tmp_path / "exp-2.jsonl"
    assert second.experiment_id == again.experiment_id == "exp-2"
    for i, rec in enumerate((first, second, again)):
        rec.send_epoch_start(i, 3)
        rec.close()
    assert [m["data"]["epoch"] for m in read_messages(first.path)] == [0, 1, 2]


def test_a_pickled_versioned_recorder_reopens_the_version(tmp_path: Path) -> None:
    """A recorder that claimed <id>-2 travels (pickle, spawn) as <id>-2, appending."""
    import pickle

    _a_run_in(tmp_path / "exp.jsonl")
    with pytest.warns(UserWarning):
        rec = MetricsRecorder(tmp_path, "exp")
    state = pickle.dumps(rec)
    rec.send_status("running", "parent")
    rec.close()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, pickle; sys.path.insert(0, {str(ROOT)!r}); "
            "rec = pickle.loads(sys.stdin.buffer.read()); "
            "rec.send_status('running', 'child'); rec.close(); print(rec.experiment_id)",
        ],
        input=state,
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.decode().strip() == "exp-2"
    messages = [m["data"]["message"] for m in read_messages(tmp_path / "exp-2.jsonl")]
    assert messages == ["parent", "child"]


_RACER = """
import os, sys, time
sys.path.insert(0, {root!r})
from recorder import MetricsRecorder
log_dir, go = sys.argv[1], sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.0005)
rec = MetricsRecorder(log_dir, "race")
for i in range(20):
    rec.record("tick", {{"pid": os.getpid(), "i": i}})
rec.close()
print(rec.experiment_id)
"""


def test_processes_starting_at_once_never_share_a_run(tmp_path: Path) -> None:
    """8 processes that start the same id at the same moment get 8 distinct files, one writer each."""
    script = tmp_path / "racer.py"
    script.write_text(_RACER.format(root=str(ROOT)))
    runs, go = tmp_path / "runs", tmp_path / "go"
    out = _run_at_once([[sys.executable, str(script), str(runs), str(go)]] * 8, go)
    ids = [text.strip() for text in out]
    assert sorted(ids) == sorted(["race", *(f"race-{n}" for n in range(2, 9))])
    for run_id in ids:
        messages = read_messages(runs / f"{run_id}.jsonl")
        assert len(messages) == 20 and len({m["data"]["pid"] for m in messages}) == 1


_REOPENER = """
import os, sys, time
sys.path.insert(0, {root!r})
from recorder import MetricsRecorder
log_dir, proc, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pad = "r" * 65536  # lines of 16 pages: a write in progress is seen page by page
while not os.path.exists(go):
    time.sleep(0.001)
for opening in range(50):
    with MetricsRecorder(log_dir, "reopened", resume=True) as rec:
        for i in range(6):
            rec.record("tick", {{"proc": proc, "opening": opening, "i": i, "pad": pad}})
"""


def test_concurrent_reopeners_leave_no_blank_or_malformed_line(tmp_path: Path) -> None:
    """4 processes × 50 re-opens with resume=True, writing at once: only whole, valid lines.

    Each opening looks at the file's tail while the others append (before the
    fix, 27-55 blank lines per run of this test).
    """
    script = tmp_path / "reopener.py"
    script.write_text(_REOPENER.format(root=str(ROOT)))
    go = tmp_path / "go"
    _run_at_once(
        [[sys.executable, str(script), str(tmp_path), str(p), str(go)] for p in range(4)], go
    )
    path = tmp_path / "reopened.jsonl"
    lines = path.read_bytes().split(b"\n")
    path.unlink()  # 80 MB
    assert lines.pop() == b""
    blank = sum(1 for line in lines if not line.strip())
    malformed = 0
    for line in lines:
        if line.strip():
            try:
                decode_line(line)
            except MalformedLine:
                malformed += 1
    assert (blank, malformed, len(lines)) == (0, 0, 4 * 50 * 6)
