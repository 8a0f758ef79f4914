"""The tailer's pure core and per-file reader: numbering, partial lines, resets, history."""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame
from websockets.streams import StreamReader

from recorder.format import encode_message
from tailer.frames import PONG_FRAME, frame_lines, text_frame
from tailer.index import SparseIndex
from tailer.reader import FileReader, LineSplitter, StaleHistory


def _line(i: int) -> bytes:
    return encode_message("batch_metrics", {"step": i}, timestamp="2025-01-01T00:00:00.000000Z")


def _poll(reader: FileReader):
    """One poll, with a replacement's verification run to its end (as the fan-out does)."""
    result = reader.poll()
    if result.kind == "verify":
        result = asyncio.run(reader.verify())
        if result.kind == "none":  # the copy continues the file: read on
            result = reader.poll()
    return result


def test_splitter_holds_a_partial_line_until_its_newline():
    """A line cut anywhere is only returned once its newline arrives, with the next seq."""
    splitter = LineSplitter()
    data = _line(0) + _line(1)
    cut = len(_line(0)) + 5
    assert splitter.feed(data[:cut]) == [_line(0)[:-1]]
    assert splitter.consumed == len(_line(0))
    assert splitter.pending == 5
    assert splitter.feed(data[cut:]) == [_line(1)[:-1]]
    assert (splitter.next_seq, splitter.consumed, splitter.pending) == (2, len(data), 0)


def test_splitter_byte_by_byte_gives_the_same_lines():
    """Feeding one byte at a time yields exactly the lines of one big feed."""
    data = b"".join(_line(i) for i in range(20))
    one = LineSplitter()
    expected = one.feed(data)
    many = LineSplitter()
    got = []
    for i in range(len(data)):
        got += many.feed(data[i : i + 1])
    assert got == expected
    assert many.consumed == one.consumed == len(data)


def test_splitter_drops_overlong_partial_line_but_keeps_its_seq():
    """A line growing past the limit is not buffered; it still takes a seq, as None."""
    splitter = LineSplitter(max_line_bytes=10)
    assert splitter.feed(b"x" * 30) == []
    assert splitter.pending == 30
    assert splitter.feed(b"y" * 30 + b"\nok\n") == [None, b"ok"]
    assert (splitter.next_seq, splitter.consumed) == (2, 64)


def test_splitter_skips_an_overlong_blank_line_without_a_seq():
    """A whitespace-only line is blank however long it grows: dropped, and no seq."""
    splitter = LineSplitter(max_line_bytes=10)
    assert splitter.feed(b" " * 30) == []
    assert splitter.feed(b"\t" * 30 + b"\nok\n") == [b"ok"]
    assert (splitter.next_seq, splitter.consumed) == (1, 64)


def test_index_records_every_nth_line_offset():
    """The sparse index points at the start of every `every`-th line, whatever the chunking."""
    data = b"".join(_line(i) for i in range(100))
    offsets = [0]
    for i in range(99):
        offsets.append(offsets[-1] + len(_line(i)))
    index = SparseIndex(7)
    splitter = LineSplitter(index=index)
    for start in range(0, len(data), 333):
        splitter.feed(data[start : start + 333])
    assert len(index) == 15
    for k in range(15):
        assert index.seek(k * 7) == (k * 7, offsets[k * 7])
    assert index.seek(50) == (49, offsets[49])
    assert index.seek(10_000) == (98, offsets[98])
    assert index.seek(-1) == (0, 0)


def test_reader_counts_malformed_lines_in_seq_and_skips_them(tmp_path):
    """Bad JSON, non-objects and lines without a string type are numbered and never returned."""
    path = tmp_path / "r.jsonl"
    bad = [b"not json", b"[1,2]", b'{"type": 3}', b'{"data": {}}', b'"str"']
    path.write_bytes(_line(0) + b"\n".join(bad) + b"\n" + _line(6))
    reader = FileReader(path, "r")
    result = reader.poll()
    assert result.kind == "data"
    assert [seq for seq, _ in result.lines] == [0, 6]
    assert reader.malformed == 5
    assert reader.summary()["messages"] == 2
    assert reader.summary()["lines"] == 7


