"""replay._arrow: the metrics table parsed by pyarrow equals the careful path's, row for row."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder.format import MAX_LINE_BYTES, encode_message
from replay._arrow import fast_metric_batches
from replay._source import Run, SkipCounts
from replay.tables import MetricsBuilder, metric_batches, metrics_schema
from tests._replay_helpers import SAMPLE_RUNS, fresh_python, line, mixed_run, write_run


def careful_table(path: Path) -> tuple[pa.Table, SkipCounts]:
    skips = SkipCounts()
    run = Run.of(path)
    batches = list(metric_batches(run, skips, careful=True))
    return pa.Table.from_batches(batches, schema=metrics_schema()), skips


def fast_table(
    path: Path, *, block_bytes: int = 8 << 20, dictionary_text: bool = False
) -> tuple[pa.Table, SkipCounts, dict]:
    """The fast path's table; with ``dictionary_text`` built as the export has it, then decoded."""
    skips = SkipCounts()
    taken: dict[str, int] = {}
    run = Run.of(path)
    schema = metrics_schema(dictionary_text=dictionary_text)
    builder = MetricsBuilder(run.experiment_id, run.rank, schema)
    batches = list(fast_metric_batches(run, builder, skips, block_bytes=block_bytes, taken=taken))
    table = pa.Table.from_batches(batches, schema=schema)
    return table.cast(metrics_schema()), skips, taken


def assert_same_rows(fast: pa.Table, careful: pa.Table) -> None:
    """Equal column by column, row by row (NaN equal to NaN, -0.0 told from 0.0)."""
    assert fast.schema == careful.schema
    assert fast.num_rows == careful.num_rows
    for name in careful.column_names:
        got, want = fast.column(name).to_pylist(), careful.column(name).to_pylist()
        if name == "value":
            got = [(math.copysign(1, v), "nan") if math.isnan(v) else v for v in got]
            want = [(math.copysign(1, v), "nan") if math.isnan(v) else v for v in want]
            got = [(v, math.copysign(1, v)) if not isinstance(v, tuple) else v for v in got]
            want = [(v, math.copysign(1, v)) if not isinstance(v, tuple) else v for v in want]
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert a == b, f"{name} differs at row {i}: {a!r} (arrow) != {b!r} (careful)"


def assert_equal_paths(path: Path, *, block_bytes: int = 8 << 20) -> dict:
    """The fast path, with text as strings (read_metrics) and as dictionaries (export), equals
    the careful one."""
    careful, careful_skips = careful_table(path)
    for dictionary_text in (False, True):
        fast, fast_skips, taken = fast_table(
            path, block_bytes=block_bytes, dictionary_text=dictionary_text
        )
        assert_same_rows(fast, careful)
        assert (fast_skips.malformed, fast_skips.torn) == (
            careful_skips.malformed,
            careful_skips.torn,
        )
    return taken


# --------------------------------------------------------------------------- real files


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLE_RUNS.glob("*.jsonl")))
def test_sample_runs_read_by_arrow_equal_the_careful_path(name: str) -> None:
    """Each committed sample run is read by pyarrow, and gives the careful path's rows."""
    taken = assert_equal_paths(SAMPLE_RUNS / name)
    assert taken == {"arrow": 1}


