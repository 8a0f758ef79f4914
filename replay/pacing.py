"""Replaying a finished run at its recorded pace.

:func:`paced_frames` is what the tailer's ``/experiments/{id}/replay?speed=S``
endpoint and ``tailer replay FILE`` send: each valid message of the file as
its wire frame (:func:`recorder.format.wire_payload`, with the message's
original ``seq``), spaced by the recorded gaps divided by ``speed``, then one
``replay_end`` frame. :func:`iter_frames` is the same without the waiting, as
a plain iterator.

Timing: the wait before a message is scheduled against one monotonic start
(``start + recorded offset / speed``), not accumulated gap by gap, so sleep
overshoot does not add up over a long replay. The recorded offset of a message
is the sum of the gaps between consecutive timestamps, each gap cut to
``max_gap`` seconds when given; a timestamp earlier than the latest one seen
counts as no gap, and a message whose timestamp is missing or unparsable is
sent without waiting.
"""

from __future__ import annotations

import asyncio
import math
import os
import stat
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

from recorder.format import (
    MalformedLine,
    decode_line,
    encode_message,
    parse_timestamp,
    validate_experiment_id,
    wire_payload,
)
from replay._source import LineBlocks

__all__ = ["iter_frames", "paced_frames", "replay_end_frame"]

#: Bytes read at a time while replaying (a replay never holds the whole file).
REPLAY_BLOCK_BYTES = 1 << 20
#: With nothing to wait for, yield to the event loop once every this many frames.
_YIELD_EVERY = 256


def replay_end_frame(experiment_id: str, messages: int) -> bytes:
    """The frame that ends a replay: ``{"type": "replay_end", "timestamp", "data": {"messages": N}, "experiment_id"}``."""
    return encode_message(
        "replay_end", {"messages": messages}, extra={"experiment_id": experiment_id}
    ).rstrip(b"\n")


def _check(
    path: str | os.PathLike[str], experiment_id: str | None, speed: float, max_gap: float | None
) -> tuple[Path, str]:
    if isinstance(speed, bool) or not isinstance(speed, (int, float)):
        raise ValueError(f"speed must be a number, not {speed!r}")
    if math.isnan(speed) or speed < 0:
        raise ValueError(f"speed must be 0 (no waiting) or positive, not {speed!r}")
    if max_gap is not None and (
        isinstance(max_gap, bool)
        or not isinstance(max_gap, (int, float))
        or math.isnan(max_gap)
        or max_gap < 0
    ):
        raise ValueError(f"max_gap must be None or a number of seconds >= 0, not {max_gap!r}")
    path = Path(path)
    if experiment_id is None:
        experiment_id = path.stem
    validate_experiment_id(experiment_id)
    return path, experiment_id


