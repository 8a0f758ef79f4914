"""Reduced series (``GET /api/series``): the M4 envelope, the store against read_metrics, the endpoint."""

from __future__ import annotations

import asyncio
import gzip
import math
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest

import replay
from recorder.format import encode_message
from tailer.series import SeriesQuery, SeriesStore, reduce_m4
from tailer.server import serve_directory
from tests._tailer_helpers import Writer, aio, http_get, recv_json, ws_connect

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"


# --------------------------------------------------------------------------- reduce_m4


def _spiky(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = np.arange(n, dtype=np.float64)
    ys = 1.0 / (1.0 + xs / 1000.0) + 0.05 * rng.standard_normal(n)
    ys[rng.integers(0, n, 20)] = 50.0  # spikes a sampler would lose
    ys[rng.integers(0, n, 5)] = -50.0
    return xs, ys


def test_envelope_min_max_equal_the_raw_data_per_bucket():
    """Each pixel column keeps the exact min and max, and first and last, of its raw points."""
    xs, ys = _spiky(100_000)
    x0, x1, width = 0.0, 100_000.0, 500  # columns of exactly 200 steps
    out_x, out_y, reduced, count = reduce_m4(xs, ys, x0, x1, width, max_raw=1000)
    assert reduced and count == 100_000
    assert len(out_x) <= 4 * width
    assert set(zip(out_x.tolist(), out_y.tolist(), strict=True)) <= set(
        zip(xs.tolist(), ys.tolist(), strict=True)
    )
    for b in range(width):
        raw = ys[(xs >= b * 200) & (xs < (b + 1) * 200)]
        got = out_y[(out_x >= b * 200) & (out_x < (b + 1) * 200)]
        assert got.min() == raw.min() and got.max() == raw.max(), b
        assert got[0] == raw[0] and got[-1] == raw[-1], b
    assert out_y.max() == 50.0 and out_y.min() == -50.0


def test_envelope_keeps_gaps_and_ignores_non_finite_in_min_max():
    """A non-finite value leaves a gap point; min and max are those of the finite values."""
    xs = np.arange(1000, dtype=np.float64)
    ys = np.ones(1000)
    ys[500] = math.nan
    ys[501] = math.inf
    ys[700] = 3.0
    out_x, out_y, reduced, _ = reduce_m4(xs, ys, 0, 999, 10, max_raw=10)
    assert reduced
    assert 500 in out_x.tolist()  # the gap is drawn
    finite = out_y[np.isfinite(out_y)]
    assert finite.max() == 3.0 and finite.min() == 1.0


def test_zoom_returns_the_raw_points_and_one_neighbour_each_side():
    """A range with few enough points comes back raw, plus the nearest point outside each edge."""
    xs, ys = _spiky(100_000)
    out_x, out_y, reduced, count = reduce_m4(xs, ys, 5000, 5999, 1000, max_raw=20_000)
    assert not reduced and count == 1000
    assert out_x.tolist() == list(range(4999, 6001))
    assert out_y.tolist() == ys[4999:6001].tolist()


def test_empty_and_outside_ranges():
    """No points, or a range beyond the data, give nothing reduced (at most the neighbour)."""
    empty = np.array([], dtype=np.float64)
    assert reduce_m4(empty, empty, 0, 1, 10, 10)[3] == 0
    xs, ys = _spiky(100)
    out_x, _, reduced, count = reduce_m4(xs, ys, 500, 600, 10, 10)
    assert count == 0 and not reduced and out_x.tolist() == [99.0]


# --------------------------------------------------------------------------- the store


def _store(path: Path) -> SeriesStore:
    store = SeriesStore(path, path.stem)
    store.catch_up(path.stat().st_size)
    return store


@pytest.mark.parametrize("name", ["centralized-digits", "federated-digits", "failed-digits"])
def test_store_holds_exactly_the_rows_of_read_metrics(name):
    """Every series (metric, type, phase, client) holds read_metrics' values in file order."""
    path = SAMPLES / f"{name}.jsonl"
    rows = replay.read_metrics(path)
    store = _store(path)
    assert sum(s.index.size for s in store.series.values()) == len(rows)
    keys = ["metric", "type", "phase", "client_id"]
    for key, group in rows.groupby(keys, dropna=False, sort=False):
        key = tuple(None if isinstance(v, float) and math.isnan(v) else v for v in key)
        matches = [
            s for s in store.series.values() if (s.metric, s.type, s.phase, s.client_id) == key
        ]
        assert len(matches) == 1, key
        series = matches[0]
        assert series.values.view().tolist() == pytest.approx(group["value"].tolist(), nan_ok=True)
        seqs = store.msg_seq.view()[series.index.view()]
        assert seqs.tolist() == group["seq"].tolist()
        steps = store.msg_step.view()[series.index.view()]
        expected = group["step"].astype("float64").fillna(math.nan).tolist()
        assert steps.tolist() == pytest.approx(expected, nan_ok=True)


def test_store_grows_block_by_block_like_one_read(tmp_path):
    """Catching up in many small steps gives the same series as one read of the whole file."""
    path = tmp_path / "r.jsonl"
    lines = [encode_message("batch_metrics", {"step": i, "loss": 1 / (i + 1)}) for i in range(3000)]
    lines.insert(10, b"not json\n")
    lines.insert(20, encode_message("status", {"status": "running", "message": "hi"}))
    lines.insert(30, b"\n")  # blank lines are no lines (no seq), as on the WebSocket
    lines.insert(40, b"  \n")
    path.write_bytes(b"".join(lines))
    whole = _store(path)
    pieces = SeriesStore(path, "r")
    offset = 0
    for line in lines:
        offset += len(line)
        if offset % 7 == 0 or offset == path.stat().st_size:
            pieces.catch_up(offset)
    pieces.catch_up(offset)
    q = SeriesQuery("r", "loss", width=100, max_raw=100_000)
    dumps = orjson.OPT_SERIALIZE_NUMPY
    assert orjson.dumps(pieces.answer(q), option=dumps) == orjson.dumps(
        whole.answer(q), option=dumps
    )
    assert pieces.last_seq == whole.last_seq == len(lines) - 3
    assert [orjson.loads(e)["seq"] for e in pieces.events] == [20]


def test_x_values_stay_exact_past_what_float32_holds(tmp_path):
    """seq/step/epoch are kept as float32 while whole and small; larger values stay exact."""
    path = tmp_path / "r.jsonl"
    steps = [0, 1, 2**24, 2**24 + 1, 2**40 + 3]
    path.write_bytes(
        b"".join(
            encode_message("batch_metrics", {"step": s, "epoch": i, "loss": 0.1 * i})
            for i, s in enumerate(steps)
        )
    )
    store = SeriesStore(path, "r")
    offset = 0
    for line in path.read_bytes().splitlines(keepends=True):  # one line at a time
        offset += len(line)
        store.catch_up(offset)
    answer = store.answer(SeriesQuery("r", "loss"))["series"][0]
    assert answer["x"].tolist() == steps
    assert answer["y"].tolist() == [0.1 * i for i in range(5)]
    zoom = store.answer(SeriesQuery("r", "loss", x0=2**24 + 1, x1=2**24 + 1))["series"][0]
    assert zoom["count"] == 1 and zoom["x"].tolist() == [2**24, 2**24 + 1, 2**40 + 3]
    by_epoch = store.answer(SeriesQuery("r", "loss", x="epoch"))["series"][0]
    assert by_epoch["x"].tolist() == list(range(5))
    assert store.msg_epoch.data.dtype == np.float32  # still narrow: 0..4
    assert store.msg_step.data.dtype == np.float64


def test_a_resumed_run_stepping_back_is_answered_in_x_order(tmp_path):
    """x that goes back (a run resumed from a checkpoint) comes back sorted, before and after growth."""
    path = tmp_path / "r.jsonl"
    steps = [*range(10), *range(5, 15)]
    path.write_bytes(
        b"".join(
            encode_message("batch_metrics", {"step": s, "loss": float(i)})
            for i, s in enumerate(steps[:8])
        )
    )
    store = _store(path)
    q = SeriesQuery("r", "loss")
    assert store.answer(q)["series"][0]["x"].tolist() == list(range(8))
    with open(path, "ab") as f:
        for i, s in enumerate(steps[8:], start=8):
            f.write(encode_message("batch_metrics", {"step": s, "loss": float(i)}))
    store.catch_up(path.stat().st_size)
    answer = store.answer(q)["series"][0]
    assert answer["x"].tolist() == sorted(steps)
    assert answer["y"].tolist() == [float(i) for i in sorted(range(20), key=lambda i: steps[i])]


# --------------------------------------------------------------------------- the endpoint


async def _get(port: int, target: str, **headers: str) -> tuple[int, dict[str, str], object]:
    status, head, body = await http_get(port, target, headers or None)
    if head.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    return status, head, orjson.loads(body) if status == 200 else body


def _write_run(directory: Path, name: str, steps: int) -> Writer:
    writer = Writer(directory, name)
    writer.message("status", {"status": "running", "message": "start"})
    chunk = []
    for step in range(steps):
        chunk.append(encode_message("batch_metrics", {"step": step, "loss": (step % 97) / 97}))
        if step % 1000 == 999:
            chunk.append(
                encode_message(
                    "epoch_end",
                    {"epoch": step // 1000, "phase": "val", "step": step, "metrics": {"loss": 0.5}},
                )
            )
    writer.raw(b"".join(chunk))
    return writer


@aio(120)
async def test_series_endpoint_reduces_zooms_and_continues_live(tmp_path):
    """Catalogue, reduced history, a raw zoom, then live lines from `since=seq`: no gap, no repeat."""
    writer = _write_run(tmp_path, "big", 20_000)
    async with serve_directory(tmp_path, port=0) as app:
        status, head, catalogue = await _get(
            app.port, "/api/series?run=big", **{"Accept-Encoding": "gzip"}
        )
        assert status == 200 and head["content-type"] == "application/json"
        assert head.get("content-encoding") == "gzip"
        assert catalogue["seq"] == 20_020
        assert {
            (s["metric"], s["type"], s["phase"], s["bulk"], s["points"])
            for s in catalogue["series"]
        } == {
            ("loss", "batch_metrics", None, True, 20_000),
            ("loss", "epoch_end", "val", False, 20),
        }
        events = catalogue["events"]
        assert [e["type"] for e in events] == ["status"] + ["epoch_end"] * 20
        assert events[0]["seq"] == 0 and events[0]["experiment_id"] == "big"

        status, _, full = await _get(
            app.port, "/api/series?run=big&metric=loss&width=200&max_raw=1000"
        )
        batch = next(s for s in full["series"] if s["type"] == "batch_metrics")
        assert batch["reduced"] and batch["count"] == 20_000 and len(batch["x"]) <= 4 * 200
        assert min(batch["y"]) == 0.0 and max(batch["y"]) == 96 / 97
        assert full["seq"] == 20_020

        status, _, zoom = await _get(app.port, "/api/series?run=big&metric=loss&x0=1000&x1=1199")
        batch = next(s for s in zoom["series"] if s["type"] == "batch_metrics")
        assert not batch["reduced"] and batch["x"] == list(range(999, 1201))
        assert batch["y"] == [(step % 97) / 97 for step in range(999, 1201)]

        status, _, snapshot = await _get(app.port, "/api/series?run=big&metric=loss&upto=1500")
        batch = next(s for s in snapshot["series"] if s["type"] == "batch_metrics")
        assert snapshot["seq"] == 1500 and batch["count"] == 1499  # seq 0 is the status line
        assert catalogue["messages"] == 20_021

        seq = full["seq"]
        async with ws_connect(f"{app.ws_url}experiments/big?since={seq}") as ws:
            writer.message("batch_metrics", {"step": 20_000, "loss": 0.25})
            frame = await recv_json(ws)
            assert frame["seq"] == seq + 1 and frame["data"]["step"] == 20_000
        _, _, after = await _get(app.port, "/api/series?run=big&metric=loss&x0=19990")
        batch = next(s for s in after["series"] if s["type"] == "batch_metrics")
        assert after["seq"] == seq + 1 and batch["x"][-1] == 20_000 and batch["y"][-1] == 0.25
    writer.close()


@aio(120)
async def test_series_catalogue_with_bulk_answers_every_bulk_metric_in_one_snapshot(tmp_path):
    """`bulk=1`: the catalogue plus each bulk metric, as `metric=` answers it up to its seq."""
    writer = _write_run(tmp_path, "big", 5_000)
    writer.raw(encode_message("batch_metrics", {"step": 5_000, "loss": 0.5, "accuracy": 0.75}))
    async with serve_directory(tmp_path, port=0) as app:
        query = "width=100&max_raw=400"
        _, _, both = await _get(app.port, f"/api/series?run=big&bulk=1&{query}")
        _, _, catalogue = await _get(app.port, "/api/series?run=big")
        assert {k: v for k, v in both.items() if k != "metrics"} == catalogue
        assert [m["metric"] for m in both["metrics"]] == ["loss", "accuracy"]  # bulk only
        for answer in both["metrics"]:
            _, _, alone = await _get(
                app.port, f"/api/series?run=big&metric={answer['metric']}&{query}"
            )
            assert answer == alone and answer["seq"] == catalogue["seq"]
        assert both["metrics"][0]["series"][0]["reduced"]
        assert all(not s["bulk"] for s in catalogue["series"] if s["type"] == "epoch_end")
    writer.close()


@aio(120)
async def test_series_x_kinds(tmp_path):
    """x=epoch, seq, time and wall draw the same values against other axes."""
    writer = Writer(tmp_path, "r")
    for epoch in range(3):
        writer.raw(
            encode_message(
                "epoch_end",
                {"epoch": epoch, "phase": "train", "metrics": {"loss": 1.0 / (epoch + 1)}},
                timestamp=f"2025-10-22T11:00:0{epoch * 2}.500Z",
            )
        )
    writer.close()
    async with serve_directory(tmp_path, port=0) as app:
        for x, expected in [
            ("epoch", [0, 1, 2]),
            ("seq", [0, 1, 2]),
            ("time", [0, 2, 4]),
            ("wall", [1761130800500 + 2000 * e for e in range(3)]),
        ]:
            status, _, answer = await _get(app.port, f"/api/series?run=r&metric=loss&x={x}")
            assert status == 200, answer
            assert answer["series"][0]["x"] == expected, x
            assert answer["series"][0]["y"] == [1.0, 0.5, 1 / 3]
        _, _, answer = await _get(app.port, "/api/series?run=r&metric=loss&x=step")
        assert answer["series"][0]["x"] == []  # epoch_end without step has no step


@aio()
async def test_series_refuses_bad_requests(tmp_path):
    """Invalid or unknown ids are 404 (no filesystem access), bad parameters 400."""
    Writer(tmp_path, "r").message("epoch_end", {"epoch": 0, "metrics": {"loss": 1}})
    (tmp_path.parent / "secret.jsonl").write_text('{"type":"x","data":{"v":1}}\n')
    async with serve_directory(tmp_path, port=0) as app:
        for target in [
            "/api/series",
            "/api/series?run=",
            "/api/series?run=..%2Fsecret",
            "/api/series?run=../secret",
            "/api/series?run=" + "a" * 200,
            "/api/series?run=missing",
        ]:
            assert (await _get(app.port, target))[0] == 404, target
        for target in [
            "/api/series?run=r&x=nope",
            "/api/series?run=r&x0=abc",
            "/api/series?run=r&x0=nan",
            "/api/series?run=r&x0=5&x1=1",
            "/api/series?run=r&width=0",
            "/api/series?run=r&width=100000",
            "/api/series?run=r&max_raw=-1",
            "/api/series?run=r&upto=-2",
            "/api/series?run=r&upto=x",
        ]:
            assert (await _get(app.port, target))[0] == 400, target
        status, _, answer = await _get(app.port, "/api/series?run=r&metric=nothing")
        assert status == 200 and answer["series"] == []


@aio()
async def test_series_if_over_answers_only_for_a_big_enough_run(tmp_path):
    """``if_over=BYTES``: 204 (no body, no store built) for a missing or smaller run, else as without."""
    Writer(tmp_path, "r").message("epoch_end", {"epoch": 0, "metrics": {"loss": 1}})
    size = (tmp_path / "r.jsonl").stat().st_size
    async with serve_directory(tmp_path, port=0) as app:
        for target in [f"/api/series?run=r&if_over={size}", "/api/series?run=missing&if_over=0"]:
            status, _, body = await _get(app.port, target)
            assert (status, body) == (204, b""), target
        assert "r" not in app.series.stores
        status, _, answer = await _get(app.port, f"/api/series?run=r&if_over={size - 1}")
        assert status == 200 and answer["seq"] == 0 and answer["messages"] == 1
        for bad in ["-1", "x", "1.5", "9" * 40]:
            assert (await _get(app.port, f"/api/series?run=r&if_over={bad}"))[0] == 400, bad


@aio()
async def test_series_needs_the_token(tmp_path):
    """With a token, /api/series needs it like every other endpoint."""
    Writer(tmp_path, "r").message("epoch_end", {"epoch": 0, "metrics": {"loss": 1}})
    async with serve_directory(tmp_path, port=0, token="s3cret") as app:
        assert (await _get(app.port, "/api/series?run=r"))[0] == 401
        assert (await _get(app.port, "/api/series?run=r&token=wrong"))[0] == 401
        assert (await _get(app.port, "/api/series?run=r&token=s3cret"))[0] == 200
        assert (await _get(app.port, "/api/series?run=r", Authorization="Bearer s3cret"))[0] == 200


@aio()
async def test_series_restarts_after_truncation(tmp_path):
    """A file truncated and rewritten gives series of the new content only."""
    writer = _write_run(tmp_path, "r", 500)
    async with serve_directory(tmp_path, port=0, poll=True) as app:
        _, _, before = await _get(app.port, "/api/series?run=r&metric=loss")
        assert before["series"][0]["count"] == 500
        async with ws_connect(f"{app.ws_url}experiments/r?since={before['seq']}") as ws:
            (tmp_path / "r.jsonl").write_bytes(
                encode_message("batch_metrics", {"step": 0, "loss": 7.0})
            )
            assert (await recv_json(ws))["type"] == "log_reset"
        _, _, after = await _get(app.port, "/api/series?run=r&metric=loss")
        assert after["seq"] == 0 and after["series"][0]["y"] == [7.0]
    writer.close()


@aio(120)
async def test_cold_series_request_does_not_stall_other_clients(tmp_path, monkeypatch):
    """While a run's series are being built, other runs' lines and /healthz keep flowing."""
    _write_run(tmp_path, "big", 5000).close()
    other = Writer(tmp_path, "other")
    other.message("status", {"status": "running"})
    started, release = threading.Event(), threading.Event()
    add_lines = SeriesStore.add_lines

    def paused(self, first_seq, lines):
        started.set()
        assert release.wait(60)
        add_lines(self, first_seq, lines)

    monkeypatch.setattr(SeriesStore, "add_lines", paused)
    async with (
        serve_directory(tmp_path, port=0) as app,
        ws_connect(f"{app.ws_url}experiments/other?since=0") as ws,
    ):
        app.series.build_wait = 60
        pending = asyncio.create_task(_get(app.port, "/api/series?run=big&metric=loss"))
        assert await asyncio.to_thread(started.wait, 30)
        other.message("batch_metrics", {"step": 1, "loss": 0.5})
        frame = await recv_json(ws)  # arrives while the build is held on its worker
        assert frame["data"] == {"step": 1, "loss": 0.5}
        assert (await http_get(app.port, "/healthz"))[0] == 200
        assert not pending.done()
        release.set()
        status, _, answer = await pending
        assert status == 200 and answer["series"][0]["count"] == 5000
    other.close()


@aio(120)
async def test_long_runs_are_built_in_the_background_at_start(tmp_path):
    """A run of WARM_FROM_BYTES or more has its series built at start, before any request."""
    _write_run(tmp_path, "big", 30_000).close()
    _write_run(tmp_path, "small", 100).close()
    async with serve_directory(tmp_path, port=0) as app:
        for _ in range(1200):
            store = app.series.stores.get("big")
            if store is not None and store.last_seq == 30_030:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the long run was not built in the background")
        assert "small" not in app.series.stores
        _, _, answer = await _get(app.port, "/api/series?run=big&metric=loss")
        assert answer["seq"] == 30_030 and app.series.stores["big"] is store


@aio(120)
async def test_only_the_few_runs_trained_now_are_built_at_start(tmp_path):
    """Finished runs (last line over an hour old) and all but the 2 most recent active ones
    wait for a request: a directory of old long runs costs no memory at start."""
    import os

    from tailer import series_api

    old = tmp_path / "old.jsonl"
    old.write_bytes(
        b"".join(
            encode_message(
                "batch_metrics", {"step": i, "loss": 0.5}, timestamp="2020-01-01T00:00:00Z"
            )
            for i in range(30_000)
        )
    )
    os.utime(old)  # a fresh copy: its mtime says nothing
    for name in ("a", "b", "c"):
        _write_run(tmp_path, name, 30_000).close()
        await asyncio.sleep(0.02)  # c is the most recent
    assert series_api.WARM_RUNS == 2
    async with serve_directory(tmp_path, port=0) as app:
        for _ in range(1200):
            if all(app.series.stores.get(r) and app.series.stores[r].last_seq > 0 for r in "bc"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the active runs were not built in the background")
        assert set(app.series.stores) == {"b", "c"}
        for _ in range(60):  # as the page does: a 503 says come back after Retry-After
            status, head, answer = await _get(app.port, "/api/series?run=old&metric=loss")
            if status != 503:
                break
            await asyncio.sleep(float(head["retry-after"]))
        assert status == 200 and answer["seq"] == 29_999  # built on the request
        assert set(app.series.stores) == {"b", "c", "old"}


@aio()
async def test_a_run_the_tailer_still_reads_in_is_answered_503(tmp_path):
    """While the tailer numbers a file's start-up backlog, /api/series says 503, retry."""
    _write_run(tmp_path, "r", 100).close()
    async with serve_directory(tmp_path, port=0) as app:
        reader = app.source.fanout.readers["r"]
        reader.backlog_end = reader.consumed + 1000  # as if the start-up read were not done
        status, head, _ = await _get(app.port, "/api/series?run=r")
        assert status == 503 and head["retry-after"] == "1"
        reader.backlog_end = 0
        status, _, answer = await _get(app.port, "/api/series?run=r")
        assert status == 200 and answer["seq"] == 100


@aio(120)
async def test_a_run_still_being_read_is_answered_503_with_retry_after(tmp_path, monkeypatch):
    """A request that waited build_wait for the read gets 503 + Retry-After; the read goes on."""
    _write_run(tmp_path, "big", 3000).close()
    release = threading.Event()
    add_lines = SeriesStore.add_lines

    def paused(self, first_seq, lines):
        assert release.wait(60)
        add_lines(self, first_seq, lines)

    monkeypatch.setattr(SeriesStore, "add_lines", paused)
    async with serve_directory(tmp_path, port=0) as app:
        app.series.build_wait = 0.2
        status, head, body = await _get(app.port, "/api/series?run=big&metric=loss")
        assert status == 503 and head["retry-after"] == "1" and b"retry" in body
        release.set()
        for _ in range(200):
            status, _, answer = await _get(app.port, "/api/series?run=big&metric=loss")
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200 and answer["series"][0]["count"] == 3000