def mixed_log(path: Path, lines: int, *, seed: int = 7) -> Path:
    """A federated-style log like the benchmark's: optional keys, nulls, nested dicts, client ids."""
    rng = random.Random(seed)
    out = [line("status", {"status": "running", "message": "Training started"})]
    step = 0
    epoch = 0
    while len(out) < lines:
        rnd = len(out) // 50 + 1
        for client in range(3):
            for batch in range(6):
                data: dict[str, Any] = {
                    "step": step,
                    "batch_idx": batch,
                    "loss": round(rng.random() * 2, 6),
                    "accuracy": rng.random(),
                    "recall": rng.random() if rng.random() < 0.5 else None,
                    "f1": rng.random() if rng.random() < 0.5 else None,
                    "epoch": epoch,
                }
                if client < 2:
                    data["client_id"] = client
                    data["round_num"] = rnd
                out.append(line("batch_metrics", data, at=step / 100))
                step += 1
            for phase in ("train", "val"):
                metrics = {"loss": rng.random(), "accuracy": rng.random()}
                for key in ("precision", "auc", "top5_accuracy"):
                    if rng.random() < 0.5:
                        metrics[key] = rng.random()
                out.append(line("epoch_end", {"epoch": epoch, "phase": phase, "metrics": metrics}))
            epoch += 1
        out.append(
            line(
                "round_end",
                {
                    "round": rnd,
                    "total_rounds": 100,
                    "fit_metrics": {"loss": rng.random(), "accuracy": rng.random()},
                    "eval_metrics": {"loss": rng.random(), "accuracy": 1, "f1": "NaN"},
                },
            )
        )
    return write_run(path, out[:lines])


def test_mixed_log_is_read_by_arrow_block_by_block(tmp_path: Path) -> None:
    """A mixed training log, in many small blocks, is read by pyarrow and equals the careful path."""
    path = mixed_log(tmp_path / "mixed.jsonl", 3000)
    taken = assert_equal_paths(path, block_bytes=32 << 10)
    assert taken.get("careful", 0) == 0 and taken["arrow"] > 10


def test_mixed_run_helper_equals_careful(tmp_path: Path) -> None:
    """The replay tests' mixed run (every message kind the naming rules care about) agrees."""
    assert_equal_paths(mixed_run(tmp_path / "run.jsonl", epochs=4, rounds=3))


def test_the_first_index_key_present_decides_wherever_it_is(tmp_path: Path) -> None:
    """epoch, local_epoch, round and round_num in data and in data.metrics, in every mix:
    pyarrow reads the block, and the first key present (a null is none) decides, as the
    careful walk does, even when its value is no index."""
    datas = [
        {"local_epoch": 1, "metrics": {"epoch": 2, "loss": 1}},
        {"metrics": {"epoch": 3, "local_epoch": 4, "loss": 1}},
        {"metrics": {"local_epoch": 5, "loss": 1}},
        {"epoch": 6, "local_epoch": 7, "metrics": {"epoch": 8, "local_epoch": 9, "loss": 1}},
        {"epoch": None, "local_epoch": 10, "metrics": {"epoch": 11, "loss": 1}},
        {"local_epoch": None, "metrics": {"epoch": None, "local_epoch": 12, "loss": 1}},
        {"epoch": 1.5, "local_epoch": 13, "loss": 1},
        {"round_num": 2, "metrics": {"round": 3, "round_num": 4, "loss": 1}},
        {"metrics": {"round_num": 5, "loss": 1}},
        {"loss": 1},
    ]
    path = write_run(tmp_path / "run.jsonl", [line("m", data) for data in datas * 3])
    assert assert_equal_paths(path) == {"arrow": 1}
    careful, _ = careful_table(path)
    assert careful.column("epoch").to_pylist()[:9] == [1, 3, 5, 6, 10, 12, None, None, None]


# --------------------------------------------------------------------------- hostile lines

GOOD = line("batch_metrics", {"step": 1, "loss": 0.5, "accuracy": 1, "epoch": 0})