def _open_run(path: Path) -> int:
    """A descriptor on the run file, which must be a regular file.

    ``O_NONBLOCK``, then ``fstat``: a FIFO swapped in under the name must not
    block the opener (on a server, the whole event loop) until a writer comes.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


#: With ``ticks``, :func:`_messages` yields ``None`` once every this many lines.
_TICK_LINES = 1024


def _messages(
    path: Path, block_bytes: int, *, ticks: bool = False
) -> Generator[tuple[int, bytes, dict[str, object]] | None, None, None]:
    """``(seq, line, message)`` for each valid message of the file, read a block at a time.

    With ``ticks``, also ``None`` every :data:`_TICK_LINES` lines, valid or
    not, so an async consumer can yield to its event loop even in a file of
    nothing but blank or broken lines.
    """
    with os.fdopen(_open_run(path), "rb") as file:
        for first_seq, lines in LineBlocks(file, block_bytes=block_bytes):
            if ticks:
                yield None
            for seq, line in enumerate(lines, first_seq):
                if ticks and seq % _TICK_LINES == 0:
                    yield None
                if line is None:
                    continue
                try:
                    message = decode_line(line)
                except MalformedLine:
                    continue
                yield seq, line, message


def iter_frames(
    path: str | os.PathLike[str], *, experiment_id: str | None = None, replay_end: bool = False
) -> Iterator[bytes]:
    """The wire frames of every valid message of ``path``, in order, without waiting.

    Frames keep the message's original ``seq``. With ``replay_end`` the last
    frame is the ``replay_end`` frame :func:`paced_frames` ends with.

    Raises:
        ValueError: ``experiment_id`` (by default the file's stem) is not a valid id (when called).
        FileNotFoundError: ``path`` does not exist (at the first frame).
    """
    path, experiment_id = _check(path, experiment_id, 0.0, None)
    return _frames(path, experiment_id, replay_end)


def _frames(path: Path, experiment_id: str, replay_end: bool) -> Iterator[bytes]:
    count = 0
    for seq, line, _ in _messages(path, REPLAY_BLOCK_BYTES):  # type: ignore[misc]
        count += 1
        yield wire_payload(line, experiment_id, seq)
    if replay_end:
        yield replay_end_frame(experiment_id, count)


def _seconds(message: dict[str, object]) -> float | None:
    """The message's timestamp as POSIX seconds, or None when it has no usable one."""
    stamp = message.get("timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return parse_timestamp(stamp).timestamp()
    except (ValueError, OverflowError):
        return None


def paced_frames(
    path: str | os.PathLike[str],
    *,
    experiment_id: str | None = None,
    speed: float = 1.0,
    max_gap: float | None = None,
) -> AsyncIterator[bytes]:
    """Replay the run file ``path``: its wire frames at the recorded pace, then ``replay_end``.

    Use as ``async for frame in paced_frames(path, speed=4): await ws.send(frame)``.
    Arguments are checked when called, before any frame; the file is opened
    and streamed (never held whole) as frames are taken.

    Args:
        path: the run file.
        experiment_id: the ``experiment_id`` the frames carry (default: the file's stem).
        speed: recorded gaps are divided by it; ``0`` (or ``inf``) sends without waiting.
        max_gap: cut any single recorded gap to this many seconds before dividing
            (a run paused overnight replays without the night).

    Returns:
        An async iterator of frames (bytes, one JSON object each, without a
        newline): one per valid message with its original ``seq``, then
        ``{"type": "replay_end", ..., "data": {"messages": N}, "experiment_id": ...}``.

    Raises:
        ValueError: ``speed`` is negative or NaN, ``max_gap`` is negative or
            NaN, or the experiment id is not valid.
        FileNotFoundError: ``path`` does not exist (at the first frame).
    """
    path, experiment_id = _check(path, experiment_id, speed, max_gap)
    return _paced(path, experiment_id, float(speed), max_gap)


async def _paced(
    path: Path, experiment_id: str, speed: float, max_gap: float | None
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    wait = speed > 0 and not math.isinf(speed) and max_gap != 0
    start = loop.time()
    offset = 0.0  # recorded seconds since the first timestamp, gaps capped
    latest: float | None = None  # the latest recorded timestamp seen
    count = 0
    unpaused = 0
    messages = _messages(path, REPLAY_BLOCK_BYTES, ticks=True)
    try:
        for item in messages:
            if item is None:
                await asyncio.sleep(0)
                continue
            seq, line, message = item
            if wait:
                seconds = _seconds(message)
                if seconds is not None:
                    if latest is None:
                        latest = seconds
                        start = loop.time()
                    elif seconds > latest:
                        gap = seconds - latest
                        offset += gap if max_gap is None else min(gap, max_gap)
                        latest = seconds
                    delay = start + offset / speed - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                        unpaused = 0
            count += 1
            unpaused += 1
            if unpaused >= _YIELD_EVERY:  # let other tasks run during a long burst
                unpaused = 0
                await asyncio.sleep(0)
            yield wire_payload(line, experiment_id, seq)
    finally:
        messages.close()  # closes the file at once when the consumer stops early
    yield replay_end_frame(experiment_id, count)