def test_reader_statistics_follow_the_last_status_message(tmp_path):
    """status comes from status_of of the last status-bearing message; timestamps first/last."""
    path = tmp_path / "r.jsonl"
    lines = [
        encode_message("training_start", {}, timestamp="2025-01-01T00:00:00Z"),
        encode_message("epoch_end", {"epoch": 0}, timestamp="2025-01-01T00:00:01Z"),
        encode_message("error", {"error": "boom"}, timestamp="2025-01-01T00:00:02Z"),
        encode_message("batch_metrics", {}, timestamp="2025-01-01T00:00:03Z"),
    ]
    path.write_bytes(b"".join(lines))
    reader = FileReader(path, "r")
    reader.read_all()
    summary = reader.summary()
    assert summary["status"] == "failed"
    assert summary["error"] == "boom"
    assert summary["first_timestamp"] == "2025-01-01T00:00:00Z"
    assert summary["last_timestamp"] == "2025-01-01T00:00:03Z"
    assert summary["bytes"] == path.stat().st_size
    empty = tmp_path / "e.jsonl"
    empty.write_bytes(b"")
    assert FileReader(empty, "e").summary()["status"] == "unknown"


def test_reader_error_is_the_last_error_text_kept_as_lines_arrive(tmp_path):
    """summary()["error"] is data.error of the last error message, updated per poll, reset on log_reset."""
    path = tmp_path / "r.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        reader = FileReader(path, "r", settle=0)
        os.write(fd, encode_message("training_start", {}) + encode_message("epoch_end", {}))
        reader.poll()
        assert reader.summary()["error"] is None
        os.write(fd, encode_message("error", {"error": "CUDA out of memory", "error_type": "oom"}))
        reader.poll()
        assert reader.summary()["error"] == "CUDA out of memory"
        # Later lines that are not errors keep it; a torn line does not count yet.
        os.write(
            fd, encode_message("status", {"status": "failed", "message": "x"}) + b'{"type":"err'
        )
        reader.poll()
        assert reader.summary()["error"] == "CUDA out of memory"
        os.write(fd, b'or","data":{"error":"second"}}\n')
        reader.poll()
        assert reader.summary()["error"] == "second"
        # Non-string text is written as text; an error without text clears it; one batch
        # with several errors keeps the last.
        os.write(fd, encode_message("error", {"error": 42}))
        reader.poll()
        assert reader.summary()["error"] == "42"
        os.write(fd, encode_message("error", {"error": "a"}) + encode_message("error", {"x": 1}))
        reader.poll()
        assert reader.summary()["error"] is None
        os.write(fd, encode_message("error", {"error": "e" * 10_000}))
        reader.poll()
        text = reader.summary()["error"]
        assert isinstance(text, str) and 100 < len(text) <= 2000 and text.startswith("eee")
    finally:
        os.close(fd)
    # Truncation (log_reset) forgets it with the rest of the statistics.
    path.write_bytes(encode_message("training_start", {}))
    assert reader.poll().kind == "reset"
    reader.poll()
    assert reader.summary()["error"] is None and reader.summary()["status"] == "running"


