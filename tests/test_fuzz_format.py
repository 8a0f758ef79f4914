"""Hostile bytes against the line decoder, the wire frame and the tailer's file reader (hypothesis)."""

from __future__ import annotations

import json
import os

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from recorder.format import (
    MAX_LINE_BYTES,
    MalformedLine,
    decode_line,
    is_blank_line,
    wire_payload,
    wire_payloads,
)
from tailer.frames import frame_lines
from tailer.reader import FileReader

# Bytes that make lines interesting: JSON punctuation, quotes, escapes, invalid UTF-8
# (lone continuation bytes, overlong forms, surrogates), NUL, CR, BOM, big numbers.
_TOKENS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b"\\",
    b":",
    b",",
    b" ",
    b"\t",
    b"\r",
    b"\x00",
    b"\xff",
    b"\x80",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    b'"type"',
    b'"seq"',
    b'"experiment_id"',
    b'"data"',
    b'"x"',
    b"1e999",
    b"-0",
    b"123456789012345678901234567890",
    b"NaN",
    b"Infinity",
    b"null",
    b"true",
    b'"\\ud800"',
    b'"\\u0000"',
]
json_ish = st.lists(st.sampled_from(_TOKENS) | st.binary(max_size=4), max_size=40).map(b"".join)
valid_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
messages = st.builds(
    lambda kind, data, extra: {"type": kind, **extra, "data": data},
    st.text(max_size=12),
    valid_values,
    st.dictionaries(
        st.sampled_from(["seq", "experiment_id", "timestamp", "x", "type2"]), valid_values
    ),
)
lines = (
    json_ish
    | st.binary(max_size=200)
    | messages.map(orjson.dumps)
    # whitespace around an object, and duplicate keys (the last one wins everywhere)
    | messages.map(lambda m: b" \t" + orjson.dumps(m) + b" \r")
    | messages.map(lambda m: orjson.dumps(m)[:-1] + b',"type":"dup","seq":-5}')
    | messages.map(lambda m: orjson.dumps(m)[: len(orjson.dumps(m)) // 2])
)


def _check_decoded(line: bytes) -> dict | None:
    """decode_line either accepts a message or raises MalformedLine, never anything else."""
    try:
        message = decode_line(line)
    except MalformedLine:
        return None
    assert isinstance(message, dict) and isinstance(message["type"], str)
    return message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=lines, experiment_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True))
@example(line=b'{"type":"a","type":"b"}', experiment_id="x")
@example(line=b'{"type":"a","seq":7,"experiment_id":"evil"}', experiment_id="x")
@example(line=b'{"type":"a"} \t\r', experiment_id="x")
@example(line=b'{"type":"a" }', experiment_id="x")
@example(line=b"{}", experiment_id="x")
@example(line=b"{ }", experiment_id="x")
@example(line=b'{"type":"\\u00e9","data":{}}', experiment_id="x")
@example(line=b'{"type":"a","data":123456789012345678901234567890}', experiment_id="x")
def test_accepted_lines_give_valid_wire_payloads(line, experiment_id):
    """Every line decode_line accepts becomes a frame that is valid JSON with our id and seq winning."""
    message = _check_decoded(line)
    if message is None:
        return
    for seq in (0, 7, 2**53 + 1):
        frame = wire_payload(line, experiment_id, seq)
        parsed = orjson.loads(frame)
        assert parsed == {**message, "experiment_id": experiment_id, "seq": seq}
        # The stdlib (what a Python client would use) parses it too (big integers exactly,
        # where orjson gives floats: the recorded bytes are forwarded untouched).
        strict = json.loads(frame.decode("utf-8"))
        assert (strict["experiment_id"], strict["seq"]) == (experiment_id, seq)
        assert strict.keys() == parsed.keys()
        # The batch splice of history gives the very same bytes.
        assert wire_payloads([(seq, line)], experiment_id) == [frame]


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"type":"a","d":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"type":"a","d":' + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"}",
        b'{"type":"a","n":' + b"9" * 100_000 + b"}",
        b'{"type":"a","n":1e99999}',
        b'{"type":"a","x":"' + b"y" * (10 << 20) + b'"}',
        b"\xff" * (10 << 20),
        b'{"type":"a","s":"\xff\xfe"}',
        b'{"type":"a","s":"\xed\xa0\x80"}',
        b'{"type":"a","s":"\\ud800"}',
        b'{"type":1}',
        b'{"type":null}',
        b'{"typ":"a"}',
        b'"type"',
        b"",
        b"\n",
    ],
    ids=lambda b: repr(b[:24]) + f"..{len(b)}",
)
def test_pathological_lines_never_raise_anything_but_malformed(line):
    """Deep nesting, huge numbers, 10 MB lines, invalid UTF-8, wrong types: MalformedLine or a message."""
    message = _check_decoded(line)
    if message is not None:
        orjson.loads(wire_payload(line, "x", 1))


