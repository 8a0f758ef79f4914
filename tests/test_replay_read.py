"""replay.read_metrics and replay.read_messages: columns, dtypes, naming rules, bad lines."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replay._source as source
from recorder.format import NON_FINITE, decode_line
from replay.tables import (
    INDEX_KEYS,
    MESSAGE_COLUMNS,
    METRIC_COLUMNS,
    SkippedLinesWarning,
    read_messages,
    read_metrics,
)
from tests._replay_helpers import SAMPLE_RUNS, START, fresh_python, line, mixed_run, write_run

STR = pd.StringDtype(na_value=np.nan)
METRIC_DTYPES = {
    "experiment_id": STR,
    "rank": pd.Int64Dtype(),
    "seq": np.dtype("int64"),
    "attempt": pd.Int64Dtype(),
    "timestamp": pd.DatetimeTZDtype("us", "UTC"),
    "type": STR,
    "phase": STR,
    "epoch": pd.Int64Dtype(),
    "step": pd.Int64Dtype(),
    "round": pd.Int64Dtype(),
    "client_id": STR,
    "metric": STR,
    "value": np.dtype("float64"),
}
MESSAGE_DTYPES = {
    "experiment_id": STR,
    "rank": pd.Int64Dtype(),
    "seq": np.dtype("int64"),
    "attempt": pd.Int64Dtype(),
    "timestamp": pd.DatetimeTZDtype("us", "UTC"),
    "type": STR,
    "data": np.dtype("object"),
}


def rows(df: pd.DataFrame, kind: str | None = None) -> list[tuple[str, float]]:
    if kind is not None:
        df = df[df["type"] == kind]
    return list(zip(df["metric"], df["value"], strict=True))


def metrics_of(tmp_path: Path, *lines: bytes) -> pd.DataFrame:
    return read_metrics(write_run(tmp_path / "run.jsonl", lines))


# --------------------------------------------------------------------------- columns and dtypes


def test_metrics_columns_and_dtypes(tmp_path: Path) -> None:
    """read_metrics gives exactly the documented columns, in order, with stable dtypes."""
    df = read_metrics(mixed_run(tmp_path / "run-1.jsonl"))
    assert tuple(df.columns) == METRIC_COLUMNS
    assert df.dtypes.to_dict() == METRIC_DTYPES
    assert len(df) > 0 and set(df["experiment_id"]) == {"run-1"}
    assert isinstance(df.index, pd.RangeIndex)


@pytest.mark.parametrize("content", [b"", line("status", {"status": "running", "message": ""})])
def test_empty_run_keeps_columns_and_dtypes(tmp_path: Path, content: bytes) -> None:
    """A run with no lines, or no numeric values, gives an empty frame with the same dtypes."""
    path = write_run(tmp_path / "empty.jsonl", [content])
    df = read_metrics(path)
    assert len(df) == 0
    assert tuple(df.columns) == METRIC_COLUMNS
    assert df.dtypes.to_dict() == METRIC_DTYPES
    messages = read_messages(path)
    assert tuple(messages.columns) == MESSAGE_COLUMNS
    assert messages.dtypes.to_dict() == MESSAGE_DTYPES
    assert len(messages) == (1 if content else 0)


def test_messages_columns_dtypes_and_values(tmp_path: Path) -> None:
    """read_messages has one row per message with its seq, UTC timestamp, type and data dict."""
    path = mixed_run(tmp_path / "run-1.jsonl")
    df = read_messages(path)
    assert tuple(df.columns) == MESSAGE_COLUMNS
    assert df.dtypes.to_dict() == MESSAGE_DTYPES
    lines = path.read_bytes().split(b"\n")[:-1]
    assert len(df) == len(lines)
    assert list(df["seq"]) == list(range(len(lines)))
    for row, raw in zip(df.itertuples(), lines, strict=True):
        message = decode_line(raw)
        assert row.type == message["type"]
        assert row.data == message["data"]
        assert row.timestamp == pd.Timestamp(message["timestamp"])
    assert df["timestamp"].iloc[0] == pd.Timestamp(START, unit="s", tz="UTC")


def test_sample_runs_read(tmp_path: Path) -> None:
    """Every committed sample run reads without skipped lines and gives rows for its metrics."""
    runs = sorted(SAMPLE_RUNS.glob("*.jsonl"))
    if not runs:
        pytest.skip("no sample runs committed yet")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedLinesWarning)
        df = read_metrics(SAMPLE_RUNS)
        messages = read_messages(SAMPLE_RUNS)
    assert set(df["experiment_id"]) <= {p.stem for p in runs}
    assert set(messages["experiment_id"]) == {p.stem for p in runs}
    assert df.dtypes.to_dict() == METRIC_DTYPES
    for run in runs:
        count = len(run.read_bytes().split(b"\n")) - 1
        assert list(messages.loc[messages.experiment_id == run.stem, "seq"]) == list(range(count))
    ends = df[(df["type"] == "epoch_end") & (df["metric"] == "loss")]
    if len(ends):
        assert ends["epoch"].notna().all() and ends["phase"].notna().all()


# --------------------------------------------------------------------------- naming rules


def test_epoch_end_metrics_drop_the_metrics_prefix(tmp_path: Path) -> None:
    """epoch_end's data.metrics.loss is the metric 'loss', indexed by epoch and phase."""
    df = metrics_of(
        tmp_path,
        line("epoch_end", {"epoch": 2, "phase": "val", "metrics": {"loss": 0.5, "acc": 1}}),
    )
    assert rows(df) == [("loss", 0.5), ("acc", 1.0)]
    assert list(df["epoch"]) == [2, 2] and list(df["phase"]) == ["val", "val"]
    assert df["step"].isna().all() and df["round"].isna().all() and df["client_id"].isna().all()