def test_reader_detects_truncation_replacement_rewrite_and_deletion(tmp_path):
    """A shrunk, replaced or rewritten file resets numbering; a deleted one is reported once."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(_line(0) + _line(1))
    reader = FileReader(path, "r", settle=0)
    assert len(reader.poll().lines) == 2

    with open(path, "r+b") as f:
        f.truncate(0)
    path.write_bytes(_line(5))
    result = reader.poll()
    assert result.kind == "reset" and reader.generation == 1
    assert reader.poll().lines == [(0, _line(5)[:-1])]

    other = tmp_path / "new.tmp"
    other.write_bytes(_line(7) + _line(8))
    os.replace(other, path)
    assert _poll(reader).kind == "reset"
    assert [seq for seq, _ in reader.poll().lines] == [0, 1]

    # Same inode, longer content, but different bytes: rewritten in place.
    path.write_bytes(b'{"type":"x"}' + b" " * 200 + b"\n" + _line(9))
    assert reader.poll().kind == "reset"

    path.unlink()
    assert reader.poll().kind == "deleted"
    assert reader.deleted
    assert reader.poll().kind == "none"


def test_history_reads_from_disk_after_since_and_skips_malformed(tmp_path):
    """history(start) yields valid lines with seq >= start, using the index to seek."""
    path = tmp_path / "r.jsonl"
    lines = [(_line(i) if i % 10 != 3 else b"broken\n") for i in range(2500)]
    path.write_bytes(b"".join(lines))
    reader = FileReader(path, "r", index_every=100)
    reader.read_all()
    for start in (0, 1, 3, 99, 100, 1234, 2499, 2500):
        got = [seq for chunk in reader.history(start, reader.consumed) for seq, _ in chunk]
        assert got == [i for i in range(start, 2500) if i % 10 != 3]
    chunk = next(reader.history(1500, reader.consumed))
    assert chunk[0] == (1500, lines[1500][:-1])


def test_history_chunks_without_malformed_lines_match_the_line_by_line_path(tmp_path):
    """Chunks wholly valid (numbered in bulk) and chunks with a bad or over-long line agree."""
    path = tmp_path / "r.jsonl"
    bad = {700, 1501}
    lines = [
        b"broken\n" if i in bad else b'{"x":"' + b"y" * 300 + b'"}\n' if i == 2222 else _line(i)
        for i in range(3000)
    ]
    path.write_bytes(b"".join(lines))
    reader = FileReader(path, "r", index_every=100, max_line_bytes=200)
    reader.read_all()
    valid = [i for i in range(3000) if i not in bad and i != 2222]
    for start in (0, 5, 699, 701, 1500, 2221, 2999):
        for chunk_bytes in (1000, 1 << 20):
            got = [
                (seq, line)
                for chunk in reader.history(start, reader.consumed, chunk_bytes=chunk_bytes)
                for seq, line in chunk
            ]
            assert got == [(i, lines[i][:-1]) for i in valid if i >= start]


def test_history_raises_when_the_file_is_reset_meanwhile(tmp_path):
    """A truncation between history chunks makes the history stale rather than mixing files."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"".join(_line(i) for i in range(30_000)))
    reader = FileReader(path, "r", settle=0)
    reader.read_all()
    history = reader.history(0, reader.consumed)
    next(history)
    with open(path, "r+b") as f:
        f.truncate(10)
    reader.poll()
    with pytest.raises(StaleHistory):
        for _ in history:
            pass


def _parse_frames(data: bytes) -> list[Frame]:
    stream = StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    frames = []
    while stream.buffer:
        parser = Frame.parse(stream.read_exact, mask=False)
        try:
            while True:
                next(parser)
        except StopIteration as stop:
            frames.append(stop.value)
    return frames


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_text_frame_is_a_valid_websocket_frame(size):
    """text_frame produces a final unmasked text frame that websockets parses back."""
    payload = b"a" * size
    (frame,) = _parse_frames(text_frame(payload))
    assert frame.fin and frame.opcode.name == "TEXT" and frame.data == payload


def test_frame_lines_splices_id_and_seq_once_per_line():
    """Each line becomes one frame with experiment_id and seq; concatenated in order."""
    lines = [(4, _line(1)[:-1]), (9, b'{"type":"x","seq":99}')]
    frames = _parse_frames(frame_lines(lines, "exp") + PONG_FRAME)
    decoded = [orjson.loads(f.data) for f in frames]
    assert decoded[0]["seq"] == 4 and decoded[0]["experiment_id"] == "exp"
    assert decoded[1] == {"type": "x", "seq": 9, "experiment_id": "exp"}
    assert decoded[2] == {"type": "pong", "data": {}}


