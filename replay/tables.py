"""Runs as tables: the long metrics table, the message table, and their Arrow batches.

:func:`read_metrics` and :func:`read_messages` are the pandas entry points;
:func:`metric_batches` and :func:`message_batches` produce the same rows as
Arrow record batches, one block of lines at a time, so :mod:`replay.export`
can write any size of log in bounded memory.

The metrics table (one row per numeric value of a message's ``data``):

============= =================== ============================================================================
column        dtype (pandas)      meaning
============= =================== ============================================================================
experiment_id str                 the run: the file's stem, less a ``.rank<N>`` suffix
rank          Int64               ``N`` for a per-rank file ``<run>.rank<N>.jsonl``, else null
seq           int64               0-based index of the line in its file (every line counts)
attempt       Int64               0, then +1 at every later ``training_start`` in the same file (a resumed run)
timestamp     datetime64[us, UTC] the message's timestamp (NaT when missing or unparsable)
type          str                 the message type
phase         str                 ``data.phase`` (``train``, ``val``, ...) when it is a string
epoch         Int64               ``data.epoch``, else ``data.local_epoch``, else the same in ``data.metrics``
step          Int64               ``data.step``, else ``data.metrics.step``
round         Int64               ``data.round``, else ``data.round_num``, else the same in ``data.metrics``
client_id     str                 ``data.client_id`` as text (names, or integers of any size)
metric        str                 the dotted path of the value (naming rules below)
value         float64             the value; ``NaN``, ``inf`` and ``-inf`` are kept
============= =================== ============================================================================

Naming rules for ``metric``:

* the dotted path of the value inside ``data``; a ``metrics`` dict directly in
  ``data`` adds nothing to the path (``epoch_end`` → ``loss``, ``metrics`` →
  ``train_loss``, ``local_epoch`` → ``loss``), any other dict adds its key
  (``round_end`` → ``fit_metrics.loss``, ``gradient_stats`` →
  ``layer_norms.fc1.weight``);
* list elements add their position: ``per_class_recall.0``, ``per_class_recall.1``;
* numbers are values (integers too, as float64), and so are the strings
  ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; other strings, booleans, nulls
  and empty containers are not;
* a value whose path is an index key (``epoch``, ``step``, ``round``,
  ``round_num``, ``total_epochs``, ``total_rounds``, ``batch_idx``,
  ``local_epoch``, ``client_id``, ``rank``), that is one directly in ``data`` or in its
  ``metrics`` dict, is not a metric; deeper ones (``fit_metrics.round``) are;
* ``data`` that is a number gives one row named ``value``; ``data`` that is a
  list is walked like a nested list (``0``, ``1``, ...).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import math
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa

from recorder.format import (
    INDEX_KEYS,
    NON_FINITE,
    MalformedLine,
    decode_line,
    parse_timestamp,
    restore_non_finite,
    split_rank,
)
from replay._plans import EPOCH_KEYS, MAX_PLANS, MISS, ROUND_KEYS, STEP_KEYS, PlanCompiler
from replay._source import LineBlocks, Run, SkipCounts, Source, resolve_sources

__all__ = [
    "INDEX_KEYS",
    "MESSAGE_COLUMNS",
    "METRIC_COLUMNS",
    "MetricOrder",
    "SkippedLinesWarning",
    "message_batches",
    "message_table_schema",
    "metric_batches",
    "metric_block_reader",
    "metrics_schema",
    "read_messages",
    "read_metrics",
]

#: Columns of :func:`read_metrics`, in order.
METRIC_COLUMNS = (
    "experiment_id",
    "rank",
    "seq",
    "attempt",
    "timestamp",
    "type",
    "phase",
    "epoch",
    "step",
    "round",
    "client_id",
    "metric",
    "value",
)

#: Columns of :func:`read_messages`, in order.
MESSAGE_COLUMNS = ("experiment_id", "rank", "seq", "attempt", "timestamp", "type", "data")

#: The message type that starts a new attempt of a run when it is not the file's first.
ATTEMPT_START = "training_start"

TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


class SkippedLinesWarning(UserWarning):
    """Some lines were not messages (malformed, or a torn last line) and were skipped."""


# --------------------------------------------------------------------------- schemas

_METRIC_TYPES: dict[str, pa.DataType] = {
    "experiment_id": pa.string(),
    "rank": pa.int64(),
    "seq": pa.int64(),
    "attempt": pa.int64(),
    "timestamp": TIMESTAMP_TYPE,
    "type": pa.string(),
    "phase": pa.string(),
    "epoch": pa.int64(),
    "step": pa.int64(),
    "round": pa.int64(),
    "client_id": pa.string(),
    "metric": pa.string(),
    "value": pa.float64(),
}
_NULLABLE_INTS = frozenset({"rank", "attempt", "epoch", "step", "round"})

#: Columns of the lossless message table ``tailer export --table messages`` writes.
_MESSAGE_TABLE_TYPES: dict[str, pa.DataType] = {
    "experiment_id": pa.string(),
    "rank": pa.int64(),
    "seq": pa.int64(),
    "attempt": pa.int64(),
    "timestamp": TIMESTAMP_TYPE,
    "type": pa.string(),
    "data": pa.string(),
    "extra": pa.string(),
    "timestamp_text": pa.string(),
}


def _pandas_metadata(fields: list[pa.Field], nullable_ints: frozenset[str]) -> bytes:
    """The ``pandas`` schema metadata that makes pandas read the intended dtypes back.

    Written by hand (the same keys :func:`pyarrow.Schema.from_pandas` writes)
    so exporting never imports pandas. It matters for the nullable integer
    columns: without it pandas would read them as float64 when they hold nulls.
    """
    columns = []
    for field in fields:
        if field.name in nullable_ints:
            pandas_type, numpy_type, meta = "int64", "Int64", None
        elif pa.types.is_timestamp(field.type):
            pandas_type, numpy_type = "datetimetz", f"datetime64[{field.type.unit}]"
            meta = {"timezone": field.type.tz}
        elif pa.types.is_string(field.type):
            pandas_type, numpy_type, meta = "unicode", "object", None
        else:
            pandas_type = numpy_type = str(field.type.to_pandas_dtype().__name__)
            meta = None
        columns.append(
            {
                "name": field.name,
                "field_name": field.name,
                "pandas_type": pandas_type,
                "numpy_type": numpy_type,
                "metadata": meta,
            }
        )
    document = {
        "index_columns": [],
        "column_indexes": [],
        "columns": columns,
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
    }
    return json.dumps(document).encode()


#: How :func:`metrics_schema` holds text with ``dictionary_text``.
TEXT_DICTIONARY = pa.dictionary(pa.int32(), pa.string())


def _schema(
    types: dict[str, pa.DataType], with_experiment_id: bool, dictionary_text: bool = False
) -> pa.Schema:
    fields = [pa.field(name, kind) for name, kind in types.items()]
    if not with_experiment_id:
        fields = fields[1:]
    metadata = {b"pandas": _pandas_metadata(fields, _NULLABLE_INTS)}  # pandas reads text as str
    if dictionary_text:
        fields = [
            pa.field(field.name, TEXT_DICTIONARY) if field.type == pa.string() else field
            for field in fields
        ]
    return pa.schema(fields, metadata=metadata)


def metrics_schema(*, with_experiment_id: bool = True, dictionary_text: bool = False) -> pa.Schema:
    """The Arrow schema of the metrics table (without ``experiment_id`` for a hive dataset).

    With ``dictionary_text``, its text columns are dictionary arrays
    (:data:`TEXT_DICTIONARY`), as :func:`replay.export.export` has them built:
    the Parquet file stores them as dictionaries either way, so Arrow need not
    lay out every string to have the writer hash it back into a dictionary.
    """
    return _schema(_METRIC_TYPES, with_experiment_id, dictionary_text)


def fit_text(columns: list[pa.Array], schema: pa.Schema) -> list[pa.Array]:
    """``columns`` with the text ``schema`` holds as dictionaries dictionary-encoded."""
    return [
        column.dictionary_encode()
        if pa.types.is_dictionary(field.type) and not pa.types.is_dictionary(column.type)
        else column
        for column, field in zip(columns, schema, strict=True)
    ]


def message_table_schema(*, with_experiment_id: bool = True) -> pa.Schema:
    """The Arrow schema of the lossless message table written by ``tailer export --table messages``.

    ``data`` is the JSON text of the message's ``data`` (null when the message
    had none), ``extra`` the JSON text of an object holding every other
    top-level key (null when there are none), ``timestamp_text`` the recorded
    timestamp string and ``timestamp`` its parsed value. A message is rebuilt as
    ``{"type": type, "timestamp": timestamp_text, "data": json.loads(data),
    **json.loads(extra)}``, leaving out the keys whose column is null.
    """
    return _schema(_MESSAGE_TABLE_TYPES, with_experiment_id)


# --------------------------------------------------------------------------- conversions


def timestamp_array(values: Sequence[Any]) -> pa.Array:
    """Timestamp strings to ``timestamp[us, UTC]``; anything unparsable becomes null."""
    try:
        return pa.array(values, pa.string()).cast(TIMESTAMP_TYPE)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    parsed: list[datetime | None] = []
    for value in values:
        try:
            parsed.append(parse_timestamp(value))
        except (ValueError, TypeError, AttributeError, OverflowError):
            parsed.append(None)
    return pa.array(parsed, TIMESTAMP_TYPE)


def _int64_scalar(value: int | None) -> pa.Scalar:
    """``value`` as an Arrow int64 scalar, built from a buffer: ``pa.scalar`` imports pandas."""
    if value is None:
        return pa.nulls(1, pa.int64())[0]
    buffer = pa.py_buffer(value.to_bytes(8, sys.byteorder, signed=True))
    return pa.Array.from_buffers(pa.int64(), 1, [None, buffer])[0]


def _as_int(value: Any) -> int | None:
    """An index value as an int64, or None when it is not a whole number that fits."""
    if type(value) is int:
        return value if _INT64_MIN <= value <= _INT64_MAX else None
    if type(value) is float and value.is_integer():
        return _as_int(int(value))
    if type(value) is str:
        try:
            return _as_int(int(value))
        except ValueError:
            return None
    return None


def _int_array(values: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(values, pa.int64())
    except (OverflowError, pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([_as_int(v) for v in values], pa.int64())


def _float_array(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values, pa.float64())
    except (OverflowError, pa.ArrowInvalid, pa.ArrowTypeError):
        out = []
        for v in values:
            try:
                out.append(float(v))
            except OverflowError:
                out.append(math.inf if v > 0 else -math.inf)
        return pa.array(out, pa.float64())


def _client_text(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    if type(value) is bool:
        return str(value).lower()
    if type(value) is int:
        return str(value)
    if type(value) is float and value.is_integer():
        return str(int(value))
    return orjson.dumps(value).decode() if isinstance(value, (dict, list)) else str(value)


#: The index columns of a message whose ``data`` is not an object.
_NO_INDEX = (None, None, None, None, None)


def _index_value(data: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    """An index column of a message: the first of ``keys`` in ``data`` that is not null
    (as an int64, or None when it is not a whole number), else the first in ``data.metrics``."""
    for mapping in (data, data.get("metrics")):
        if type(mapping) is dict:
            for key in keys:
                value = mapping.get(key)
                if value is not None:
                    return value if type(value) is int else _as_int(value)
    return None


def _message_row(data: dict[str, Any], seq: int, stamp: Any, kind: str) -> tuple[Any, ...]:
    """A message's own columns: ``(seq, timestamp, type, phase, epoch, step, round, client_id)``."""
    get = data.get
    # An int under an index column's first key is its value (the common case, no call).
    epoch = get(EPOCH_KEYS[0])
    if type(epoch) is not int:
        epoch = _index_value(data, EPOCH_KEYS)
    step = get(STEP_KEYS[0])
    if type(step) is not int:
        step = _index_value(data, STEP_KEYS)
    round_ = get(ROUND_KEYS[0])
    if type(round_) is not int:
        round_ = _index_value(data, ROUND_KEYS)
    phase = get("phase")
    client = get("client_id")
    return (
        seq,
        stamp,
        kind,
        phase if type(phase) is str else None,
        epoch,
        step,
        round_,
        client if type(client) is str else _client_text(client),
    )