def test_round_end_metrics_keep_their_dict_name(tmp_path: Path) -> None:
    """round_end values are fit_metrics.* and eval_metrics.*, indexed by round."""
    df = metrics_of(
        tmp_path,
        line(
            "round_end",
            {
                "round": 3,
                "total_rounds": 5,
                "fit_metrics": {"loss": 0.25},
                "eval_metrics": {"loss": 0.5, "accuracy": 0.75},
            },
        ),
        line("round_metrics", {"round_num": 4, "total_rounds": 5, "metrics": {"accuracy": 0.8}}),
    )
    assert rows(df) == [
        ("fit_metrics.loss", 0.25),
        ("eval_metrics.loss", 0.5),
        ("eval_metrics.accuracy", 0.75),
        ("accuracy", 0.8),
    ]
    assert list(df["round"]) == [3, 3, 3, 4]


def test_batch_metrics_index_keys_and_nulls_are_not_metrics(tmp_path: Path) -> None:
    """batch_metrics' step, batch_idx and epoch index the row; null recall/f1 give no rows."""
    df = metrics_of(
        tmp_path,
        line(
            "batch_metrics",
            {
                "step": 7,
                "batch_idx": 3,
                "loss": 0.5,
                "accuracy": 0.25,
                "recall": None,
                "f1": None,
                "epoch": 1,
                "client_id": 9,
                "round_num": 2,
            },
        ),
    )
    assert rows(df) == [("loss", 0.5), ("accuracy", 0.25)]
    assert list(df["step"]) == [7, 7] and list(df["epoch"]) == [1, 1]
    assert list(df["round"]) == [2, 2] and list(df["client_id"]) == ["9", "9"]


def test_nested_dicts_are_dotted_and_lists_indexed(tmp_path: Path) -> None:
    """Nested dicts give dotted paths, list elements their position, and index keys deeper down count."""
    df = metrics_of(
        tmp_path,
        line(
            "gradient_stats",
            {
                "step": 1,
                "total_norm": 2.0,
                "layer_norms": {"fc1": {"weight": 0.5, "bias": 0.25}},
                "per_class": [0.1, 0.2],
                "fit_metrics": {"epoch": 4},
            },
        ),
    )
    assert rows(df) == [
        ("total_norm", 2.0),
        ("layer_norms.fc1.weight", 0.5),
        ("layer_norms.fc1.bias", 0.25),
        ("per_class.0", 0.1),
        ("per_class.1", 0.2),
        ("fit_metrics.epoch", 4.0),
    ]


def test_booleans_strings_and_empty_containers_are_not_metrics(tmp_path: Path) -> None:
    """Booleans, ordinary strings, nulls and empty dicts give no rows; total_* are index keys."""
    df = metrics_of(
        tmp_path,
        line("training_mode", {"is_federated": True, "num_rounds": 3, "num_clients": 2}),
        line("status", {"status": "running", "message": "go"}),
        line("round_end", {"round": 1, "total_rounds": 3, "fit_metrics": {}, "eval_metrics": {}}),
        line("epoch_start", {"epoch": 0, "total_epochs": 10}),
    )
    assert rows(df) == [("num_rounds", 3.0), ("num_clients", 2.0)]