def test_history_stays_correct_past_the_tracked_malformed_lines(tmp_path, monkeypatch):
    """Beyond the remembered malformed seqs, history decodes lines again instead of forwarding junk."""
    from tailer import reader as reader_module

    monkeypatch.setattr(reader_module, "MAX_TRACKED_MALFORMED", 3)
    path = tmp_path / "r.jsonl"
    lines = [(_line(i) if i % 4 else b"junk\n") for i in range(40)]
    path.write_bytes(b"".join(lines))
    reader = FileReader(path, "r", index_every=8)
    reader.read_all()
    assert reader.malformed == 10 and len(reader.malformed_seqs) == 3
    got = [seq for chunk in reader.history(0, reader.consumed) for seq, _ in chunk]
    assert got == [i for i in range(40) if i % 4]


def test_a_file_never_seen_does_not_exist(tmp_path):
    """A reader for a name whose file is gone before the first read reports nothing."""
    reader = FileReader(tmp_path / "ghost.jsonl", "ghost")
    assert reader.poll().kind == "none"
    assert not reader.exists


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")),
    st.lists(st.integers(min_value=1, max_value=50), max_size=40),
    st.integers(min_value=1, max_value=5),
)
def test_splitter_is_independent_of_chunking(lines, tail, cuts, every):
    """Whatever the chunk boundaries, the same lines, seqs, offsets and index come out."""
    data = b"".join(line + b"\n" for line in lines) + tail
    index = SparseIndex(every)
    splitter = LineSplitter(index=index, max_line_bytes=25)
    got: list[bytes | None] = []
    pos = 0
    for cut in cuts:
        got += splitter.feed(data[pos : pos + cut])
        pos += cut
    got += splitter.feed(data[pos:])
    # Blank lines are no lines; a line over the limit comes back whole if one feed
    # completed it, else as None.
    offsets, pos = [], 0
    for line in lines:
        if line.strip():
            offsets.append(pos)
        pos += len(line) + 1
    kept = [line for line in lines if line.strip()]
    for g, line in zip(got, kept, strict=True):
        assert g == line or (g is None and len(line) > 25)
    assert splitter.next_seq == len(kept)
    assert splitter.consumed == len(data) - len(tail)
    # (seek(0) is always offset 0: blank lines before the first line are skipped again.)
    assert [index.seek(k * every)[1] for k in range(1, len(index))] == [
        offsets[k * every] for k in range(1, len(index))
    ]
    assert len(index) == (len(kept) + every - 1) // every


_BLANKS = (b"\n", b" \n", b"\t\r\n", b"  \r\n")


def _with_blanks(n: int) -> tuple[bytes, list[bytes]]:
    """``n`` messages with blank lines before, between (one to three) and after them."""
    messages = [_line(i) for i in range(n)]
    parts = [b"\n"]
    for i, message in enumerate(messages):
        parts.append(message)
        parts.extend(_BLANKS[: i % 4])
    return b"".join(parts), [m[:-1] for m in messages]


def test_blank_lines_are_skipped_silently_and_take_no_seq(tmp_path):
    """Blank lines are not messages: not malformed, not numbered, whatever the chunking."""
    data, messages = _with_blanks(300)
    path = tmp_path / "r.jsonl"
    path.write_bytes(data)
    reader = FileReader(path, "r", index_every=7)
    reader.read_all()
    assert reader.malformed == 0 and reader.next_seq == 300 and reader.consumed == len(data)
    summary = reader.summary()
    assert (summary["messages"], summary["malformed"], summary["lines"]) == (300, 0, 300)
    # The index still seeks to the right line: history from any seq is exact.
    for start in (0, 1, 6, 7, 8, 150, 299):
        got = [pair for chunk in reader.history(start, reader.consumed) for pair in chunk]
        assert got == [(i, messages[i]) for i in range(start, 300)]
    # Byte by byte, the same lines and the same index.
    index = SparseIndex(7)
    splitter = LineSplitter(index=index)
    got = []
    for i in range(len(data)):
        got += splitter.feed(data[i : i + 1])
    assert got == messages and splitter.consumed == len(data)
    assert [index.seek(k * 7) for k in range(len(index))] == [
        reader.index.seek(k * 7) for k in range(len(reader.index))
    ]