#: Lines pyarrow reads otherwise than orjson (or not at all): each must send its block,
#: and only it, the careful way, and give the careful path's rows and skips.
HOSTILE = {
    "blank": b"\n",
    "spaces": b"   \t\n",
    "nan literal": b'{"type":"m","data":{"loss":NaN}}\n',
    "infinity literal": b'{"type":"m","data":{"loss":-Infinity}}\n',
    "nan literal outside data": b'{"type":"m","x":NaN,"data":{"loss":1}}\n',
    "invalid utf-8": b'{"type":"m","data":{"loss":1,"s":"\xff"}}\n',
    "byte order mark": b'\xef\xbb\xbf{"type":"m","data":{"loss":1}}\n',
    "two objects": b'{"type":"m","data":{"loss":1}} {"type":"m","data":{"loss":2}}\n',
    "not json": b"{not json\n",
    "array": b"[1, 2]\n",
    "no type": b'{"data":{"loss":1}}\n',
    "type not a string": b'{"type":3,"data":{"loss":1}}\n',
    "timestamp a number": b'{"type":"m","timestamp":5,"data":{"loss":1}}\n',
    "duplicate key": b'{"type":"m","data":{"loss":1,"loss":2}}\n',
    "deep": b'{"type":"m","data":' + b'{"a":' * 1100 + b"1" + b"}" * 1100 + b"}\n",
    "number then NaN string": b'{"type":"m","data":{"loss":"NaN"}}\n',
    "int past 2**53": b'{"type":"m","data":{"loss":9007199254740993,"step":9007199254740993}}\n',
    "int beyond uint64": b'{"type":"m","data":{"loss":123456789012345678901234567890}}\n',
    "client id beyond int64": b'{"type":"m","data":{"client_id":18446744073709551615,"x":1}}\n',
    "client id float": b'{"type":"m","data":{"client_id":1.5,"x":1}}\n',
    "client id object": b'{"type":"m","data":{"client_id":{"a":1},"x":1}}\n',
    "epoch as text": b'{"type":"m","data":{"epoch":"3","x":1}}\n',
    "epoch float": b'{"type":"m","data":{"epoch":2.0,"step":1e30,"x":1}}\n',
    "epoch not a number blocks local_epoch": b'{"type":"m","data":{"epoch":true,"local_epoch":4,"x":1}}\n',
    "phase a date": b'{"type":"m","data":{"phase":"2025-01-01","x":1}}\n',
    "list": b'{"type":"m","data":{"per_class":[0.1,0.2,"NaN"],"x":1}}\n',
    "data a number": b'{"type":"m","data":3.5}\n',
    "data a list": b'{"type":"m","data":[1,2]}\n',
    "loss twice": b'{"type":"m","data":{"loss":1,"metrics":{"loss":2}}}\n',
    "keys in another order": b'{"type":"m","data":{"accuracy":2,"loss":1,"epoch":0}}\n',
    "odd timestamp": b'{"type":"m","timestamp":"yesterday","data":{"loss":1}}\n',
    "timestamp with offset": b'{"type":"m","timestamp":"2025-10-22T12:00:00+01:00","data":{"x":1}}\n',
    "over the line limit": b'{"type":"m","data":{"s":"' + b"x" * (MAX_LINE_BYTES + 10) + b'"}}\n',
    "escaped key": b'{"type":"m","data":{"lo\\u0073s":1,"\\u00e9":2}}\n',
    "whitespace": b'{ "type" : "m" , "data" : { "loss" : 1 } }\r\n',
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_line_gives_the_careful_rows(tmp_path: Path, name: str) -> None:
    """A hostile line in the middle of a run: same rows, seqs and skip counts as the careful path."""
    lines = [GOOD] * 40 + [HOSTILE[name]] + [GOOD] * 40 + [b'{"type":"m","data":{"tail":1}']
    path = write_run(tmp_path / "run.jsonl", lines)
    taken = assert_equal_paths(path, block_bytes=1 << 10)
    assert taken.get("arrow", 0) >= 2  # the blocks away from the hostile line stay fast


# --------------------------------------------------------------------------- property

KEYS = st.sampled_from(
    ["loss", "acc", "metrics", "epoch", "step", "round", "local_epoch", "client_id", "phase", "x"]
)
LEAVES = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.integers(min_value=-5, max_value=5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-3, max_value=3).map(lambda f: float(round(f))),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "text", "", "train"]),
    st.booleans(),
    st.none(),
)
VALUES = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(KEYS, children, max_size=4)
    ),
    max_leaves=10,
)
SHAPES = st.sampled_from(
    [
        {"step": 1, "loss": 0.5, "acc": 0.1, "epoch": 0},
        {"epoch": 2, "phase": "val", "metrics": {"loss": 0.2, "acc": 0.9}},
        {"round": 3, "client_id": 7, "metrics": {"loss": 0.1}, "x": {"loss": 1.5, "acc": None}},
        {"acc": 1, "loss": 2},
    ]
)