def test_lightning_metrics_messages(tmp_path: Path) -> None:
    """The recorder's metrics {step, epoch?, metrics} messages give one row per logged value."""
    df = metrics_of(
        tmp_path,
        line("metrics", {"step": 10, "epoch": 1, "metrics": {"train_loss": 0.5, "val_acc": 0.9}}),
        line("metrics", {"step": 11, "metrics": {"train_loss": 0.4, "epoch": 2}}),
    )
    assert rows(df) == [("train_loss", 0.5), ("val_acc", 0.9), ("train_loss", 0.4)]
    assert list(df["step"]) == [10, 10, 11]
    assert list(df["epoch"]) == [1, 1, 2]  # the second from metrics.epoch, which is no metric


def test_local_epoch_pivots_per_client(tmp_path: Path) -> None:
    """local_epoch rows carry round, client_id and epoch (= local_epoch) and pivot per client."""
    big = 2**64 - 1  # node ids are unsigned 64-bit
    lines = [
        line(
            "local_epoch",
            {
                "client_id": client,
                "round": round_,
                "local_epoch": 0,
                "metrics": {"loss": round_ + i / 10},
            },
        )
        for round_ in (1, 2)
        for i, client in enumerate(["alice", big])
    ]
    df = metrics_of(tmp_path, *lines)
    assert list(df["client_id"]) == ["alice", str(big)] * 2
    assert list(df["epoch"]) == [0, 0, 0, 0]
    table = df[df.metric == "loss"].pivot_table(index="round", columns="client_id", values="value")
    assert table.loc[1, "alice"] == 1.0 and table.loc[2, str(big)] == 2.1
    assert table.shape == (2, 2)


def test_index_values_that_are_not_int64(tmp_path: Path) -> None:
    """Whole floats and numeric strings index; other values and ints past int64 give <NA>."""
    df = metrics_of(
        tmp_path,
        line("a", {"epoch": 3.0, "step": "12", "round": 2**70, "x": 1}),
        line("b", {"epoch": 1.5, "step": "abc", "round": True, "phase": 3, "x": 1}),
    )
    assert df["epoch"].tolist()[0] == 3 and df["step"].tolist()[0] == 12
    assert df["round"].isna().all() and df["phase"].isna().all()
    assert df["epoch"].iloc[1] is pd.NA and df["step"].iloc[1] is pd.NA


def test_data_that_is_not_an_object(tmp_path: Path) -> None:
    """A number as data is the metric 'value'; a list is walked; a string is nothing."""
    df = metrics_of(tmp_path, line("custom", 0.5), line("custom", [1, 2]), line("custom", "text"))
    assert rows(df) == [("value", 0.5), ("0", 1.0), ("1", 2.0)]


def test_non_finite_values_are_kept(tmp_path: Path) -> None:
    """NaN and +-inf are written as strings and come back as floats, in both tables."""
    path = write_run(
        tmp_path / "nf.jsonl",
        [
            line(
                "epoch_end",
                {
                    "epoch": 0,
                    "phase": "train",
                    "metrics": {"loss": math.nan, "a": math.inf, "b": -math.inf, "c": "NaNx"},
                },
            )
        ],
    )
    assert b'"NaN"' in path.read_bytes()
    df = read_metrics(path)
    assert df["metric"].tolist() == ["loss", "a", "b"]
    values = df["value"].tolist()
    assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf
    data = read_messages(path)["data"].iloc[0]["metrics"]
    assert math.isnan(data["loss"]) and data["a"] == math.inf and data["b"] == -math.inf
    assert data["c"] == "NaNx"


# --------------------------------------------------------------------------- bad lines


def test_torn_last_line_is_skipped_with_one_warning(tmp_path: Path) -> None:
    """A last line without its newline is not a message; one warning per call says so."""
    path = write_run(
        tmp_path / "torn.jsonl",
        [
            line("epoch_end", {"epoch": 0, "phase": "train", "metrics": {"loss": 1.0}}),
            line("epoch_end", {"epoch": 1, "phase": "train", "metrics": {"loss": 0.5}})[:-20],
        ],
    )
    with pytest.warns(SkippedLinesWarning, match="1 torn last line") as caught:
        df = read_metrics(path)
    assert len(caught) == 1
    assert rows(df) == [("loss", 1.0)]


