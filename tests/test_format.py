"""The log format: encoding, decoding, ids, timestamps, line splitting and wire frames."""

from __future__ import annotations

import itertools
import json
import math
import re
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder import format as fmt
from recorder.format import (
    MAX_LINE_BYTES,
    LineBuffer,
    MalformedLine,
    decode_line,
    encode_line,
    encode_message,
    format_timestamp,
    is_valid_experiment_id,
    parse_timestamp,
    restore_non_finite,
    split_lines,
    status_of,
    to_python,
    utc_timestamp,
    validate_experiment_id,
    wire_payload,
)


def strict_loads(line: bytes) -> Any:
    """Parse with the stdlib, refusing NaN/Infinity tokens that are not JSON."""

    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard token {token}")

    return json.loads(line.decode("utf-8"), parse_constant=refuse)


def assert_one_line(line: bytes) -> None:
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert b"\r" not in line.replace(b"\\r", b"")


# Any JSON-able value: unicode text (no lone surrogates), 64-bit integers,
# every float including NaN and the infinities, nested lists and objects.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=30,
)


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def expected_after_round_trip(value: Any) -> Any:
    """What a value reads back as: the strings "NaN"/"Infinity"/"-Infinity" become floats too."""
    return restore_non_finite(value)


@settings(max_examples=300, deadline=None)
@given(data=json_values, kind=st.text(min_size=1))
def test_encode_decode_round_trips_any_json_value(data: Any, kind: str) -> None:
    """encode_message then decode_line gives back the type and data (non-finite floats restored)."""
    line = encode_message(kind, data, timestamp="2025-10-22T11:10:16.371Z")
    assert_one_line(line)
    strict_loads(line)
    message = decode_line(line)
    assert message["type"] == kind
    assert message["timestamp"] == "2025-10-22T11:10:16.371Z"
    got = restore_non_finite(message["data"])
    want = expected_after_round_trip({} if data is None else data)
    assert same(got, want), (got, want)


@settings(max_examples=200, deadline=None)
@given(data=json_values)
def test_every_encoded_line_is_strict_json_on_one_line(data: Any) -> None:
    """Each line parses with the stdlib refusing NaN tokens, and holds exactly one newline, at the end."""
    line = encode_line({"type": "x", "timestamp": utc_timestamp(), "data": data})
    assert_one_line(line)
    parsed = strict_loads(line)
    assert parsed["type"] == "x"
    assert decode_line(line[:-1]) == decode_line(line)


def test_non_finite_floats_are_written_as_strings() -> None:
    """NaN and the infinities become "NaN", "Infinity", "-Infinity", and None stays null."""
    line = encode_message(
        "epoch_end", {"a": math.nan, "b": [math.inf, -math.inf], "c": None, "d": 1.5}, timestamp="t"
    )
    assert strict_loads(line)["data"] == {
        "a": "NaN",
        "b": ["Infinity", "-Infinity"],
        "c": None,
        "d": 1.5,
    }


def test_none_and_the_word_null_stay_on_the_fast_path() -> None:
    """A None value or "null" text is kept as is (not mistaken for a non-finite float)."""
    line = encode_message("x", {"recall": None, "name": "null", "nullity": 1}, timestamp="t")
    assert strict_loads(line)["data"] == {"recall": None, "name": "null", "nullity": 1}


def test_tensors_and_numpy_values_become_numbers() -> None:
    """0-d tensors and numpy scalars are written as Python numbers, NaN tensors as "NaN"."""
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    data = {
        "t": torch.tensor(0.5),
        "i": torch.tensor(3),
        "nan": torch.tensor(float("nan")),
        "np": np.float32(0.25),
        "np64": np.float64("inf"),
        "arr": np.arange(3),
    }
    parsed = strict_loads(encode_message("x", data, timestamp="t"))["data"]
    assert parsed == {
        "t": 0.5,
        "i": 3,
        "nan": "NaN",
        "np": 0.25,
        "np64": "Infinity",
        "arr": [0, 1, 2],
    }
    assert to_python(torch.tensor(2.0)) == 2.0
    assert to_python("text") == "text"