def variant(shape: dict[str, Any], draw: Any) -> dict[str, Any]:
    return {key: draw(VALUES) if draw(st.booleans()) else value for key, value in shape.items()}


@st.composite
def messages(draw: Any) -> list[bytes]:
    out = []
    for _ in range(draw(st.integers(1, 30))):
        pick = draw(st.integers(0, 9))
        if pick < 5:
            data: Any = draw(SHAPES)
        elif pick < 8:
            data = variant(draw(SHAPES), draw)
        elif pick < 9:
            data = draw(st.one_of(st.dictionaries(KEYS, VALUES, max_size=6), VALUES))
        else:
            out.append(draw(st.sampled_from(sorted(HOSTILE.values(), key=len)[:-2])))
            continue
        kind = draw(st.sampled_from(["batch_metrics", "epoch_end", "custom", "training_start"]))
        out.append(encode_message(kind, data, timestamp="2025-10-22T11:10:16.000Z"))
    return out


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=messages(), block=st.sampled_from([200, 600, 8 << 20]))
def test_any_log_reads_the_same_both_ways(tmp_path: Path, lines: list[bytes], block: int) -> None:
    """For generated runs (shapes that vary, hostile lines among them), both paths agree."""
    path = write_run(tmp_path / "prop.jsonl", lines)
    assert_equal_paths(path, block_bytes=block)


def test_first_appearance_order_across_blocks(tmp_path: Path) -> None:
    """Names first seen together in a later block are ranked in that line's key order."""
    first = [line("m", {"b": 1})] * 30
    later = [line("m", {"d": 1, "c": 2, "b": 3, "a": json.loads("4")})] * 30
    path = write_run(tmp_path / "run.jsonl", first + later)
    taken = assert_equal_paths(path, block_bytes=512)
    assert taken.get("careful", 0) == 0
    fast, _, _ = fast_table(path, block_bytes=512)
    last = fast.slice(fast.num_rows - 4).column("metric").to_pylist()
    assert last == ["b", "d", "c", "a"]


def test_export_of_a_clean_run_does_not_import_pandas(tmp_path: Path) -> None:
    """tailer export never needs pandas (pyarrow's own conversions would import it: 0.3 CPU s)."""
    path = mixed_log(tmp_path / "mixed.jsonl", 500)
    code = (
        "import sys; from replay.export import export; "
        "export(sys.argv[1], sys.argv[2]); print('pandas' in sys.modules)"
    )
    assert fresh_python(code, path, tmp_path / "out.parquet").strip() == "False"


def test_a_child_holding_values_under_a_null_parent_gets_its_nulls() -> None:
    """Struct children are read as they are (pyarrow's JSON reader writes nulls under null
    objects); a struct made otherwise, with values under null parents, still gives nulls."""
    from replay._arrow import _child

    loss = pa.array([1.0, 2.0, 3.0])
    struct = pa.StructArray.from_arrays([loss], ["loss"], mask=pa.array([False, True, False]))
    assert struct.field(0).to_pylist() == [1.0, 2.0, 3.0]  # the raw child ignores the mask
    assert _child(struct, 0).to_pylist() == [1.0, None, 3.0]
    nulls_below = pa.StructArray.from_arrays(
        [pa.array([1.0, None, 3.0])], ["loss"], mask=pa.array([False, True, False])
    )
    assert _child(nulls_below, 0).to_pylist() == [1.0, None, 3.0]