def test_malformed_lines_are_counted_in_seq(tmp_path: Path) -> None:
    """Malformed lines keep their seq, so seq is the tailer's line number; one warning in all."""
    lines = [
        line("epoch_end", {"epoch": 0, "metrics": {"loss": 1.0}}),
        b"not json\n",
        b"[1, 2]\n",
        b'{"type": 5, "data": {"loss": 2}}\n',
        b"{}\n",
        line("epoch_end", {"epoch": 1, "metrics": {"loss": 0.5}}),
    ]
    path = write_run(tmp_path / "bad.jsonl", lines)
    with pytest.warns(SkippedLinesWarning, match="4 malformed lines") as caught:
        df = read_metrics(path)
    assert len(caught) == 1
    assert df["seq"].tolist() == [0, 5]
    with pytest.warns(SkippedLinesWarning):
        assert read_messages(path)["seq"].tolist() == [0, 5]


def test_over_long_line_is_skipped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line over the line limit is skipped without being buffered whole, and still takes a seq."""
    monkeypatch.setattr(source, "BLOCK_BYTES", 4096)
    huge = b'{"type":"x","data":{"pad":"' + b"y" * (1 << 20) + b'"}}\n'
    path = write_run(
        tmp_path / "long.jsonl",
        [line("a", {"v": 1}), huge, line("a", {"v": 2})],
    )
    with pytest.warns(SkippedLinesWarning, match="1 malformed line"):
        df = read_metrics(path)
    assert df["seq"].tolist() == [0, 2]


def test_lines_straddling_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading in tiny blocks gives the same table as reading at once."""
    path = mixed_run(tmp_path / "run.jsonl")
    whole = read_metrics(path)
    monkeypatch.setattr(source, "BLOCK_BYTES", 7)
    pd.testing.assert_frame_equal(read_metrics(path), whole)
    assert len(read_messages(path)) == len(path.read_bytes().split(b"\n")) - 1


def test_unparsable_timestamps_are_nat(tmp_path: Path) -> None:
    """A missing or unparsable timestamp gives NaT; nanosecond and offset forms are parsed."""
    path = write_run(
        tmp_path / "ts.jsonl",
        [
            b'{"type":"a","timestamp":"yesterday","data":{"x":1}}\n',
            b'{"type":"a","data":{"x":2}}\n',
            b'{"type":"a","timestamp":"2025-10-22T13:10:16.123456789+02:00","data":{"x":3}}\n',
            b'{"type":"a","timestamp":12,"data":{"x":4}}\n',
        ],
    )
    stamps = read_metrics(path)["timestamp"].tolist()
    assert stamps[0] is pd.NaT and stamps[1] is pd.NaT and stamps[3] is pd.NaT
    assert stamps[2] == pd.Timestamp("2025-10-22T11:10:16.123456Z")


# --------------------------------------------------------------------------- sources


def test_directory_of_runs(tmp_path: Path) -> None:
    """A directory gives every *.jsonl directly in it, sorted; other names are ignored with a warning."""
    mixed_run(tmp_path / "b-run.jsonl")
    mixed_run(tmp_path / "a-run.jsonl")
    mixed_run(tmp_path / "sub" / "c-run.jsonl")
    (tmp_path / "notes.txt").write_text("x")
    mixed_run(tmp_path / "bad name.jsonl")
    with pytest.warns(SkippedLinesWarning, match="bad name.jsonl"):
        df = read_metrics(tmp_path)
    assert list(dict.fromkeys(df["experiment_id"])) == ["a-run", "b-run"]
    assert (df.groupby("experiment_id")["seq"].is_monotonic_increasing).all()


def test_list_of_sources(tmp_path: Path) -> None:
    """A list mixes files and directories, in the order given."""
    one = mixed_run(tmp_path / "one.jsonl")
    mixed_run(tmp_path / "dir" / "two.jsonl")
    mixed_run(tmp_path / "dir" / "three.jsonl")
    df = read_metrics([tmp_path / "dir", str(one)])
    assert list(dict.fromkeys(df["experiment_id"])) == ["three", "two", "one"]
    assert list(dict.fromkeys(read_messages([one])["experiment_id"])) == ["one"]