def test_tailer_ls_counts_no_blank_line(tmp_path):
    """`tailer ls` counts messages, not blank lines, and no blank line is malformed."""
    from tailer.ls import list_experiments

    (tmp_path / "r.jsonl").write_bytes(_with_blanks(10)[0])
    (row,) = list_experiments(tmp_path)
    assert (row["messages"], row["malformed"], row["lines"]) == (10, 0, 10)


def test_stale_is_the_time_since_the_last_message(tmp_path):
    """stale: seconds since the last message's timestamp (not the file's mtime); mtime without one."""
    import time

    from recorder.format import format_timestamp

    path = tmp_path / "r.jsonl"
    three_hours_ago = time.time() - 3 * 3600
    path.write_bytes(
        encode_message("training_start", {}, timestamp=format_timestamp(three_hours_ago - 60))
        + encode_message("epoch_end", {}, timestamp=format_timestamp(three_hours_ago))
        + b"torn, no timestamp\n"
    )  # the file's mtime is now: a copy or a clone of an interrupted run
    reader = FileReader(path, "r")
    reader.read_all()
    assert 3 * 3600 <= reader.summary()["stale"] < 3 * 3600 + 60
    # A run whose writer's clock is ahead is not stale, never negative.
    ahead = tmp_path / "ahead.jsonl"
    ahead.write_bytes(encode_message("m", {}, timestamp=format_timestamp(time.time() + 600)))
    reader = FileReader(ahead, "ahead")
    reader.read_all()
    assert reader.summary()["stale"] == 0
    # No message with a timestamp: the file's modification time.
    bare = tmp_path / "bare.jsonl"
    bare.write_bytes(b'{"type":"m","data":{}}\n')
    os.utime(bare, (time.time() - 100, time.time() - 100))
    reader = FileReader(bare, "bare")
    reader.read_all()
    assert 100 <= reader.summary()["stale"] < 160


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.just(b""),
            st.just(b"   "),
            st.binary(max_size=90).filter(lambda b: b"\n" not in b),
            st.builds(lambda i: _line(i)[:-1], st.integers(0, 10**6)),
        ),
        max_size=40,
    ),
    st.lists(st.integers(1, 400), min_size=1, max_size=8),
    st.integers(1, 700),
    st.integers(1, 6),
)
def test_bounded_steps_never_split_or_merge_a_line(
    tmp_path_factory, lines, cuts, max_bytes, max_lines
):
    """Whatever the appends and the step limits, the lines (and their seq) are those of one read."""
    path = tmp_path_factory.mktemp("steps") / "r.jsonl"
    data = b"".join(line + b"\n" for line in lines) + b'{"type":"tail'
    reader = FileReader(path, "r", max_line_bytes=64)
    got = []
    written = 0
    with open(path, "wb") as f:
        for cut in [*cuts, len(data)]:
            f.write(data[written : written + cut])
            f.flush()
            written = min(len(data), written + cut)
            while True:
                result = reader.poll(max_bytes=max_bytes, max_lines=max_lines)
                got += result.lines
                if not result.more:
                    break
            if written == len(data):
                break
    whole = FileReader(path, "r", max_line_bytes=64)
    expected = whole.poll(max_bytes=1 << 30, max_lines=1 << 30).lines  # one unbounded step
    assert got == expected
    assert (reader.next_seq, reader.consumed, reader.malformed) == (
        whole.next_seq,
        whole.consumed,
        whole.malformed,
    )
