"""The metrics table at Arrow speed: pyarrow's JSON reader parses, numpy unpivots.

:func:`fast_metric_batches` gives the rows of :class:`replay.tables._MetricsBuilder`
(the careful path), in the same order, for a run file read in large blocks of
complete lines. Each block is parsed by :func:`pyarrow.json.read_json` (C++,
multi-threaded) into one struct column per level of ``data``; the numeric
leaves become the long table with a handful of vectorised steps:

1. the leaves of ``data`` (dotted names, ``metrics`` adding no prefix, index
   keys left out) become an ``n x L`` matrix of values and one of "holds a
   row" (numbers, and the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``),
   its columns in :class:`replay.tables.MetricOrder`;
2. reading that matrix row-major gives the rows message by message, each
   message's in rank order;
3. the message-level columns (``seq``, ``attempt``, ``timestamp``, ``phase``,
   the index columns, ``client_id``) are built once per message and spread by
   ``take``.

pyarrow reads JSON more liberally than :func:`recorder.format.decode_line`
(``NaN`` literals, invalid UTF-8, a byte order mark, two objects on a line,
nesting past orjson's limit) and coerces what the careful path keeps apart (a
number that is a string in another line is an error, an integer past int64 a
double). So a block is taken here only when nothing in it can differ: any
doubt (:class:`_Careful`) sends that block, and only it, through the careful
path, which also counts its malformed lines.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from recorder.format import MAX_LINE_BYTES, NON_FINITE, split_lines
from replay._plans import EPOCH_KEYS, ROUND_KEYS, STEP_KEYS
from replay._source import LineBlocks, Run, SkipCounts
from replay.tables import (
    _TIMESTAMP,
    ATTEMPT_START,
    INDEX_KEYS,
    _gc_paused,
    _MetricsBuilder,
    _timestamps,
)

__all__ = ["FAST_BLOCK_BYTES", "fast_metric_batches"]

#: Bytes parsed by one ``read_json`` call: large enough for its threads, small for memory.
FAST_BLOCK_BYTES = 8 << 20
#: Nesting deeper than this goes the careful way (orjson refuses past 1024 levels).
_MAX_DEPTH = 200
_INT64_LIMIT = 2.0**63
_NON_FINITE_TEXT = pa.array(list(NON_FINITE), pa.string())
_NON_FINITE_VALUE = np.array(list(NON_FINITE.values()), np.float64)

_PARSE = pj.ParseOptions(
    # type and timestamp are read as text, so a line where they are not strings fails the block
    explicit_schema=pa.schema([("type", pa.string()), ("timestamp", pa.string())]),
    newlines_in_values=False,
    unexpected_field_behavior="infer",
)
_READ = pj.ReadOptions(use_threads=True, block_size=1 << 20)


class _Careful(Exception):
    """This block may not give the careful path's rows here; read it the careful way."""


# --------------------------------------------------------------------------- parsing


