"""GET /api/metrics, /api/hparams and /api/schema against a real `tailer serve`: exactly replay.read_metrics' rows."""

from __future__ import annotations

import io
import json
import math
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

import replay
from recorder.format import INDEX_KEYS, encode_message
from tests._dashboard_helpers import serving, write_centralized, write_failed, write_federated


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    directory = tmp_path_factory.mktemp("api") / "runs"
    directory.mkdir()
    write_centralized(directory / "a.jsonl", epochs=3, batches_per_epoch=4)
    write_centralized(directory / "b.jsonl", epochs=2, batches_per_epoch=3)
    write_failed(directory / "c.jsonl")  # a NaN loss
    write_federated(directory / "fed.jsonl")
    (directory / "hp.jsonl").write_bytes(
        encode_message("training_start", {"hparams": {"lr": 0.01}, "max_epochs": 2})
        + encode_message("hparams", {"batch_size": 32})
    )
    with serving(directory) as server:
        yield directory, server


def get(server, target: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(server.url + target.lstrip("/"), timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def expected(directory: Path, runs: list[str], metric: str | None) -> pd.DataFrame:
    table = replay.read_metrics([directory / f"{r}.jsonl" for r in runs])
    if metric is not None:
        table = table[table["metric"] == metric].reset_index(drop=True)
    return table


@pytest.mark.parametrize("metric", ["loss", "val_loss", None])
def test_parquet_is_exactly_read_metrics(served, metric):
    """format=parquet gives read_metrics' rows for those runs, same columns, dtypes and values."""
    directory, server = served
    query = "runs=a,c" + (f"&metric={metric}" if metric else "")
    status, ctype, body = get(server, f"/api/metrics?{query}&format=parquet")
    assert status == 200 and ctype == "application/vnd.apache.parquet"
    got = pd.read_parquet(io.BytesIO(body))
    want = expected(directory, ["a", "c"], metric)
    assert len(want) > 0 or metric == "val_loss"
    pd.testing.assert_frame_equal(got, want)


def test_csv_and_json_carry_the_same_rows(served):
    """format=csv is read_metrics' table as CSV; format=json its rows, NaN written as "NaN"."""
    directory, server = served
    want = expected(directory, ["b", "c"], "loss")
    status, ctype, body = get(server, "/api/metrics?runs=b,c&metric=loss&format=csv")
    assert status == 200 and ctype.startswith("text/csv")
    assert body.decode() == want.to_csv(index=False)
    status, ctype, body = get(server, "/api/metrics?runs=b,c&metric=loss&format=json")
    assert status == 200 and ctype == "application/json"
    rows = json.loads(body)
    assert [(r["experiment_id"], r["seq"], r["metric"]) for r in rows] == list(
        zip(want["experiment_id"], want["seq"], want["metric"], strict=True)
    )
    for row, value in zip(rows, want["value"], strict=True):
        assert row["value"] == "NaN" if math.isnan(value) else row["value"] == value
    assert rows[0]["timestamp"].endswith("Z")


def test_every_run_when_runs_is_absent(served):
    """Without runs=, every run in the directory (as read_metrics on the directory)."""
    directory, server = served
    status, _, body = get(server, "/api/metrics?format=parquet&metric=accuracy")
    assert status == 200
    want = replay.read_metrics(directory)
    want = want[want["metric"] == "accuracy"].reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(body)), want)


@pytest.mark.parametrize(
    "target, code",
    [
        ("/api/metrics?runs=..%2Fetc", 404),
        ("/api/metrics?runs=a,nope", 404),
        ("/api/metrics?runs=a&format=xlsx", 400),
    ],
)
def test_bad_requests_are_refused(served, target, code):
    """An invalid or unknown id is 404 (no file is touched for an invalid one), a bad format 400."""
    _, server = served
    status, _, _ = get(server, target)
    assert status == code


def test_hparams_lists_the_messages_hyperparameters_come_from(served):
    """/api/hparams gives each run's hparams and training_start messages (for the list's key=value filter)."""
    _, server = served
    status, _, body = get(server, "/api/hparams")
    assert status == 200
    got = json.loads(body)
    assert got["hp"] == [
        {"type": "training_start", "data": {"hparams": {"lr": 0.01}, "max_epochs": 2}},
        {"type": "hparams", "data": {"batch_size": 32}},
    ]


def test_schema_serves_the_index_keys_of_the_log_format(served):
    """/api/schema gives recorder.format.INDEX_KEYS as JSON (model.js imports it as a JSON module)."""
    _, server = served
    status, ctype, body = get(server, "/api/schema")
    assert status == 200 and ctype == "application/json"
    assert json.loads(body) == {"index_keys": sorted(INDEX_KEYS)}


def test_token_is_required(tmp_path):
    """With --token, /api/metrics answers 401 without it."""
    directory = tmp_path / "runs"
    directory.mkdir()
    write_centralized(directory / "a.jsonl", epochs=1, batches_per_epoch=1)
    with serving(directory, token="t0k") as server:
        assert get(server, "/api/metrics?runs=a")[0] == 401
        assert get(server, "/api/metrics?runs=a&token=t0k")[0] == 200