def _truth(data: bytes, limit: int) -> tuple[list[tuple[int, bytes]], int]:
    """The (seq, line) pairs a reader must yield for ``data``, and how many complete lines."""
    complete = [line for line in data.split(b"\n")[:-1] if not is_blank_line(line)]
    good = []
    for seq, line in enumerate(complete):
        if len(line) > limit:
            continue
        try:
            decode_line(line, max_bytes=limit)
        except MalformedLine:
            continue
        good.append((seq, line))
    return good, len(complete)


chunks = st.lists(
    st.lists(lines | st.just(b"\n") | st.binary(max_size=30), max_size=6).map(b"\n".join),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(parts=chunks, limit=st.sampled_from([16, 64, 256, MAX_LINE_BYTES]))
def test_the_reader_numbers_and_filters_any_byte_stream_exactly(tmp_path_factory, parts, limit):
    """Arbitrary appends in arbitrary chunks: the reader yields exactly the valid complete lines."""
    path = tmp_path_factory.mktemp("fuzz") / "f.jsonl"
    path.write_bytes(b"")
    reader = FileReader(path, "f", index_every=3, max_line_bytes=limit)
    got: list[tuple[int, bytes]] = []
    with open(path, "ab", buffering=0) as f:
        for part in parts:
            f.write(part)
            while True:
                result = reader.poll(max_bytes=7)  # tiny reads: lines cross every boundary
                assert result.kind in ("data", "none")
                got.extend(result.lines)
                if not result.more:
                    break
    data = path.read_bytes()
    want, complete = _truth(data, limit)
    assert got == want
    assert reader.next_seq == complete
    assert reader.messages + reader.malformed == complete
    # History from disk agrees with the live read, from any starting point.
    for start in (0, 1, complete // 2, complete):
        history = [
            pair
            for chunk in reader.history(start, reader.consumed, chunk_bytes=5)
            for pair in chunk
        ]
        assert history == [p for p in want if p[0] >= start]
    # The frames built from them are valid JSON objects carrying the seq.
    if got:
        buffer = frame_lines(got, "f")
        seqs = []
        pos = 0
        while pos < len(buffer):
            assert buffer[pos] == 0x81
            n = buffer[pos + 1]
            pos += 2
            if n == 126:
                n = int.from_bytes(buffer[pos : pos + 2], "big")
                pos += 2
            elif n == 127:
                n = int.from_bytes(buffer[pos : pos + 8], "big")
                pos += 8
            seqs.append(orjson.loads(buffer[pos : pos + n])["seq"])
            pos += n
        assert seqs == [s for s, _ in got]
    os.unlink(path)


def test_a_line_one_byte_over_the_limit_is_malformed_however_its_bytes_arrive(tmp_path):
    """Validity of a line never depends on how its bytes were split between reads (restart-stable)."""
    line = b'{"type":"abcdef"}'  # 17 bytes
    limit = len(line) - 1
    with pytest.raises(MalformedLine):
        decode_line(line, max_bytes=limit)
    with pytest.raises(MalformedLine):
        decode_line(line + b"\n", max_bytes=limit)
    assert decode_line(b'{"type":"abcde"}\n', max_bytes=limit) == {"type": "abcde"}
    for split in ([line + b"\n"], [line, b"\n"], [line[:5], line[5:] + b"\n"]):
        path = tmp_path / "f.jsonl"
        path.write_bytes(b"")
        reader = FileReader(path, "f", max_line_bytes=limit)
        got = []
        for part in split:
            with open(path, "ab") as f:
                f.write(part)
            got += reader.poll().lines
        assert (got, reader.malformed) == ([], 1), split