# --------------------------------------------------------------------------- metrics


class _Attempts:
    """The ``attempt`` of the messages of one file: 0, then +1 at every later ``training_start``.

    Callers check ``type == ATTEMPT_START`` themselves (it is on the hot path)
    and call :meth:`start` then; ``marks`` holds ``(position, attempt)`` where
    the attempt changed, positions counted by the caller, until :meth:`column`
    turns them into one value per position.
    """

    __slots__ = ("_started", "current", "marks")

    def __init__(self) -> None:
        self.current = 0
        self._started = False
        self.marks: list[tuple[int, int]] = []

    def start(self, position: int) -> None:
        """A ``training_start`` at ``position``: the file's first, or a new attempt from here."""
        if self._started:
            self.current += 1
            self.marks.append((position, self.current))
        self._started = True

    def of_rows(self, starts: Any) -> tuple[Any, bool]:
        """The attempt of every message of a block, from a bool array of where its starts are.

        Leaves the state alone: pass the result to :meth:`settle` once the
        block is taken (a block given up is read again another way).
        """
        import numpy as np

        bumps = starts.astype(np.int64)
        if not self._started and bumps.any():
            bumps[int(np.argmax(starts))] = 0  # the file's first training_start
        return self.current + np.cumsum(bumps), self._started or bool(starts.any())

    def settle(self, per_row: Any, started: bool) -> None:
        """Take the state after a block :meth:`of_rows` numbered."""
        if len(per_row):
            self.current = int(per_row[-1])
        self._started = started

    def column(self, first: int, n: int) -> pa.Array:
        """The attempt at positions ``0 .. n-1``, ``first`` being the one in force at 0; clears marks."""
        if not self.marks:
            return pa.repeat(pa.scalar(first, pa.int64()), n)
        import numpy as np

        values = np.full(n, first, dtype=np.int64)
        for position, attempt in self.marks:
            values[position:] = attempt
        self.marks.clear()
        return pa.array(values, pa.int64())