def _parse(chunk: bytes, lines: int) -> pa.Table:
    """``chunk`` (complete lines) as a table of one row per line, or :class:`_Careful`."""
    if not chunk.isascii():
        try:
            chunk.decode("utf-8")  # pyarrow does not check; orjson refuses invalid UTF-8
        except UnicodeDecodeError:
            raise _Careful from None
        if b"\xef\xbb\xbf" in chunk:  # a byte order mark, which pyarrow skips and orjson refuses
            raise _Careful
    if len(chunk) > MAX_LINE_BYTES and _has_long_line(chunk):
        raise _Careful  # decode_line refuses it, pyarrow would not
    try:
        table = pj.read_json(io.BytesIO(chunk), read_options=_READ, parse_options=_PARSE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise _Careful from None
    # Fewer rows: blank lines (pyarrow skips them); more: two objects on one line.
    if table.num_rows != lines or table.column("type").null_count:
        raise _Careful
    for column in table.columns:
        _check_values(column.type, column, 0)
    return table


def _check_values(kind: pa.DataType, column: Any, depth: int) -> None:
    """:class:`_Careful` for what pyarrow accepts and orjson does not, and for lists.

    NaN and Infinity written bare are numbers to pyarrow, malformed to orjson;
    orjson refuses nesting past 1024 levels. Lists go the careful way: their
    values are named by position, and pyarrow 26 builds invalid list arrays
    from some of them (``[null, 0]``).
    """
    if depth > _MAX_DEPTH or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        raise _Careful
    if pa.types.is_floating(kind):
        if pc.any(pc.invert(pc.is_finite(column))).as_py():
            raise _Careful
    elif pa.types.is_struct(kind):
        for i in range(kind.num_fields):
            field = kind.field(i)
            if pa.types.is_floating(field.type) or _nested(field.type):
                _check_values(field.type, pc.struct_field(column, [i]), depth + 1)


def _has_long_line(chunk: bytes, limit: int = MAX_LINE_BYTES) -> bool:
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


# --------------------------------------------------------------------------- leaves


class _Leaf:
    """One numeric leaf of ``data``: its metric name, values and where it holds a row."""

    __slots__ = ("name", "present", "values")

    def __init__(self, name: str, values: np.ndarray, present: np.ndarray) -> None:
        self.name = name
        self.values = values
        self.present = present


def _leaf(name: str, column: Any) -> _Leaf | None:
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        present = column.is_valid()
        values = pc.fill_null(column.cast(pa.float64()), 0.0)
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        index = pc.index_in(column, value_set=_NON_FINITE_TEXT)
        present = index.is_valid()
        if not pc.any(present).as_py():
            return None
        values = pa.array(_NON_FINITE_VALUE[pc.fill_null(index, 0).to_numpy()])
    elif pa.types.is_boolean(kind) or pa.types.is_null(kind) or pa.types.is_temporal(kind):
        return None  # booleans and nulls are not metrics; temporal: strings pyarrow took for times
    else:
        raise _Careful  # lists (named by position), binary, ...
    present_np = present.to_numpy(zero_copy_only=False)
    if not present_np.any():
        return None
    return _Leaf(name, values.to_numpy(zero_copy_only=False), present_np)


def _leaves(column: Any, prefix: str, at_root: bool, in_data: bool, out: list[_Leaf]) -> None:
    """Append the leaves of the struct ``column`` in field order (names as the careful walk's)."""
    kind = column.type
    for i in range(kind.num_fields):
        key = kind.field(i).name
        if pa.types.is_struct(kind.field(i).type):
            child = pc.struct_field(column, [i])
            if in_data and key == "metrics":  # data.metrics shares data's level: no prefix
                _leaves(child, "", True, False, out)
            else:  # even under an index key: only the key's own value is no metric
                _leaves(child, f"{prefix}{key}.", False, False, out)
            continue
        if at_root and key in INDEX_KEYS:
            continue
        child = pc.struct_field(column, [i])
        leaf = _leaf(f"{prefix}{key}", child)
        if leaf is not None:
            out.append(leaf)


# --------------------------------------------------------------------------- message columns


def _field(struct: Any, key: str) -> Any:
    """The child ``key`` of a struct column (parent nulls applied), or None."""
    if struct is None or not pa.types.is_struct(struct.type):
        return None
    index = struct.type.get_field_index(key)
    return None if index < 0 else pc.struct_field(struct, [index])


def _as_index(column: Any) -> pa.Array:
    """An index column as int64: whole numbers that fit, null for anything else (``_as_int``)."""
    kind = column.type
    if pa.types.is_int64(kind):
        return column
    if pa.types.is_floating(kind):
        values = pc.fill_null(column, 0.5).to_numpy(zero_copy_only=False)
        whole = (np.floor(values) == values) & (values >= -_INT64_LIMIT) & (values < _INT64_LIMIT)
        ints = np.where(whole, values, 0).astype(np.int64)
        return pa.array(ints, pa.int64(), mask=~whole)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if column.null_count < len(column):
            raise _Careful  # "3" counts as 3 there; rare enough to leave to Python's int()
    elif pa.types.is_temporal(kind):
        raise _Careful  # a string pyarrow took for a time
    return pa.nulls(len(column), pa.int64())


def _first_index(data: Any, keys: tuple[str, ...], rows: int) -> pa.Array:
    """The first of ``keys`` in ``data`` (then in ``data.metrics``) that is not null, as int64.

    As in the careful path, the first key present decides, even when its value
    is no whole number (the index is then null).
    """
    candidates = [_field(data, key) for key in keys]
    metrics = _field(data, "metrics")
    candidates += [_field(metrics, key) for key in keys]
    result: pa.Array = pa.nulls(rows, pa.int64())
    for column in reversed([c for c in candidates if c is not None]):  # the first wins: last set
        present = column.is_valid()
        if present.true_count:
            result = pc.if_else(present, _as_index(column), result)
    return result


def _phase(data: Any, rows: int) -> pa.Array:
    """``data.phase`` where it is a string (a number or a boolean is no phase)."""
    column = _field(data, "phase")
    if column is not None and pa.types.is_string(column.type):
        return column
    if column is not None and pa.types.is_temporal(column.type):
        raise _Careful  # a string pyarrow took for a time
    return pa.nulls(rows, pa.string())


def _client_ids(data: Any, rows: int) -> pa.Array:
    column = _field(data, "client_id")
    if column is None or column.null_count == rows:
        return pa.nulls(rows, pa.string())
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return column.cast(pa.string())  # decimal digits; true / false as JSON spells them
    raise _Careful  # floats (Python's str of them), objects (their JSON text), times


# --------------------------------------------------------------------------- blocks


class _FastMetrics:
    """Turns parsed blocks of one run into record batches of the metrics table."""

    def __init__(self, careful: _MetricsBuilder) -> None:
        self.careful = careful
        self.order = careful.order
        self.schema = careful.schema
        self.experiment_id = careful.experiment_id
        self.with_experiment_id = careful.with_experiment_id

    def batch(self, table: pa.Table, first_seq: int, chunk: bytes) -> pa.RecordBatch | None:
        rows = table.num_rows
        data = table.column("data").combine_chunks() if "data" in table.column_names else None
        if data is not None and not pa.types.is_struct(data.type):
            if data.null_count < rows:
                raise _Careful  # a number (the metric "value") or a list as data
            data = None
        kinds = table.column("type").combine_chunks()
        starts = pc.equal(kinds, ATTEMPT_START).to_numpy(zero_copy_only=False)
        attempts, started = self.careful.attempts.of_rows(starts)
        leaves: list[_Leaf] = []
        if data is not None:
            _leaves(data, "", True, True, leaves)
        if not leaves:
            self.careful.attempts.settle(attempts, started)
            return None
        leaves = self._in_rank_order(leaves, first_seq, chunk)
        present = np.empty((rows, len(leaves)), bool)
        values = np.empty((rows, len(leaves)), np.float64)
        for j, leaf in enumerate(leaves):
            present[:, j] = leaf.present
            values[:, j] = leaf.values
        counts = present.sum(axis=1)
        with_rows = np.flatnonzero(counts)
        owner = np.repeat(with_rows, counts[with_rows])
        leaf_of_row = np.nonzero(present)[1]
        names = pa.array([leaf.name for leaf in leaves], pa.string())

        take = pa.array(owner)
        stamps = table.column("timestamp").combine_chunks()
        try:
            timestamps = stamps.cast(_TIMESTAMP)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            timestamps = _timestamps(stamps.take(pa.array(with_rows)).to_pylist())
            timestamps = timestamps.take(
                pa.array(np.repeat(np.arange(len(with_rows)), counts[with_rows]))
            )
        else:
            timestamps = timestamps.take(take)
        columns: list[Any] = []
        n = len(owner)
        if self.with_experiment_id:
            columns.append(pa.repeat(self.experiment_id, n))  # type: ignore[attr-defined]
        columns += [
            pa.repeat(self.careful.rank, n),  # type: ignore[attr-defined]
            pa.array(owner + first_seq, pa.int64()),
            pa.array(attempts[owner], pa.int64()),
            timestamps,
            kinds.take(take),
            _phase(data, rows).take(take),
            _first_index(data, EPOCH_KEYS, rows).take(take),
            _first_index(data, STEP_KEYS, rows).take(take),
            _first_index(data, ROUND_KEYS, rows).take(take),
            _client_ids(data, rows).take(take),
            names.take(pa.array(leaf_of_row)),
            pa.array(values[present], pa.float64()),
        ]
        batch = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        self.careful.attempts.settle(attempts, started)
        return batch

    def _in_rank_order(self, leaves: list[_Leaf], first_seq: int, chunk: bytes) -> list[_Leaf]:
        """``leaves`` sorted by :class:`MetricOrder`, ranking the names new in this block.

        A new name is ranked by the first row it holds a value in; names new in
        the same row are ranked in that line's key order, which only the
        careful walk of that one line knows.
        """
        by_name: dict[str, list[_Leaf]] = {}
        for leaf in leaves:
            by_name.setdefault(leaf.name, []).append(leaf)
        for same in by_name.values():
            if len(same) > 1:  # data.loss and data.metrics.loss: their order is the line's
                held = np.sum([leaf.present for leaf in same], axis=0)
                if (held > 1).any():
                    raise _Careful
        rank = self.order.rank
        new = [name for name in by_name if name not in rank]
        if new:
            first_row = {
                name: min(int(np.argmax(leaf.present)) for leaf in by_name[name]) for name in new
            }
            for row in sorted(set(first_row.values())):
                names = [name for name in new if first_row[name] == row]
                if len(names) > 1:
                    names = self._key_order(chunk, row, first_seq + row, names)
                for name in names:
                    self.order.add(name)
        return sorted(leaves, key=lambda leaf: rank[leaf.name])

    def _key_order(self, chunk: bytes, row: int, seq: int, names: list[str]) -> list[str]:
        """``names`` in the order the careful walk meets them in line ``row`` of ``chunk``."""
        start = 0
        for _ in range(row):
            start = chunk.index(b"\n", start) + 1
        line = chunk[start : chunk.index(b"\n", start)]
        walker = _MetricsBuilder(self.experiment_id, None, self.schema)  # with its own order
        batch = walker.add(seq, [line])
        walked = (
            [] if batch is None else batch.column(self.schema.names.index("metric")).to_pylist()
        )
        ordered = list(dict.fromkeys(name for name in walked if name in names))
        if sorted(ordered) != sorted(names):  # cannot happen if both read the line alike
            raise _Careful
        return ordered


def _parsed(chunk: bytes, lines: int) -> pa.Table | None:
    """:func:`_parse`, with None for a block to read the careful way (for a worker thread)."""
    try:
        return _parse(chunk, lines)
    except _Careful:
        return None


def fast_metric_batches(
    run: Run,
    careful: _MetricsBuilder,
    skips: SkipCounts,
    *,
    on_bytes: Callable[[int], None] | None = None,
    block_bytes: int | None = None,
    taken: dict[str, int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """The metrics table of one run, as :func:`replay.tables.metric_batches` gives it.

    Blocks pyarrow can read exactly are unpivoted here; any other block goes
    through ``careful`` (whose :class:`MetricOrder` both share). Lines that are
    not messages are counted into ``skips``; ``taken``, if given, counts the
    blocks read each way (``"arrow"``, ``"careful"``).

    pyarrow parses the next block (in its own threads, without the GIL) while
    this thread unpivots the last one: at most two blocks are held at a time.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    if taken is None:
        taken = {}
    if block_bytes is None:
        block_bytes = FAST_BLOCK_BYTES
    fast = _FastMetrics(careful)
    seq = 0

    def rows_of(oversized: bool, chunk: bytes, lines: int, parsed: Future[Any] | None) -> Any:
        nonlocal seq
        if oversized:
            careful.malformed += 1
            seq += 1
        batch = None
        if parsed is not None:
            table = parsed.result()
            try:
                if table is None:
                    raise _Careful
                batch = fast.batch(table, seq, chunk)
                taken["arrow"] = taken.get("arrow", 0) + 1
            except _Careful:
                taken["careful"] = taken.get("careful", 0) + 1
                split = split_lines(chunk)[0]
                with _gc_paused():
                    batch = careful.add(seq, split)  # type: ignore[arg-type]
                lines = len(split)
        seq += lines
        return batch

    with (
        open(run.path, "rb") as file,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="runtail-parse") as pool,
    ):
        blocks = LineBlocks(file, block_bytes=block_bytes)
        done = 0
        waiting: tuple[bool, bytes, int, Future[Any] | None] | None = None
        for oversized, chunk in blocks.chunks():
            lines = chunk.count(b"\n")
            parsed = pool.submit(_parsed, chunk, lines) if lines else None
            if waiting is not None:
                batch = rows_of(*waiting)
                if batch is not None:
                    yield batch
            waiting = (oversized, chunk, lines, parsed)
            if on_bytes is not None:
                on_bytes(blocks.bytes_read - done)
                done = blocks.bytes_read
        if waiting is not None:
            batch = rows_of(*waiting)
            if batch is not None:
                yield batch
    skips.add(run.path, careful.malformed, blocks.torn)