def test_unserialisable_values_become_str_with_one_warning() -> None:
    """An object JSON cannot hold is written as its str(), warning once per type."""

    class Odd:
        def __str__(self) -> str:
            return "odd!"

    with pytest.warns(RuntimeWarning, match="Odd"):
        line = encode_message("x", {"v": Odd()}, timestamp="t")
    assert strict_loads(line)["data"] == {"v": "odd!"}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode_message("x", {"v": Odd()}, timestamp="t")  # no second warning


def test_awkward_keys_and_values_are_handled() -> None:
    """Integer keys, huge integers, lone surrogates, sets and Decimals never break a line."""
    data = {1: "a", "big": 2**80, "s\ud800": "x\udfff", "set": {3}, "dec": Decimal("1.5")}
    with pytest.warns(RuntimeWarning, match="Decimal"):
        line = encode_message("x", data, timestamp="t")
    assert_one_line(line)
    parsed = strict_loads(line)["data"]
    assert parsed["1"] == "a"
    assert parsed["big"] == 2**80
    assert parsed["set"] == [3]
    assert parsed["s?"] == "x?"
    keys = strict_loads(encode_message("x", {None: 1, False: 2, 2.5: 3}, timestamp="t"))["data"]
    assert keys == {"null": 1, "false": 2, "2.5": 3}  # as orjson's OPT_NON_STR_KEYS writes them
    assert parsed["dec"] == "1.5"


def test_deep_nesting_still_gives_one_valid_line() -> None:
    """Nesting past orjson's limit falls back to the careful path instead of raising."""
    value: Any = 1.0
    for _ in range(400):
        value = [value]
    line = encode_message("x", value, timestamp="t")
    assert_one_line(line)
    strict_loads(line)


def test_extra_keys_never_replace_the_envelope() -> None:
    """encode_message's extra adds top-level keys but cannot override type, timestamp or data."""
    message = decode_line(
        encode_message("x", {"a": 1}, timestamp="t", extra={"type": "y", "node": "n1", "data": 0})
    )
    assert message == {"type": "x", "timestamp": "t", "data": {"a": 1}, "node": "n1"}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"data": {}}', "no string 'type'"),
        (b'{"type": 3}', "no string 'type'"),
        (b'{"type": "x"', "not JSON"),
    ],
)
def test_decode_line_rejects_malformed_lines(line: bytes, reason: str) -> None:
    """decode_line raises MalformedLine naming what is wrong."""
    with pytest.raises(MalformedLine, match=re.escape(reason)):
        decode_line(line)


def test_decode_line_rejects_lines_over_the_limit() -> None:
    """A line longer than MAX_LINE_BYTES is malformed, even if it is valid JSON."""
    line = b'{"type":"x","data":"' + b"a" * MAX_LINE_BYTES + b'"}'
    with pytest.raises(MalformedLine, match="over the limit"):
        decode_line(line)
    assert decode_line(line, max_bytes=len(line))["type"] == "x"


@pytest.mark.parametrize(
    "bad", ["../x", "a/b", "", "a" * 129, ".hidden", "-x", "a b", "é", "a\\b", "x\n", None, 3]
)
def test_invalid_experiment_ids_are_refused(bad: Any) -> None:
    """validate_experiment_id raises ValueError naming the id; is_valid_experiment_id says False."""
    assert not is_valid_experiment_id(bad)
    with pytest.raises(ValueError, match="invalid experiment id"):
        validate_experiment_id(bad)


@pytest.mark.parametrize(
    "good", ["a", "A" * 128, "run-20261126-001530-3f9c2a", "x.rank1", "0_a-b.c"]
)
def test_valid_experiment_ids_pass_unchanged(good: str) -> None:
    """Letters, digits, '.', '_' and '-' up to 128 characters, starting alphanumerically."""
    assert validate_experiment_id(good) == good


