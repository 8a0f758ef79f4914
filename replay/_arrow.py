"""The metrics table at Arrow speed: pyarrow's JSON reader parses, numpy unpivots.

:func:`fast_metric_batches` gives the rows of :class:`replay.tables.MetricsBuilder`
(the careful path), in the same order, for a run file read in large blocks of
complete lines. Each block is parsed by :func:`pyarrow.json.read_json` (C++, on a
worker thread: :mod:`replay._jsonparse`) into one struct column per level of ``data``; the numeric
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
doubt (:class:`ReadLineByLine`) sends that block, and only it, through the careful
path, which also counts its malformed lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recorder.format import INDEX_KEYS, NON_FINITE, MalformedLine, decode_line, split_lines
from replay._buffers import as_arrow, as_dictionary, flags, numbers, strings, valid, whole
from replay._jsonparse import ParsedBlocks, ReadLineByLine
from replay._plans import EPOCH_KEYS, ROUND_KEYS, STEP_KEYS
from replay._source import Run, SkipCounts
from replay.tables import (
    ATTEMPT_START,
    TIMESTAMP_TYPE,
    MetricsBuilder,
    gc_paused,
    timestamp_array,
)

__all__ = ["fast_metric_batches"]

_INT64_LIMIT = 2.0**63
_NON_FINITE_VALUE = np.array([*NON_FINITE.values(), 0.0], np.float64)  # 0.0: not one of them


def _spread(column: pa.Array, owner: np.ndarray, dictionary: bool) -> pa.Array:
    """``column`` (a value per line) spread over the rows, row ``i`` taking line ``owner[i]``.

    As a dictionary array if asked: the block's distinct values found once,
    their positions spread (ints moved instead of strings).
    """
    if not dictionary:
        return column.take(as_arrow(owner, pa.int64()))
    encoded = column.dictionary_encode()
    indices = encoded.indices
    return pa.DictionaryArray.from_arrays(
        as_arrow(numbers(indices, np.int32)[owner], pa.int32(), valid(indices)[owner]),
        encoded.dictionary,
    )


def _spread_numbers(column: pa.Array, owner: np.ndarray) -> pa.Array:
    """A fixed-width 64-bit column (a value per line) spread over the rows, nulls kept."""
    spread = numbers(column, np.int64)[owner]
    return as_arrow(spread, column.type, valid(column)[owner] if column.null_count else None)


_NON_FINITE_TEXT = strings(list(NON_FINITE))
_ATTEMPT_START = strings([ATTEMPT_START])[0]


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
    if column.null_count == len(column):
        return None
    if pa.types.is_float64(kind):
        return _Leaf(name, numbers(column, np.float64), valid(column))
    if pa.types.is_int64(kind):  # the nearest double, as float(int)
        return _Leaf(name, numbers(column, np.int64).astype(np.float64), valid(column))
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        column = column.cast(pa.float64(), safe=False)
        return _Leaf(name, numbers(column, np.float64), valid(column))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        index = pc.index_in(column, value_set=_NON_FINITE_TEXT)
        if index.null_count == len(index):
            return None
        present = valid(index)
        values = _NON_FINITE_VALUE[np.where(present, numbers(index, np.int32), -1)]
        return _Leaf(name, values, present)
    if pa.types.is_boolean(kind) or pa.types.is_null(kind) or pa.types.is_temporal(kind):
        return None  # booleans and nulls are not metrics; temporal: strings pyarrow took for times
    raise ReadLineByLine  # lists (named by position), binary, ...


def _leaves(column: Any, prefix: str, at_root: bool, in_data: bool, out: list[_Leaf]) -> None:
    """Append the leaves of the struct ``column`` in field order (names as the careful walk's)."""
    kind = column.type
    for i in range(kind.num_fields):
        key = kind.field(i).name
        if pa.types.is_struct(kind.field(i).type):
            child = _child(column, i)
            if in_data and key == "metrics":  # data.metrics shares data's level: no prefix
                _leaves(child, "", True, False, out)
            else:  # even under an index key: only the key's own value is no metric
                _leaves(child, f"{prefix}{key}.", False, False, out)
            continue
        if at_root and key in INDEX_KEYS:
            continue
        leaf = _leaf(f"{prefix}{key}", _child(column, i))
        if leaf is not None:
            out.append(leaf)


def _child(struct: Any, index: int) -> Any:
    """Field ``index`` of a struct array, null wherever the struct is.

    pyarrow's JSON reader writes a null under each null object already, so the
    child is taken as it is; only a child holding a value under a null parent
    is rebuilt with the parent's nulls.
    """
    child = struct.field(index)
    if (
        struct.null_count
        and child.null_count < len(child)
        and (valid(child) & ~valid(struct)).any()
    ):
        return pc.struct_field(struct, [index])
    return child


# --------------------------------------------------------------------------- message columns


def _field(struct: Any, key: str) -> Any:
    """The child ``key`` of a struct column (parent nulls applied), or None."""
    if struct is None or not pa.types.is_struct(struct.type):
        return None
    index = struct.type.get_field_index(key)
    return None if index < 0 else _child(struct, index)


def _as_index(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """An index column as int64 values and where each is one: whole numbers that fit
    (``_as_int``); anything else is no index."""
    kind = column.type
    if pa.types.is_int64(kind):
        return numbers(column, np.int64), valid(column)
    if pa.types.is_floating(kind):
        values = numbers(column.cast(pa.float64()), np.float64)
        with np.errstate(invalid="ignore"):
            whole_number = valid(column) & (np.floor(values) == values)
            whole_number &= (values >= -_INT64_LIMIT) & (values < _INT64_LIMIT)
        return np.where(whole_number, values, 0).astype(np.int64), whole_number
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if column.null_count < len(column):
            raise ReadLineByLine  # "3" counts as 3 there; rare enough to leave to Python's int()
    elif pa.types.is_temporal(kind):
        raise ReadLineByLine  # a string pyarrow took for a time
    return np.zeros(len(column), np.int64), np.zeros(len(column), bool)


def _first_index(data: Any, keys: tuple[str, ...], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The first of ``keys`` in ``data`` (then in ``data.metrics``) that is not null, as int64
    values and where each is an index.

    As in the careful path, the first key present decides, even when its value
    is no whole number (the index is then null).
    """
    candidates = [_field(data, key) for key in keys]
    metrics = _field(data, "metrics")
    candidates += [_field(metrics, key) for key in keys]
    values = np.zeros(rows, np.int64)
    is_index = np.zeros(rows, bool)
    open_rows: np.ndarray | None = None  # rows no key has decided yet
    for column in candidates:
        if column is None or column.null_count == rows:
            continue
        present = valid(column)
        if open_rows is not None:
            present &= open_rows
        found, whole_number = _as_index(column)
        values[present] = found[present]
        is_index[present] = whole_number[present]
        open_rows = ~present if open_rows is None else open_rows & ~present
    return values, is_index


def _phase(data: Any, rows: int) -> pa.Array:
    """``data.phase`` where it is a string (a number or a boolean is no phase)."""
    column = _field(data, "phase")
    if column is not None and pa.types.is_string(column.type):
        return column
    if column is not None and pa.types.is_temporal(column.type):
        raise ReadLineByLine  # a string pyarrow took for a time
    return pa.nulls(rows, pa.string())


def _client_ids(data: Any, rows: int) -> pa.Array:
    column = _field(data, "client_id")
    if column is None or column.null_count == rows:
        return pa.nulls(rows, pa.string())
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return column.cast(pa.string())  # decimal digits; true / false as JSON spells them
    raise ReadLineByLine  # floats (Python's str of them), objects (their JSON text), times


# --------------------------------------------------------------------------- blocks


class _FastMetrics:
    """Turns parsed blocks of one run into record batches of the metrics table."""

    def __init__(self, careful: MetricsBuilder) -> None:
        self.careful = careful
        self.order = careful.order
        self.schema = careful.schema
        self.experiment_id = careful.experiment_id
        self.experiment_id_text = strings([careful.experiment_id])
        self.with_experiment_id = careful.with_experiment_id
        self.dictionary_text = pa.types.is_dictionary(self.schema.field("metric").type)

    def batch(self, table: pa.Table, first_seq: int, chunk: bytearray) -> pa.RecordBatch | None:
        rows = table.num_rows
        data = whole(table.column("data")) if "data" in table.column_names else None
        if data is not None and not pa.types.is_struct(data.type):
            if data.null_count < rows:
                raise ReadLineByLine  # a number (the metric "value") or a list as data
            data = None
        kinds = whole(table.column("type"))
        starts = flags(pc.equal(kinds, _ATTEMPT_START))
        attempts, started = self.careful.attempts.of_rows(starts)
        leaves: list[_Leaf] = []
        if data is not None:
            _leaves(data, "", True, True, leaves)
        if not leaves:
            self.careful.attempts.settle(attempts, started)
            return None
        leaves = self._in_rank_order(leaves, chunk)
        present = np.empty((rows, len(leaves)), bool)
        values = np.empty((rows, len(leaves)), np.float64)
        for j, leaf in enumerate(leaves):
            present[:, j] = leaf.present
            values[:, j] = leaf.values
        # Row-major positions of the values: the message (row) and leaf (column) of each.
        held = np.flatnonzero(present)
        owner = held // len(leaves)
        leaf_of_row = held - owner * len(leaves)

        stamps = whole(table.column("timestamp"))
        try:
            timestamps = _spread_numbers(stamps.cast(TIMESTAMP_TYPE), owner)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # parsed one by one, once each
            first = np.empty(len(owner), bool)
            first[:1] = True
            np.not_equal(owner[1:], owner[:-1], out=first[1:])
            with_rows = as_arrow(owner[first], pa.int64())
            timestamps = timestamp_array(stamps.take(with_rows).to_pylist())
            timestamps = timestamps.take(as_arrow(np.cumsum(first) - 1, pa.int64()))
        columns: list[Any] = []
        n = len(owner)
        text = self.dictionary_text
        if self.with_experiment_id:
            if text:
                columns.append(as_dictionary(np.zeros(n, np.int32), self.experiment_id_text))
            else:
                columns.append(pa.repeat(self.experiment_id_text[0], n))
        columns += [
            pa.repeat(self.careful.rank, n),
            as_arrow(owner + first_seq, pa.int64()),
            as_arrow(attempts[owner], pa.int64()),
            timestamps,
            _spread(kinds, owner, text),
            _spread(_phase(data, rows), owner, text),
            *(
                as_arrow(index[owner], pa.int64(), is_index[owner])
                for index, is_index in (
                    _first_index(data, keys, rows) for keys in (EPOCH_KEYS, STEP_KEYS, ROUND_KEYS)
                )
            ),
            _spread(_client_ids(data, rows), owner, text),
            self._metric_names(leaves, leaf_of_row, text),
            as_arrow(values.ravel()[held], pa.float64()),
        ]
        batch = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        self.careful.attempts.settle(attempts, started)
        return batch

    @staticmethod
    def _metric_names(leaves: list[_Leaf], leaf_of_row: np.ndarray, dictionary: bool) -> pa.Array:
        """The ``metric`` column: the name of each row's leaf, as a dictionary array if asked.

        ``data.loss`` and ``data.metrics.loss`` are two leaves named ``loss``:
        the dictionary holds each name once, since one holding a value twice
        makes the Parquet writer give up its dictionary for the row group.
        """
        if not dictionary:
            return strings([leaf.name for leaf in leaves]).take(as_arrow(leaf_of_row, pa.int64()))
        codes: dict[str, int] = {}
        of_leaf = np.array([codes.setdefault(leaf.name, len(codes)) for leaf in leaves], np.int32)
        return as_dictionary(of_leaf[leaf_of_row], strings(list(codes)))

    def _in_rank_order(self, leaves: list[_Leaf], chunk: bytearray) -> list[_Leaf]:
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
                    raise ReadLineByLine
        rank = self.order.rank
        new = [name for name in by_name if name not in rank]
        if new:
            first_row = {
                name: min(int(np.argmax(leaf.present)) for leaf in by_name[name]) for name in new
            }
            for row in sorted(set(first_row.values())):
                names = [name for name in new if first_row[name] == row]
                if len(names) > 1:
                    names = self._key_order(chunk, row, names)
                for name in names:
                    self.order.add(name)
        return sorted(leaves, key=lambda leaf: rank[leaf.name])

    def _key_order(self, chunk: bytearray, row: int, names: list[str]) -> list[str]:
        """``names`` in the order the careful walk meets them in line ``row`` of ``chunk``."""
        start = 0
        for _ in range(row):
            start = chunk.index(b"\n", start) + 1
        try:
            data = decode_line(bytes(chunk[start : chunk.index(b"\n", start)])).get("data")
        except MalformedLine:  # cannot happen: pyarrow read the line, parse_block refuses the rest
            raise ReadLineByLine from None
        walker = MetricsBuilder(self.experiment_id, None, self.schema)  # with its own order
        walker.walk_data(data)
        walked = (walker.names[code] for code in walker.codes if code >= 0)
        ordered = list(dict.fromkeys(name for name in walked if name in names))
        if sorted(ordered) != sorted(names):  # cannot happen if both read the line alike
            raise ReadLineByLine
        return ordered


def fast_metric_batches(
    run: Run,
    careful: MetricsBuilder,
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

    pyarrow parses the next blocks on worker threads while this thread
    unpivots the one before (:class:`replay._jsonparse.ParsedBlocks`).
    """
    if taken is None:
        taken = {}
    fast = _FastMetrics(careful)
    seq = 0

    def rows_of(oversized: bool, chunk: bytearray, parsed: Future[Any] | None) -> Any:
        nonlocal seq
        if oversized:
            careful.malformed += 1
            seq += 1
        batch = None
        lines = 0
        if parsed is not None:
            table, lines = parsed.result()
            try:
                if table is None:
                    raise ReadLineByLine
                batch = fast.batch(table, seq, chunk)
                taken["arrow"] = taken.get("arrow", 0) + 1
            except ReadLineByLine:
                taken["careful"] = taken.get("careful", 0) + 1
                split = split_lines(bytes(chunk))[0]
                with gc_paused():
                    batch = careful.add(seq, split)  # type: ignore[arg-type]
                lines = len(split)
        seq += lines
        return batch

    with ParsedBlocks(run.path, block_bytes=block_bytes) as blocks:
        done = 0
        for block in blocks:
            if on_bytes is not None:
                on_bytes(blocks.bytes_read - done)
                done = blocks.bytes_read
            batch = rows_of(*block)
            if batch is not None:
                yield batch
        if on_bytes is not None and blocks.bytes_read > done:
            on_bytes(blocks.bytes_read - done)
    skips.add(run.path, careful.malformed, blocks.torn)