def test_missing_source_raises(tmp_path: Path) -> None:
    """A path that does not exist raises FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        read_metrics(tmp_path / "nope.jsonl")
    with pytest.raises(TypeError):
        read_messages(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- property


def reference_rows(data: Any) -> list[tuple[str, float]]:
    """The naming rules, written plainly: what read_metrics must give for one message's data."""
    out: list[tuple[str, float]] = []

    def leaf(path: str, value: Any) -> None:
        if path in INDEX_KEYS or isinstance(value, bool) or value is None:
            return
        if isinstance(value, (int, float)):
            out.append((path, float(value)))
        elif isinstance(value, str) and value in NON_FINITE:
            out.append((path, NON_FINITE[value]))

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}{key}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{prefix}{i}.")
        else:
            leaf(prefix[:-1], value)

    if isinstance(data, dict):
        for key, value in data.items():
            if key == "metrics" and isinstance(value, dict):
                walk(value, "")
            else:
                walk(value, f"{key}.")
    elif isinstance(data, list):
        walk(data, "")
    elif data is not None:
        leaf("value", data)
    return out


KEYS = st.sampled_from(
    [
        "loss",
        "acc",
        "metrics",
        "epoch",
        "step",
        "round",
        "client_id",
        "total_rounds",
        "fit_metrics",
        "x",
    ]
)
LEAVES = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "text", ""]),
    st.booleans(),
    st.none(),
)
VALUES = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(KEYS, children, max_size=4)
    ),
    max_leaves=12,
)


def same(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    return len(a) == len(b) and all(
        x[0] == y[0] and (x[1] == y[1] or (math.isnan(x[1]) and math.isnan(y[1])))
        for x, y in zip(a, b, strict=True)
    )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    datas=st.lists(
        st.one_of(st.dictionaries(KEYS, VALUES, max_size=6), VALUES), min_size=1, max_size=5
    )
)
def test_rows_follow_the_naming_rules(tmp_path: Path, datas: list[Any]) -> None:
    """For any data, read_metrics gives exactly the rows the plainly written rules give, per message.

    A message's rows come in the order in which their names first gave a row in the run.
    """
    path = write_run(tmp_path / "prop.jsonl", [line("custom", data) for data in datas])
    df = read_metrics(path)
    first_seen: dict[str, int] = {}
    for seq, data in enumerate(datas):
        recorded = read_messages(path)["data"].iloc[seq]
        in_key_order = reference_rows(recorded)
        for name, _ in in_key_order:
            first_seen.setdefault(name, len(first_seen))
        expected = sorted(in_key_order, key=lambda row: first_seen[row[0]])
        got = rows(df[df["seq"] == seq])
        assert same(got, expected), (data, got, expected)


SHAPED = st.fixed_dictionaries(
    {
        "epoch": st.one_of(st.none(), st.integers(0, 3), st.just(2.0), st.just("1")),
        "phase": st.one_of(st.none(), st.sampled_from(["train", "val"]), st.just(5)),
        "loss": st.one_of(
            st.floats(allow_nan=False), st.integers(), st.none(), st.just("NaN"), st.booleans()
        ),
        "client_id": st.one_of(st.none(), st.just("c1"), st.integers(0, 2**64 - 1)),
        "metrics": st.one_of(
            st.fixed_dictionaries(
                {
                    "acc": st.one_of(st.floats(0, 1), st.none(), st.just("-Infinity")),
                    "step": st.one_of(st.integers(0, 9), st.none()),
                }
            ),
            st.none(),
            st.just(1.5),
        ),
    }
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(datas=st.lists(SHAPED, min_size=2, max_size=12))
def test_compiled_plans_match_the_general_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, datas: list[dict[str, Any]]
) -> None:
    """Messages of one shape whose value types vary give the same table with and without plans."""
    import replay.tables as tables

    path = write_run(tmp_path / "shapes.jsonl", [line("epoch_end", data) for data in datas])
    planned = read_metrics(path)
    with monkeypatch.context() as patch:
        patch.setattr(tables, "MAX_PLANS", 0)
        general = read_metrics(path)
    pd.testing.assert_frame_equal(planned, general)


def test_federated_sample_pivots_per_client() -> None:
    """The committed federated sample gives a full rounds x clients loss table from local_epoch rows."""
    path = SAMPLE_RUNS / "federated-digits.jsonl"
    if not path.exists():
        pytest.skip("no federated sample committed yet")
    df = read_metrics(path)
    local = df[(df["type"] == "local_epoch") & (df["metric"] == "loss")]
    assert len(local) > 0
    assert local["client_id"].notna().all() and local["round"].notna().all()
    table = local.pivot_table(index="round", columns="client_id", values="value")
    assert table.shape[0] >= 2 and table.shape[1] >= 2
    assert not table.isna().any().any()
    assert all(c.isdigit() for c in table.columns)  # Flower node ids, as decimal text


