"""A run file's blocks of lines parsed by pyarrow's JSON reader, ahead of their use.

:class:`ParsedBlocks` reads a run file in large blocks of complete lines
(:class:`replay._source.LineBlocks`) and hands each to
:func:`pyarrow.json.read_json` on a worker thread as soon as it is read, a few
blocks ahead of the caller. :func:`parse_block` gives a table of one row per
line, or None for a block pyarrow may read otherwise than
:func:`recorder.format.decode_line`: ``NaN`` literals, invalid UTF-8, a byte
order mark, blank lines, two objects on a line, over-long lines, nesting past
orjson's limit, lists (see :func:`_check_values`). Such a block is read line by
line by the caller, that block only (:mod:`replay._arrow` unpivots the others).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pj

from recorder.format import MAX_LINE_BYTES
from replay._buffers import numbers, valid
from replay._source import LineBlocks

__all__ = ["FAST_BLOCK_BYTES", "PARSERS", "ParsedBlocks", "ReadLineByLine", "parse_block"]

#: Bytes parsed by one ``read_json`` call: large enough to make its overhead small, small for memory.
FAST_BLOCK_BYTES = 4 << 20


def _parsers() -> int:
    """One parser per core this process may run on, at most 4: past that the thread
    unpivoting the blocks (a third of the parsing's CPU) cannot keep up, and each block
    in flight holds ~25 MB (1M-line export: 214 MB peak with 2, 266 MB with 4)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


#: Blocks parsed at once, each by one ``read_json`` call on one thread (without the GIL).
#: Whole blocks side by side keep the cores busier than one call spreading each block
#: over Arrow's threads, which leaves them idle while it splits the block and joins the
#: parts: the 1M-line export 5 % faster on 2 cores.
PARSERS = _parsers()
#: Nesting deeper than this goes the careful way (orjson refuses past 1024 levels).
_MAX_DEPTH = 200

_PARSE = pj.ParseOptions(
    # type and timestamp are read as text, so a line where they are not strings fails the block
    explicit_schema=pa.schema([("type", pa.string()), ("timestamp", pa.string())]),
    newlines_in_values=False,
    unexpected_field_behavior="infer",
)


class ReadLineByLine(Exception):
    """Raised when this block may not give the careful path's rows: read it line by line."""


def parse_block(chunk: bytearray) -> tuple[pa.Table | None, int]:
    """``chunk`` (complete lines) as a table of one row per line, and its number of lines.

    The table is None for a block to read the careful way. Runs on a worker
    thread: pyarrow and numpy let go of the GIL (``bytes.count`` would not).
    """
    lines = int(np.count_nonzero(np.frombuffer(chunk, np.uint8) == 10))
    try:
        return _parse(chunk, lines), lines
    except ReadLineByLine:
        return None, lines


def _parse(chunk: bytearray, lines: int) -> pa.Table:
    """``chunk`` as a table of one row per line, or :class:`ReadLineByLine`."""
    if not chunk.isascii():
        try:
            chunk.decode("utf-8")  # pyarrow does not check; orjson refuses invalid UTF-8
        except UnicodeDecodeError:
            raise ReadLineByLine from None
        if b"\xef\xbb\xbf" in chunk:  # a byte order mark, which pyarrow skips and orjson refuses
            raise ReadLineByLine
    if len(chunk) > MAX_LINE_BYTES and _has_long_line(chunk):
        raise ReadLineByLine  # decode_line refuses it, pyarrow would not
    # One block per call, on this thread: block_size is the whole chunk.
    options = pj.ReadOptions(use_threads=False, block_size=len(chunk) + 1)
    try:
        table = pj.read_json(pa.BufferReader(chunk), read_options=options, parse_options=_PARSE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise ReadLineByLine from None
    # Fewer rows: blank lines (pyarrow skips them); more: two objects on one line.
    if table.num_rows != lines or table.column("type").null_count:
        raise ReadLineByLine
    for column in table.columns:
        for part in column.chunks:
            _check_values(column.type, part, 0)
    return table


def _check_values(kind: pa.DataType, column: Any, depth: int) -> None:
    """:class:`ReadLineByLine` for what pyarrow accepts and orjson does not, and for lists.

    NaN and Infinity written bare are numbers to pyarrow, malformed to orjson;
    orjson refuses nesting past 1024 levels. Lists go the careful way: their
    values are named by position, and pyarrow 26 builds invalid list arrays
    from some of them (``[null, 0]``).
    """
    if depth > _MAX_DEPTH or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        raise ReadLineByLine
    if pa.types.is_floating(kind):
        if not pa.types.is_float64(kind):  # pyarrow's JSON reader makes doubles only
            column = column.cast(pa.float64())
        finite = np.isfinite(numbers(column, np.float64))
        if not finite.all() and not finite[valid(column)].all():  # under a null: no value
            raise ReadLineByLine
    elif pa.types.is_struct(kind):
        for i in range(kind.num_fields):
            field = kind.field(i)
            if pa.types.is_floating(field.type) or _nested(field.type):
                _check_values(field.type, column.field(i), depth + 1)


def _has_long_line(chunk: bytes | bytearray, limit: int = MAX_LINE_BYTES) -> bool:
    """Whether a line of ``chunk`` (complete lines) is longer than ``limit`` without its newline.

    Jumps to the last newline within ``limit + 1`` bytes of each line start, so a
    few searches cover a block.
    """
    start = 0
    while start < len(chunk):
        newline = chunk.rfind(b"\n", start, start + limit + 1)
        if newline < 0:
            return True
        start = newline + 1
    return False


def _nested(kind: pa.DataType) -> bool:
    return pa.types.is_struct(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)


class ParsedBlocks:
    """A run file's blocks, each parsed on a worker thread as soon as it is read.

    Iterating gives ``(oversized, chunk, parsed)`` in file order: as
    :meth:`LineBlocks.chunks` gives them, with ``parsed`` a future of
    :func:`parse_block`'s result (None for an empty chunk). While the caller
    works on one block, the next ``parsers`` (:data:`PARSERS`) are being
    parsed: at most ``parsers + 1`` blocks are held. Parsing starts when the
    object is made.
    Iterate once; :meth:`close` (or ``with``) stops the workers and closes the
    file, and :attr:`torn` and :attr:`bytes_read` are :class:`LineBlocks`'.
    """

    def __init__(
        self, path: Path, *, block_bytes: int | None = None, parsers: int = PARSERS
    ) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            if block_bytes is None:
                block_bytes = FAST_BLOCK_BYTES
            self._blocks = LineBlocks(self._file, block_bytes=block_bytes)
            self._chunks = self._blocks.chunks()
            self._pool = ThreadPoolExecutor(parsers, thread_name_prefix="runtail-parse")
        except BaseException:
            self._file.close()
            raise
        self._ahead = parsers + 1
        self._waiting: deque[tuple[bool, bytearray, Future[Any] | None]] = deque()
        self._fill()

    def _fill(self) -> None:
        while len(self._waiting) < self._ahead:
            got = next(self._chunks, None)
            if got is None:
                return
            oversized, chunk = got
            parsed = self._pool.submit(parse_block, chunk) if chunk else None
            self._waiting.append((oversized, chunk, parsed))

    def __iter__(self) -> Iterator[tuple[bool, bytearray, Future[Any] | None]]:
        while self._waiting:
            yield self._waiting.popleft()
            self._fill()

    @property
    def torn(self) -> bool:
        return self._blocks.torn

    @property
    def bytes_read(self) -> int:
        return self._blocks.bytes_read

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._waiting.clear()
        self._file.close()

    def __enter__(self) -> ParsedBlocks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