def test_timestamps_are_rfc3339_utc_with_z() -> None:
    """utc_timestamp and format_timestamp write RFC 3339 UTC ending in Z that parses back."""
    stamp = utc_timestamp()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    parsed = parse_timestamp(stamp)
    assert parsed.tzinfo is not None
    assert abs((datetime.now(timezone.utc) - parsed).total_seconds()) < 60
    assert format_timestamp(0) == "1970-01-01T00:00:00.000000Z"
    assert format_timestamp(1.9999999) == "1970-01-01T00:00:02.000000Z"
    assert format_timestamp(1761131416.371) == "2025-10-22T11:10:16.371000Z"
    assert parse_timestamp("2025-10-22T11:10:16.371Z") == datetime(
        2025, 10, 22, 11, 10, 16, 371000, tzinfo=timezone.utc
    )
    assert parse_timestamp("2025-10-22T13:10:16+02:00").hour == 11


def test_timestamps_follow_the_clock_across_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached second is replaced when the clock moves on (and back)."""
    for now_ns, want in [
        (1761131416_250_999_000, "2025-10-22T11:10:16.250Z"),
        (1761131416_250_999_999, "2025-10-22T11:10:16.250Z"),
        (1761131417_005_000_000, "2025-10-22T11:10:17.005Z"),
        (1761131416_750_000_000, "2025-10-22T11:10:16.750Z"),
    ]:
        monkeypatch.setattr(fmt, "_time_ns", lambda now_ns=now_ns: now_ns)
        assert utc_timestamp() == want
        assert decode_line(encode_message("x"))["timestamp"] == want


def test_split_lines_keeps_the_partial_tail() -> None:
    """Complete lines come back without newlines; an unterminated tail is the rest."""
    assert split_lines(b"") == ([], b"")
    assert split_lines(b'{"a"') == ([], b'{"a"')
    assert split_lines(b"a\nb\nc") == ([b"a", b"b"], b"c")
    assert split_lines(b"a\n\nb\n") == ([b"a", b"b"], b"")


_LINE_PARTS = st.lists(
    st.sampled_from([b"{}", b" ", b"\t", b"x" * 7, b"y" * 13, b"\n", b"\n", b"\n"]), max_size=40
)


@settings(max_examples=300, deadline=None)
@given(parts=_LINE_PARTS, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_line_buffer_gives_the_same_lines_however_the_bytes_arrive(
    parts: list[bytes], cuts: list[int]
) -> None:
    """LineBuffer: complete lines, over-long ones and the torn tail do not depend on the reads.

    Nor on whether the bytes are fed (the tailer) or read in place (replay).

    An over-long line that arrives whole comes back whole (the decoder refuses
    it); one that grows past the limit comes back as ``None``: both take a seq.
    """
    data = b"".join(parts)

    def fed(pieces: list[bytes], *, read: bool = False) -> tuple[list[bytes | None], int, bool]:
        buffer = LineBuffer(max_line_bytes=10)
        lines: list[bytes | None] = []
        offset = 0
        for piece in pieces:
            if read:  # the way LineBlocks reads a file: into the buffer, in place

                def readinto(view: memoryview, piece: bytes = piece) -> int:
                    view[: len(piece)] = piece
                    return len(piece)

                got, dropped, over_long, chunk = buffer.read(readinto, len(piece))
                assert got == len(piece) and isinstance(chunk, bytearray)
                chunk = bytes(chunk)
            else:
                dropped, over_long, chunk = buffer.feed(piece)
            lines += [None] * over_long + split_lines(chunk)[0]
            offset += dropped + len(chunk)
        return [None if line and len(line) > 10 else line for line in lines], offset, buffer.torn

    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    whole = data.rfind(b"\n") + 1
    tail = data[whole:]
    want = [
        None if len(line) > 10 else line for line in data[:whole].split(b"\n")[:-1] if line.strip()
    ]
    assert fed(pieces) == fed([data]) == (want, whole, bool(tail.strip()))
    assert fed(pieces, read=True) == fed([data], read=True) == fed(pieces)


def test_blank_lines_are_no_lines() -> None:
    """split_lines and iter_messages leave out empty and whitespace-only lines, unnumbered."""
    assert split_lines(b"\n a\n\n \t\r\nb\n\n") == ([b" a", b"b"], b"")
    assert fmt.is_blank_line(b"") and fmt.is_blank_line(b" \t\r")
    assert not fmt.is_blank_line(b" {}")
    lines = [b"", b'{"type":"a"}', b"  ", b"bad", b'{"type":"b"}']
    numbered = [(seq, m and m["type"]) for seq, m in fmt.iter_messages(lines)]
    assert numbered == [(0, "a"), (1, None), (2, "b")]


def test_wire_payload_appends_id_and_seq() -> None:
    """The frame is the recorded object plus experiment_id and seq, which win over recorded keys."""
    line = encode_message("x", {"a": 1}, timestamp="t", extra={"seq": 99})
    frame = wire_payload(line, "exp-1", 7)
    parsed = json.loads(frame)
    assert parsed["experiment_id"] == "exp-1"
    assert parsed["seq"] == 7
    assert parsed["data"] == {"a": 1}
    assert json.loads(wire_payload(b"{}\n", "e", 0)) == {"experiment_id": "e", "seq": 0}


@pytest.mark.parametrize(
    ("message", "status"),
    [
        ({"type": "training_end", "data": {}}, "completed"),
        ({"type": "error", "data": {}}, "failed"),
        ({"type": "status", "data": {"status": "running"}}, "running"),
        ({"type": "status", "data": {"status": "completed"}}, "completed"),
        ({"type": "status", "data": {"status": "failed"}}, "failed"),
        ({"type": "status", "data": "odd"}, None),
        ({"type": "training_start", "data": {}}, "running"),
        ({"type": "epoch_end", "data": {}}, None),
    ],
)
def test_status_of(message: dict[str, Any], status: str | None) -> None:
    """status_of reads the run state a message announces."""
    assert status_of(message) == status


def test_restore_non_finite_is_deep() -> None:
    """restore_non_finite turns the three strings back into floats inside lists and dicts."""
    restored = restore_non_finite({"a": ["NaN", "Infinity", {"b": "-Infinity"}], "c": "nan"})
    assert math.isnan(restored["a"][0])
    assert restored["a"][1] == math.inf
    assert restored["a"][2]["b"] == -math.inf
    assert restored["c"] == "nan"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jsonl", "a"),
        ("run-1_b.jsonl", "run-1_b"),
        ("a.rank3.jsonl", "a.rank3"),
        ("a.b.jsonl", "a.b"),
        (".jsonl", None),
        (".hidden.jsonl", None),
        ("a.json", None),
        ("a.JSONL", None),
        ("a.jsonl.tmp", None),
        ("bad name.jsonl", None),
        ("x" * 129 + ".jsonl", None),
    ],
)
def test_experiment_id_of_names_runs_only(name: str, expected: str | None) -> None:
    """A run file is ``<valid id>.jsonl``; every other name gives None."""
    assert fmt.experiment_id_of(name) == expected


@pytest.mark.parametrize(
    ("experiment_id", "name"),
    [("a", "a.jsonl"), ("a.rank3", "a.rank3.jsonl"), ("a.b", "a.b.jsonl")],
)
def test_run_file_name_and_named_file_id_are_inverses(experiment_id: str, name: str) -> None:
    """A run's file is ``<id>.jsonl``, and that file names the run ``<id>``."""
    assert fmt.run_file_name(experiment_id) == name
    assert fmt.named_file_id(name) == experiment_id == fmt.experiment_id_of(name)


def test_a_file_named_explicitly_keeps_a_name_without_jsonl() -> None:
    """``tailer replay a.log``: an explicitly named file is read whatever it is called."""
    assert fmt.named_file_id("a.log") == "a.log"
    assert fmt.experiment_id_of("a.log") is None  # in a directory, a.log is no run