def test_blank_lines_are_skipped_silently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blank lines (empty or whitespace) are no lines: no warning, no seq, in any block size."""
    lines = [
        b"\n",
        line("epoch_end", {"epoch": 0, "metrics": {"loss": 1.0}}),
        b"\n",
        b" \t\r\n",
        line("epoch_end", {"epoch": 1, "metrics": {"loss": 0.5}}),
        b"\n",
    ]
    path = write_run(tmp_path / "blank.jsonl", lines)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for block in (1 << 20, 3):
            monkeypatch.setattr(source, "BLOCK_BYTES", block)
            assert read_metrics(path)["seq"].tolist() == [0, 1]
            assert read_messages(path)["seq"].tolist() == [0, 1]


def test_attempt_counts_the_training_starts_of_a_file(tmp_path: Path) -> None:
    """attempt is 0, then +1 at every later training_start of the same file, in both tables."""
    lines = [
        line("hparams", {"lr": 0.1}),
        line("training_start", {"max_epochs": 2}),
        line("epoch_end", {"epoch": 0, "phase": "train", "metrics": {"loss": 1.0}}),
        line("training_start", {"max_epochs": 2}),  # resumed from a checkpoint
        line("epoch_end", {"epoch": 0, "phase": "train", "metrics": {"loss": 0.9}}),
        line("status", {"status": "running", "message": ""}),
        line("training_start", {"max_epochs": 2}),
        line("epoch_end", {"epoch": 0, "phase": "train", "metrics": {"loss": 0.8}}),
    ]
    write_run(tmp_path / "runs" / "a.jsonl", lines)
    write_run(tmp_path / "runs" / "b.jsonl", lines[2:])  # attempts are counted per file
    messages = read_messages(tmp_path / "runs")
    assert messages["attempt"].dtype == pd.Int64Dtype()
    by_file = messages.groupby("experiment_id")["attempt"].apply(list).to_dict()
    # b's first training_start is its file's first: no new attempt there.
    assert by_file == {"a": [0, 0, 0, 1, 1, 1, 2, 2], "b": [0, 0, 0, 0, 1, 1]}
    metrics = read_metrics(tmp_path / "runs")
    loss = metrics[metrics["metric"] == "loss"]
    assert list(zip(loss["experiment_id"], loss["attempt"], loss["value"], strict=True)) == [
        ("a", 0, 1.0),
        ("a", 1, 0.9),
        ("a", 2, 0.8),
        ("b", 0, 1.0),
        ("b", 0, 0.9),
        ("b", 1, 0.8),
    ]
    # In blocks of a few lines (pyarrow's and the careful path's), the attempt carries over.
    import replay._jsonparse

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(source, "BLOCK_BYTES", 64)
        patch.setattr(replay._jsonparse, "FAST_BLOCK_BYTES", 300)
        pd.testing.assert_frame_equal(read_metrics(tmp_path / "runs"), metrics)


def test_read_metrics_in_a_fresh_process_loads_pandas_while_it_reads(tmp_path: Path) -> None:
    """Where pandas is not imported yet, read_metrics imports it on a thread while pyarrow
    parses (a tenth of a second sooner on 1M lines) and still returns the same frame."""
    run = mixed_run(tmp_path / "run-a.jsonl", epochs=30)
    code = (
        "import sys, threading\n"
        "started = []\n"
        "real_start = threading.Thread.start\n"
        "def start(self):\n"
        "    started.append(self.name)\n"
        "    real_start(self)\n"
        "threading.Thread.start = start\n"
        "import replay\n"
        "assert 'pandas' not in sys.modules\n"
        "frame = replay.read_metrics(sys.argv[1])\n"
        "frame.to_pickle(sys.argv[2])\n"
        "print(started.count('runtail-import-pandas'))\n"
    )
    assert fresh_python(code, run, tmp_path / "frame.pkl").strip() == "1"
    pd.testing.assert_frame_equal(pd.read_pickle(tmp_path / "frame.pkl"), read_metrics(run))
    # Here pandas is imported already: no thread.
    with pytest.MonkeyPatch.context() as patch:
        names: list[str] = []
        patch.setattr("threading.Thread.start", lambda self: names.append(self.name))
        import replay.tables as tables

        tables._import_meanwhile("pandas")
    assert names == []