class MetricOrder:
    """The order of a run's metric names: the order in which each first gave a row.

    Rows of one message come sorted by it (a stable sort, so a name repeated
    within a message keeps its key order). For a log that writes its keys in
    one order, that is the order of the keys. Every reader of one run (the
    careful walk and :mod:`replay._arrow`, block by block) shares one
    ``MetricOrder``, so both give the same rows in the same order.
    """

    __slots__ = ("rank",)

    def __init__(self) -> None:
        self.rank: dict[str, int] = {}

    def add(self, name: str) -> int:
        """The rank of ``name``, given the next one if it had none."""
        rank = self.rank.get(name)
        if rank is None:
            rank = self.rank[name] = len(self.rank)
        return rank


class _Node:
    """One level of metric paths: key -> code of the leaf there, key -> child level."""

    __slots__ = ("children", "codes", "plans", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.codes: dict[Any, int] = {}
        self.children: dict[Any, _Node] = {}
        self.plans: dict[tuple[Any, ...], Any] = {}  # key tuple -> compiled plan, or False


class MetricsBuilder:
    """Turns blocks of lines into record batches of the metrics table.

    The walk over ``data`` is the hot loop. Shapes of ``data`` seen before
    run a compiled plan (:mod:`replay._plans`); anything else takes the
    general walk, which per value does one type check, one dict lookup (the
    path's interned code) and two list appends. Both give the same rows. The
    message-level columns are gathered once per message and spread over that
    message's rows by Arrow's ``take``.
    """

    def __init__(
        self,
        experiment_id: str,
        rank: int | None,
        schema: pa.Schema,
        order: MetricOrder | None = None,
    ) -> None:
        self.experiment_id = experiment_id
        self.rank = _int64_scalar(rank)
        self.schema = schema
        self.with_experiment_id = schema.names[0] == "experiment_id"
        self.malformed = 0
        self.attempts = _Attempts()
        self.order = MetricOrder() if order is None else order
        self._code_ranks: Any = None  # numpy array: code -> rank in self.order, -1 while none
        self.names: list[str] = []
        self._name_codes: dict[str, int] = {}
        self._names_array: pa.Array = pa.nulls(0, pa.string())
        self.root = _Node("")
        self.codes: list[int] = []
        self.values: list[Any] = []
        self._walk, self._walk_list, self._walk_general = self._make_walkers()
        self.top_plans: dict[tuple[str, ...], Any] = {}
        self._compiler = PlanCompiler(
            self._register,
            self._child,
            self.root,
            {
                "ve": self.values.extend,
                "ce": self.codes.extend,
                "va": self.values.append,
                "ca": self.codes.append,
                "nf": NON_FINITE.get,
                "walk": self._walk,
                "walk_list": self._walk_list,
                "index": _index_value,
                "client_text": _client_text,
            },
        )

    # Paths are interned: each distinct path gets a code once; the rows hold codes.
    def _register(self, node: _Node, key: Any) -> int:
        if node is self.root and key in INDEX_KEYS:
            code = -1
        else:
            path = node.prefix + str(key)
            code = self._name_codes.get(path, -2)
            if code == -2:
                code = self._name_codes[path] = len(self.names)
                self.names.append(path)
        node.codes[key] = code
        return code

    def _child(self, node: _Node, key: Any) -> _Node:
        child = node.children.get(key)
        if child is None:
            child = node.children[key] = _Node(f"{node.prefix}{key}.")
        return child

    def _make_walkers(self) -> tuple[Callable[..., None], Callable[..., None], Callable[..., None]]:
        codes_append = self.codes.append
        values_append = self.values.append
        register = self._register
        child = self._child
        non_finite = NON_FINITE.get

        def walk(mapping: dict[str, Any], node: _Node) -> None:
            shape = tuple(mapping)
            plan = node.plans.get(shape)
            if plan is None and len(node.plans) < MAX_PLANS:
                plan = node.plans[shape] = self._compiler.nested(mapping, node) or False
            if plan and plan(mapping) is not MISS:
                return
            walk_general(mapping, node)

        def walk_general(mapping: dict[str, Any], node: _Node, top: bool = False) -> None:
            """Every value of ``mapping``; at ``data``'s ``top`` level, ``metrics`` adds no path."""
            codes_get = node.codes.get
            for key, value in mapping.items():
                kind = type(value)
                if kind is float or kind is int:
                    code = codes_get(key)
                    if code is None:
                        code = register(node, key)
                    if code >= 0:
                        codes_append(code)
                        values_append(value)
                elif kind is dict:
                    if top and key == "metrics":
                        walk(value, node)
                    else:
                        walk(value, node.children.get(key) or child(node, key))
                elif kind is str:
                    number = non_finite(value)
                    if number is not None:
                        code = codes_get(key)
                        if code is None:
                            code = register(node, key)
                        if code >= 0:
                            codes_append(code)
                            values_append(number)
                elif kind is list:
                    walk_list(value, node.children.get(key) or child(node, key))

        def walk_list(items: list[Any], node: _Node) -> None:
            walk(dict(enumerate(items)), node)  # type: ignore[arg-type]

        return walk, walk_list, walk_general

    def walk_data(self, data: Any) -> None:
        """Append the codes and values of a message's ``data`` without a plan.

        A dict is walked from the root (``data.metrics`` shares it); a number
        is the metric ``value``; a list is walked by position.
        """
        if type(data) is dict:
            self._walk_general(data, self.root, True)
        elif type(data) is list:
            self._walk_list(data, self.root)
        elif data is not None and type(data) is not bool:
            self._walk({"value": data}, self.root)

    def add(self, first_seq: int, lines: list[bytes | None]) -> pa.RecordBatch | None:
        """The rows of one block of lines, or None when it has none."""
        codes, values = self.codes, self.values
        walk_general, root = self._walk_general, self.root
        top_plans = self.top_plans
        decode = decode_line
        counts: list[int] = []
        counts_append = counts.append
        rows: list[tuple[Any, ...]] = []  # per message with values: its message-level columns
        rows_append = rows.append
        attempts = self.attempts
        first_attempt = attempts.current
        malformed = 0
        seq = first_seq - 1
        for line in lines:
            seq += 1
            if line is None:
                malformed += 1
                continue
            try:
                message = decode(line)
            except MalformedLine:
                malformed += 1
                continue
            if message["type"] == ATTEMPT_START:
                attempts.start(len(rows))
            data = message.get("data")
            before = len(values)
            if type(data) is dict:
                shape = tuple(data)
                plan = top_plans.get(shape)
                if plan is None and len(top_plans) < MAX_PLANS:
                    plan = top_plans[shape] = self._compiler.top(data) or False
                if plan:
                    row = plan(data, seq, message.get("timestamp"), message["type"])
                    if row is not MISS:
                        if len(values) > before:
                            counts_append(len(values) - before)
                            rows_append(row)
                        continue
                walk_general(data, root, True)
                if len(values) > before:
                    counts_append(len(values) - before)
                    rows_append(_message_row(data, seq, message.get("timestamp"), message["type"]))
                continue
            self.walk_data(data)
            if len(values) > before:
                counts_append(len(values) - before)
                rows_append((seq, message.get("timestamp"), message["type"], *_NO_INDEX))
        self.malformed += malformed
        if not values:
            attempts.marks.clear()
            return None
        try:
            return self._batch(counts, rows, attempts.column(first_attempt, len(rows)))
        finally:
            codes.clear()
            values.clear()

    def _batch(
        self, counts: list[int], rows: list[tuple[Any, ...]], attempt: pa.Array
    ) -> pa.RecordBatch:
        import numpy as np

        if len(self._names_array) != len(self.names):
            self._names_array = pa.array(self.names, pa.string())
        owner = pa.array(np.repeat(np.arange(len(counts), dtype=np.int64), counts))
        seqs, stamps, types, phases, epochs, steps, rounds, clients = zip(*rows, strict=True)
        per_message = pa.table(
            {
                "seq": pa.array(seqs, pa.int64()),
                "attempt": attempt,
                "timestamp": timestamp_array(stamps),
                "type": pa.array(types, pa.string()),
                "phase": pa.array(phases, pa.string()),
                "epoch": _int_array(epochs),
                "step": _int_array(steps),
                "round": _int_array(rounds),
                "client_id": pa.array(clients, pa.string()),
            }
        ).take(owner)
        n_values = len(self.values)
        columns = []
        if self.with_experiment_id:
            columns.append(pa.repeat(self.experiment_id, n_values))
        columns.append(pa.repeat(self.rank, n_values))
        columns.extend(
            per_message.column(i).combine_chunks() for i in range(per_message.num_columns)
        )
        codes = np.array(self.codes, np.int32)
        values = _float_array(self.values)
        order = self._rank_order(codes, owner.to_numpy())
        if order is not None:
            codes = codes[order]
            values = values.take(pa.array(order))
        columns.append(self._names_array.take(pa.array(codes)))
        columns.append(values)
        return pa.RecordBatch.from_arrays(fit_text(columns, self.schema), schema=self.schema)

    def _rank_order(self, codes: Any, owner: Any) -> Any:
        """The permutation that sorts each message's rows by :class:`MetricOrder`, or None.

        Names that give their first row in this block are ranked here, in the
        order of those rows (the walk's order). None when every message's rows
        are already in rank order (a log that keeps its keys in one order).
        """
        import numpy as np

        ranks = self._code_ranks
        if ranks is None or len(ranks) < len(self.names):
            grown = np.full(len(self.names), -1, np.int64)
            if ranks is not None:
                grown[: len(ranks)] = ranks
            ranks = self._code_ranks = grown
        row_ranks = ranks[codes]
        unranked = row_ranks < 0
        if unranked.any():
            new_codes, first = np.unique(codes[unranked], return_index=True)
            for code in new_codes[np.argsort(first, kind="stable")]:
                ranks[code] = self.order.add(self.names[code])
            row_ranks = ranks[codes]
        if not ((row_ranks[1:] < row_ranks[:-1]) & (owner[1:] == owner[:-1])).any():
            return None
        return np.lexsort((row_ranks, owner))


# --------------------------------------------------------------------------- messages


def _json_text(value: Any) -> bytes:
    """``value`` as compact JSON, the way the recorder writes it."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):  # nesting beyond orjson's limit
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


_DATA_KEY = re.compile(rb'"data"[ \t\r\n]*:')


class _MessageTableBuilder:
    """Turns blocks of lines into record batches of the lossless message table."""

    def __init__(self, experiment_id: str, rank: int | None, schema: pa.Schema) -> None:
        self.experiment_id = experiment_id
        self.rank = _int64_scalar(rank)
        self.schema = schema
        self.with_experiment_id = schema.names[0] == "experiment_id"
        self.malformed = 0
        self.attempts = _Attempts()

    def add(self, first_seq: int, lines: list[bytes | None]) -> pa.RecordBatch | None:
        decode = decode_line
        attempts = self.attempts
        first_attempt = attempts.current
        dumps = _json_text
        seqs: list[int] = []
        types: list[str] = []
        datas: list[bytes | None] = []
        extras: list[bytes | None] = []
        stamps: list[str | None] = []
        malformed = 0
        seq = first_seq - 1
        for line in lines:
            seq += 1
            if line is None:
                malformed += 1
                continue
            try:
                message = decode(line)
            except MalformedLine:
                malformed += 1
                continue
            if message["type"] == ATTEMPT_START:
                attempts.start(len(seqs))
            seqs.append(seq)
            types.append(message["type"])
            stamp = message.get("timestamp")
            if len(message) == 3 and type(stamp) is str and "data" in message:
                # The recorded text of data, byte for byte, when data is the last key: the first
                # '"data":' of such a line is that key (type and timestamp are plain strings, and
                # an unescaped '"' followed by ':' cannot occur inside a JSON string).
                start = line.find(b'"data":') + 7 if next(reversed(message)) == "data" else -1
                if start == 6:  # not found as written by the recorder: allow JSON whitespace
                    found = _DATA_KEY.search(line)
                    start = found.end() if found else -1
                end = line.rfind(b"}")
                if start > 0 and end > start:
                    datas.append(line[start:end].strip(b" \t\r\n"))
                else:
                    datas.append(dumps(message["data"]))
                extras.append(None)
                stamps.append(stamp)
                continue
            datas.append(dumps(message["data"]) if "data" in message else None)
            extra = {k: v for k, v in message.items() if k not in ("type", "timestamp", "data")}
            if type(stamp) is str:
                stamps.append(stamp)
            else:
                stamps.append(None)
                if "timestamp" in message:  # not a string: kept, losslessly, with the extras
                    extra = {"timestamp": stamp, **extra}
            extras.append(dumps(extra) if extra else None)
        self.malformed += malformed
        if not seqs:
            return None
        stamp_text = pa.array(stamps, pa.string())
        columns = []
        if self.with_experiment_id:
            columns.append(pa.repeat(self.experiment_id, len(seqs)))
        columns += [
            pa.repeat(self.rank, len(seqs)),
            pa.array(seqs, pa.int64()),
            attempts.column(first_attempt, len(seqs)),
            timestamp_array(stamps),
            pa.array(types, pa.string()),
            pa.array(datas, pa.string()),
            pa.array(extras, pa.string()),
            stamp_text,
        ]
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)


# --------------------------------------------------------------------------- batches


def _import_meanwhile(name: str) -> None:
    """Start importing module ``name`` on a thread of its own, unless it is imported already.

    ``read_metrics`` needs pandas only at the end, and importing it takes a
    quarter of a second of one core: begun first, it runs while pyarrow parses
    on the other threads (a tenth of a second sooner on 2 cores, 1M lines).
    Whoever imports it next waits for this import to finish (Python's module
    lock); a failure here is left for that import to raise.
    """
    if name in sys.modules:
        return

    def load() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module(name)

    threading.Thread(target=load, name=f"runtail-import-{name}", daemon=True).start()


@contextlib.contextmanager
def _system_allocator() -> Iterator[None]:
    """Arrow allocates with the system allocator meanwhile (``tailer export`` always does).

    Reading allocates and frees one block's arrays after another; on that
    pattern pyarrow's default pool (mimalloc or jemalloc) costs about a third
    more CPU and holds more memory. Buffers keep the pool they came from, so
    switching back afterwards is safe.
    """
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a block is decoded.

    A block allocates tens of thousands of dicts and tuples, none of them in a
    cycle (reference counting frees them all), yet each allocation burst
    triggers collections that cost 10-20 % of the reading time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _run_batches(
    run: Run,
    builder: MetricsBuilder | _MessageTableBuilder,
    skips: SkipCounts,
    *,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[pa.RecordBatch]:
    with open(run.path, "rb") as file:
        blocks = LineBlocks(file)
        done = 0
        for first_seq, lines in blocks:
            if on_bytes is not None:
                on_bytes(blocks.bytes_read - done)
                done = blocks.bytes_read
            with gc_paused():
                batch = builder.add(first_seq, lines)
            if batch is not None:
                yield batch
        if on_bytes is not None and blocks.bytes_read > done:
            on_bytes(blocks.bytes_read - done)
    skips.add(run.path, builder.malformed, blocks.torn)


def metric_batches(
    run: Run,
    skips: SkipCounts,
    *,
    with_experiment_id: bool = True,
    on_bytes: Callable[[int], None] | None = None,
    careful: bool = False,
    dictionary_text: bool = False,
) -> Iterator[pa.RecordBatch]:
    """The metrics table of one run as record batches, one per block of lines read.

    Lines that are not messages are counted into ``skips``; ``on_bytes`` is
    called with the number of bytes read after each block (for progress).
    pyarrow parses the blocks it can read exactly (:mod:`replay._arrow`); the
    others, and every block when ``careful`` is true, are decoded line by line.
    ``dictionary_text``: see :func:`metrics_schema`.
    """
    schema = metrics_schema(with_experiment_id=with_experiment_id, dictionary_text=dictionary_text)
    builder = MetricsBuilder(run.experiment_id, run.rank, schema)
    if careful:
        return _run_batches(run, builder, skips, on_bytes=on_bytes)
    from replay._arrow import fast_metric_batches

    return fast_metric_batches(run, builder, skips, on_bytes=on_bytes)


def metric_block_reader(
    experiment_id: str, *, with_experiment_id: bool = False
) -> Callable[[int, list[bytes | None]], pa.RecordBatch | None]:
    """A function turning consecutive lines into the metrics table's rows, block by block.

    Call it with ``(seq of the first line, lines)`` for each block, in file
    order, lines as :class:`tailer.reader.LineSplitter` gives them (``None``
    for an over-long line); it returns that block's rows, or ``None`` when the
    block has none. The rows and their ``metric`` names are exactly those of
    :func:`read_metrics`: the naming rules stay here, used by whoever reads a
    file incrementally (the tailer's reduced series).
    """
    schema = metrics_schema(with_experiment_id=with_experiment_id)
    return MetricsBuilder(*split_rank(experiment_id), schema).add


def message_batches(
    run: Run,
    skips: SkipCounts,
    *,
    with_experiment_id: bool = True,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """The lossless message table of one run as record batches (see :func:`message_table_schema`)."""
    schema = message_table_schema(with_experiment_id=with_experiment_id)
    return _run_batches(
        run, _MessageTableBuilder(run.experiment_id, run.rank, schema), skips, on_bytes=on_bytes
    )


def _warn_skipped(skips: SkipCounts, skipped_names: list[str]) -> None:
    parts = []
    if skips:
        parts.append(f"skipped {skips.describe()}")
    if skipped_names:
        shown = ", ".join(skipped_names[:5]) + ("..." if len(skipped_names) > 5 else "")
        parts.append(
            f"ignored {len(skipped_names)} file(s) whose name is not an experiment id ({shown})"
        )
    if parts:
        warnings.warn("replay: " + "; ".join(parts), SkippedLinesWarning, stacklevel=3)


# --------------------------------------------------------------------------- pandas


def read_metrics(src: Source) -> Any:
    """Read runs into the long metrics table: one row per numeric value.

    Args:
        src: a run file, a directory of runs (every ``*.jsonl`` directly in
            it), or a list of files and directories.

    Returns:
        A :class:`pandas.DataFrame` with the columns :data:`METRIC_COLUMNS`
        (see the module docstring for dtypes and the naming rules), rows in
        file order, files in the order given (a directory's sorted by name).
        Same columns and dtypes when there are no rows.

    Raises:
        FileNotFoundError: a path in ``src`` does not exist.

    Lines that are not messages (malformed, or a torn last line) are skipped;
    one :class:`SkippedLinesWarning` per call says how many and where.

    Example::

        df = replay.read_metrics("runs/")
        df[df.metric == "loss"].pivot_table(index="round", columns="client_id", values="value")
    """
    skipped_names: list[str] = []
    runs = resolve_sources(src, skipped=skipped_names)
    skips = SkipCounts()
    schema = metrics_schema()
    _import_meanwhile("pandas")
    with _system_allocator():
        batches = [batch for run in runs for batch in metric_batches(run, skips)]
        table = pa.Table.from_batches(batches, schema=schema)
        del batches
        _warn_skipped(skips, skipped_names)
        return table.to_pandas(self_destruct=True, split_blocks=True)


def read_messages(src: Source) -> Any:
    """Read runs into a message table: one row per message.

    Args:
        src: a run file, a directory of runs, or a list of them (as for :func:`read_metrics`).

    Returns:
        A :class:`pandas.DataFrame` with the columns ``experiment_id`` (str:
        the run, a per-rank file's stem less its ``.rank<N>``), ``rank``
        (Int64: that ``N``, null for other files), ``seq`` (int64: the line's 0-based index in its file, every line
        counting, as on the tailer's wire), ``attempt`` (Int64: 0, then +1
        at every later ``training_start`` in the same file), ``timestamp`` (datetime64[us, UTC],
        NaT when missing or unparsable), ``type`` (str) and ``data`` (the
        message's ``data`` as Python objects, the strings ``"NaN"``,
        ``"Infinity"`` and ``"-Infinity"`` turned back into floats; None when
        the message had no ``data``). Top-level keys beyond type, timestamp
        and data are in ``tailer export --table messages``.

    Raises:
        FileNotFoundError: a path in ``src`` does not exist.
    """
    import pandas as pd

    skipped_names: list[str] = []
    runs = resolve_sources(src, skipped=skipped_names)
    skips = SkipCounts()
    ids: list[pa.Array] = []
    ranks: list[pa.Array] = []
    attempt_columns: list[pa.Array] = []
    seqs: list[int] = []
    stamps: list[Any] = []
    types: list[str] = []
    datas: list[Any] = []
    decode = decode_line
    restore = restore_non_finite
    # The decoded messages stay alive (they are the data column) and hold no cycles:
    # collections would only rescan them, more often the more there are.
    with gc_paused():
        for run in runs:
            count = 0
            malformed = 0
            attempts = _Attempts()
            with open(run.path, "rb") as file:
                blocks = LineBlocks(file)
                for first_seq, lines in blocks:
                    seq = first_seq - 1
                    for line in lines:
                        seq += 1
                        if line is None:
                            malformed += 1
                            continue
                        try:
                            message = decode(line)
                        except MalformedLine:
                            malformed += 1
                            continue
                        if message["type"] == ATTEMPT_START:
                            attempts.start(count)
                        seqs.append(seq)
                        stamps.append(message.get("timestamp"))
                        types.append(message["type"])
                        data = message.get("data")
                        # Only a line that spells a non-finite value (or escapes one) needs the walk.
                        if b'NaN"' in line or b'Infinity"' in line or b"\\u" in line:
                            data = restore(data)
                        datas.append(data)
                        count += 1
            skips.add(run.path, malformed, blocks.torn)
            ids.append(pa.repeat(run.experiment_id, count))
            ranks.append(pa.repeat(pa.scalar(run.rank, pa.int64()), count))
            attempt_columns.append(attempts.column(0, count))
    fields = [pa.field(name, _METRIC_TYPES[name]) for name in MESSAGE_COLUMNS[:-1]]
    schema = pa.schema(fields, metadata={b"pandas": _pandas_metadata(fields, _NULLABLE_INTS)})
    table = pa.Table.from_arrays(
        [
            pa.chunked_array(ids, pa.string()),
            pa.chunked_array(ranks, pa.int64()),
            pa.array(seqs, pa.int64()),
            pa.chunked_array(attempt_columns, pa.int64()),
            timestamp_array(stamps),
            pa.array(types, pa.string()),
        ],
        schema=schema,
    )
    _warn_skipped(skips, skipped_names)
    frame = table.to_pandas()
    frame["data"] = pd.Series(datas, dtype=object, index=frame.index)
    return frame
