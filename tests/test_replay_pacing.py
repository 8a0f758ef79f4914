"""replay.pacing: paced_frames and iter_frames, the frames the tailer's replay sends."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import orjson
import pytest

from recorder.format import wire_payload
from replay.pacing import iter_frames, paced_frames, replay_end_frame
from tests._replay_helpers import line, write_run


def collect(path: Path, **kwargs: object) -> tuple[list[bytes], float]:
    async def main() -> tuple[list[bytes], float]:
        started = time.perf_counter()
        frames = [frame async for frame in paced_frames(path, **kwargs)]  # type: ignore[arg-type]
        return frames, time.perf_counter() - started

    return asyncio.run(main())


def spanning_run(path: Path, seconds: float = 2.0, count: int = 21) -> Path:
    """``count`` messages evenly over ``seconds``, with a malformed line after the fourth."""
    lines = []
    for i in range(count):
        lines.append(
            line("batch_metrics", {"step": i, "loss": 1.0 / (i + 1)}, at=i * seconds / (count - 1))
        )
        if i == 3:
            lines.append(b"this is not json\n")
    return write_run(path, lines)


def test_frames_keep_order_seq_and_end_with_replay_end(tmp_path: Path) -> None:
    """Every valid message comes once, in order, as its wire frame with the original seq, then replay_end."""
    path = spanning_run(tmp_path / "run-7.jsonl")
    frames, _ = collect(path, speed=0)
    raw = path.read_bytes().split(b"\n")[:-1]
    expected = [wire_payload(raw[seq], "run-7", seq) for seq in range(len(raw)) if seq != 4]
    assert frames[:-1] == expected
    seqs = [orjson.loads(f)["seq"] for f in frames[:-1]]
    assert seqs == [0, 1, 2, 3, *range(5, 22)]
    end = orjson.loads(frames[-1])
    assert end["type"] == "replay_end" and end["experiment_id"] == "run-7"
    assert end["data"] == {"messages": 21} and end["timestamp"].endswith("Z")
    assert "seq" not in end


def test_pacing_divides_recorded_gaps_by_speed(tmp_path: Path) -> None:
    """A run spanning 2 s replayed at speed 4 takes about 0.5 s (loosely: 0.4 to 1.5 s)."""
    frames, seconds = collect(spanning_run(tmp_path / "run.jsonl"), speed=4)
    assert len(frames) == 22
    assert 0.4 <= seconds <= 1.5, seconds


def test_speed_zero_does_not_wait(tmp_path: Path) -> None:
    """Speed 0 sends everything at once, whatever the recorded gaps."""
    _, seconds = collect(spanning_run(tmp_path / "run.jsonl", seconds=30), speed=0)
    assert seconds < 5


def test_max_gap_caps_each_recorded_gap(tmp_path: Path) -> None:
    """A one-hour pause replays in at most max_gap / speed seconds."""
    path = write_run(
        tmp_path / "pause.jsonl",
        [line("a", {"x": 1}, at=0), line("a", {"x": 2}, at=3600), line("a", {"x": 3}, at=3600.2)],
    )
    frames, seconds = collect(path, speed=1, max_gap=0.3)
    assert len(frames) == 4
    assert 0.4 <= seconds <= 2.0, seconds  # 0.3 + 0.2


def test_missing_and_backward_timestamps_do_not_wait(tmp_path: Path) -> None:
    """Messages without a usable timestamp, or earlier than the latest, are sent without waiting."""
    path = write_run(
        tmp_path / "odd.jsonl",
        [
            line("a", {"x": 1}, at=0),
            b'{"type":"a","data":{"x":2}}\n',
            b'{"type":"a","timestamp":"garbage","data":{"x":3}}\n',
            line("a", {"x": 4}, at=-100),
            line("a", {"x": 5}, at=0.2),
        ],
    )
    frames, seconds = collect(path, speed=1)
    assert [orjson.loads(f)["data"].get("x") for f in frames[:-1]] == [1, 2, 3, 4, 5]
    assert seconds < 1.5


@pytest.mark.parametrize("speed", [-1, math.nan, "fast", None])
def test_bad_speed_is_refused_at_call(tmp_path: Path, speed: object) -> None:
    """A negative, NaN or non-numeric speed raises ValueError before any frame."""
    path = spanning_run(tmp_path / "run.jsonl")
    with pytest.raises(ValueError, match="speed"):
        paced_frames(path, speed=speed)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_gap", [-0.5, math.nan])
def test_bad_max_gap_is_refused(tmp_path: Path, max_gap: float) -> None:
    """A negative or NaN max_gap raises ValueError."""
    with pytest.raises(ValueError, match="max_gap"):
        paced_frames(spanning_run(tmp_path / "run.jsonl"), max_gap=max_gap)


def test_experiment_id_defaults_to_stem_and_is_validated(tmp_path: Path) -> None:
    """The frames carry the file's stem, or the id given; an invalid id raises ValueError."""
    path = spanning_run(tmp_path / "stem-1.jsonl", count=2)
    assert orjson.loads(next(iter_frames(path)))["experiment_id"] == "stem-1"
    assert orjson.loads(next(iter_frames(path, experiment_id="other")))["experiment_id"] == "other"
    with pytest.raises(ValueError, match="experiment id"):
        paced_frames(path, experiment_id="../etc")
    with pytest.raises(ValueError, match="experiment id"):
        paced_frames(write_run(tmp_path / "bad name.jsonl", [line("a", {})]))


def test_missing_file_raises_at_first_frame(tmp_path: Path) -> None:
    """A file that does not exist raises FileNotFoundError when iteration starts."""
    frames = paced_frames(tmp_path / "gone.jsonl")

    async def first() -> bytes:
        return await frames.__anext__()

    with pytest.raises(FileNotFoundError):
        asyncio.run(first())


def test_torn_last_line_is_not_sent(tmp_path: Path) -> None:
    """A last line without its newline is not replayed; replay_end counts the messages sent."""
    path = write_run(tmp_path / "torn.jsonl", [line("a", {"x": 1}), line("a", {"x": 2})[:-5]])
    frames, _ = collect(path, speed=0)
    assert len(frames) == 2
    assert orjson.loads(frames[-1])["data"] == {"messages": 1}


def test_stopping_early_closes_the_file(tmp_path: Path) -> None:
    """A consumer that stops after one frame (aclose) leaves no file open and gets no error."""
    path = spanning_run(tmp_path / "run.jsonl", seconds=60)

    async def main() -> bytes:
        frames = paced_frames(path, speed=1)
        first = await frames.__anext__()
        await frames.aclose()  # type: ignore[attr-defined]
        return first

    assert orjson.loads(asyncio.run(main()))["seq"] == 0


def test_iter_frames_matches_paced_frames(tmp_path: Path) -> None:
    """The synchronous iter_frames yields the same frames, replay_end on request."""
    path = spanning_run(tmp_path / "run.jsonl")
    paced, _ = collect(path, speed=0)
    plain = list(iter_frames(path, replay_end=True))
    assert plain[:-1] == paced[:-1]
    assert orjson.loads(plain[-1])["data"] == orjson.loads(paced[-1])["data"]
    assert list(iter_frames(path)) == paced[:-1]


def test_replay_end_frame_shape() -> None:
    """replay_end_frame builds the documented object with the format module."""
    frame = orjson.loads(replay_end_frame("exp", 3))
    assert list(frame) == ["type", "timestamp", "data", "experiment_id"]
    assert frame["type"] == "replay_end" and frame["data"] == {"messages": 3}
