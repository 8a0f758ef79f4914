"""Reduced series for large runs: a columnar store per run file and its M4 reduction.

A run that logs every step has hundreds of thousands of lines; the page
cannot draw (or even receive) each of them. A :class:`SeriesStore` keeps the
numeric values of one file in a few numpy columns, ~16 bytes a value:

* per message that has values: its ``seq``, timestamp, ``step``, ``epoch``
  and ``round`` (float64, NaN when absent);
* per series — one ``(metric, type, phase, client_id)`` of
  :func:`replay.read_metrics`' rows, whose naming rules it uses as they are
  (:func:`replay.tables.metric_block_reader`) — the message index (int32)
  and the value (float64) of each point.

It is built from the file's bytes block by block, continuing from where it
stopped, and never past the offset the tailer's reader has numbered, so
every answer covers exactly the lines ``0 … seq`` and a client continues
with the WebSocket's ``since=seq``.

:func:`reduce_m4` answers a request for one x-range and a width in pixels:
the raw points when there are few enough, else, per pixel column, the first,
last, lowest and highest point (M4: Jugel et al., VLDB 2014) — real points
only, so every spike survives at every zoom.

Pure computation and file reads, no asyncio: :mod:`tailer.series_api` runs
it on worker threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from recorder.format import (
    MAX_LINE_BYTES,
    MalformedLine,
    decode_line,
    parse_timestamp,
    wire_payload,
)
from tailer.reader import LineSplitter

__all__ = [
    "BULK_TYPES",
    "X_KINDS",
    "SeriesQuery",
    "SeriesStore",
    "reduce_m4",
]

#: Message types that carry only values (one per step, typically): they reach the page as
#: reduced series. Every other message (status, epoch_end, hparams...) is kept whole as an
#: event, so a page can rebuild a run's state without receiving its every line.
BULK_TYPES = frozenset(
    {"batch_metrics", "gradient_stats", "lr_update", "system_metrics", "metrics"}
)

#: What a series can be drawn against: ``time`` is seconds since the run's first message,
#: ``wall`` milliseconds since the Unix epoch (what a plotly date axis takes).
X_KINDS = ("step", "epoch", "round", "seq", "time", "wall")

#: Bytes read from the file per block.
BLOCK_BYTES = 1 << 20
#: Events (non-bulk messages) kept per run, in bytes of their wire form; past it the
#: oldest are dropped (and counted), keeping the first ``KEEP_FIRST_EVENTS``.
MAX_EVENT_BYTES = 16 << 20
KEEP_FIRST_EVENTS = 256


@dataclass(frozen=True)
class SeriesQuery:
    """One request: which run and metric, against what, over which range, at what width."""

    run: str
    metric: str | None = None
    x: str = "step"
    x0: float | None = None
    x1: float | None = None
    width: int = 1000
    max_raw: int = 20_000
    events: bool = True
    upto: int | None = None
    #: Answer only for a run whose file is bigger than this many bytes (else 204, no body).
    if_over: int | None = None
    #: With the catalogue, the series of every metric of a bulk type (``metrics``), as
    #: ``metric=`` answers them with this query's ``x``, range, width and ``max_raw``.
    bulk: bool = False


#: Whole numbers up to this magnitude are exact in float32.
_FLOAT32_EXACT = float(2**24)


def _fits_float32(values: np.ndarray) -> bool:
    """Whether every value is NaN or a whole number float32 holds exactly."""
    with np.errstate(invalid="ignore"):
        whole = (np.abs(values) <= _FLOAT32_EXACT) & (values == np.floor(values))
    return bool((whole | np.isnan(values)).all())


class _Column:
    """A growable numpy array (amortised appends; views of it stay valid).

    A ``narrow`` float64 column (seq, step, epoch, round: whole numbers in
    practice) is kept as float32 while every value is NaN or a whole number
    of magnitude up to 2**24, which float32 holds exactly; the first value
    that is not turns it into float64 for good. Half the memory, no value
    ever rounded.
    """

    __slots__ = ("data", "narrow", "size")

    def __init__(self, dtype: Any, capacity: int = 256, *, narrow: bool = False) -> None:
        self.narrow = narrow
        self.data = np.empty(capacity, np.float32 if narrow else dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        if self.narrow and not _fits_float32(values):
            self.narrow = False
            self.data = self.data.astype(np.float64)
        end = self.size + len(values)
        if end > len(self.data):
            self.reserve(max(end, len(self.data) * 3 // 2))
        self.data[self.size : end] = values
        self.size = end

    def reserve(self, capacity: int) -> None:
        """Room for ``capacity`` values (pages not written to cost no memory)."""
        if capacity > len(self.data):
            grown = np.empty(capacity, self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown

    def view(self) -> np.ndarray:
        return self.data[: self.size]

    @property
    def nbytes(self) -> int:
        """Bytes of the values held."""
        return self.size * self.data.itemsize


class _XCache:
    """A series' x values against one x kind, kept while they stay sorted and extended as it grows.

    A zoom then costs a binary search and a slice instead of a gather of
    every point; a series whose x is missing somewhere or goes back stops
    using it (``usable`` false) and is sorted per request.
    """

    __slots__ = ("done", "key", "usable", "xs")

    def __init__(self, key: tuple[str, float | None]) -> None:
        self.key = key
        self.xs = _Column(np.float64, narrow=True)
        self.done = 0  # points of the series covered
        self.usable = True

    def extend(self, new: np.ndarray) -> None:
        if not self.usable or not len(new):
            return
        if (
            np.isnan(new).any()
            or (len(new) > 1 and not (new[1:] >= new[:-1]).all())
            or (self.xs.size and new[0] < self.xs.data[self.xs.size - 1])
        ):
            self.usable = False
            self.xs = _Column(np.float64, 0, narrow=True)
            return
        self.xs.extend(new)
        self.done += len(new)


class _Series:
    """The points of one ``(metric, type, phase, client_id)``: message index and value."""

    __slots__ = ("cache", "client_id", "index", "metric", "phase", "type", "values")

    def __init__(self, metric: str, kind: str, phase: str | None, client_id: str | None) -> None:
        self.metric = metric
        self.type = kind
        self.phase = phase
        self.client_id = client_id
        self.index = _Column(np.int32)
        self.values = _Column(np.float64)
        self.cache: _XCache | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "type": self.type,
            "phase": self.phase,
            "client_id": self.client_id,
            "bulk": self.type in BULK_TYPES,
            "points": self.index.size,
        }


def _as_float(column: Any) -> np.ndarray:
    """An Arrow integer or float column as float64, nulls as NaN."""
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _codes(column: Any, table: dict[Any, int]) -> np.ndarray:
    """Small integer codes of a string column (null included), stable across blocks."""
    encoded = column.dictionary_encode()
    local = np.array(
        [table.setdefault(v, len(table)) for v in [*encoded.dictionary.to_pylist(), None]],
        dtype=np.int64,
    )
    indices = encoded.indices.fill_null(len(encoded.dictionary)).to_numpy(zero_copy_only=False)
    return local[indices]


class SeriesStore:
    """The numeric series of one run file, kept as columns, extended block by block.

    Not thread-safe by itself: callers hold :attr:`lock` around :meth:`catch_up`
    and :meth:`answer` (:mod:`tailer.series_api` does).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        experiment_id: str,
        *,
        generation: int = 0,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        from replay.tables import metric_block_reader  # pyarrow: loaded on first use only

        self.path = os.fspath(path)
        self.experiment_id = experiment_id
        self.generation = generation
        self.lock = threading.Lock()
        self.max_line_bytes = max_line_bytes
        self.splitter = LineSplitter(max_line_bytes=max_line_bytes)
        self._rows = metric_block_reader(experiment_id)
        # Per message with values.
        self.msg_seq = _Column(np.float64, narrow=True)
        self.msg_time = _Column(np.float64)  # microseconds since the Unix epoch (exact below 2**53)
        self.msg_step = _Column(np.float64, narrow=True)
        self.msg_epoch = _Column(np.float64, narrow=True)
        self.msg_round = _Column(np.float64, narrow=True)
        self.series: dict[tuple[int, int, int, int], _Series] = {}
        self.by_metric: dict[str, list[_Series]] = {}
        self._names: dict[str, dict[Any, int]] = {
            k: {} for k in ("metric", "type", "phase", "client")
        }
        self.first_timestamp: float | None = None
        self.events: list[bytes] = []
        self.event_bytes = 0
        self.events_dropped = 0
        self.messages = 0  # valid messages kept as events, plus lines of bulk types

    # ------------------------------------------------------------------ size

    @property
    def last_seq(self) -> int:
        """The last line this store covers (-1 before the first)."""
        return self.splitter.next_seq - 1

    @property
    def offset(self) -> int:
        """Bytes of the file this store covers."""
        return self.splitter.consumed

    def _columns(self) -> list[_Column]:
        columns = [self.msg_seq, self.msg_time, self.msg_step, self.msg_epoch, self.msg_round]
        for s in self.series.values():
            columns += [s.index, s.values]
            if s.cache is not None:
                columns.append(s.cache.xs)
        return columns

    @property
    def nbytes(self) -> int:
        """Memory held by the columns' values and the events (room reserved but not yet
        written to is not counted: the system gives it pages only when written)."""
        return sum(c.nbytes for c in self._columns()) + self.event_bytes

    # ------------------------------------------------------------------ building

    def catch_up(self, end_offset: int, *, on_block: Callable[[], None] | None = None) -> None:
        """Read the file from where this store stopped up to ``end_offset`` (a line boundary).

        ``end_offset`` is the offset the tailer's reader has numbered: the
        store never covers a line the WebSocket has not numbered yet.
        ``on_block`` is called after each block (tests pause there).
        """
        if self.splitter.consumed >= end_offset:
            return
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            splitter = self.splitter
            start, reserved = splitter.consumed, False
            while splitter.consumed < end_offset:
                want = min(BLOCK_BYTES, end_offset - splitter.read_pos)
                data = os.pread(fd, want, splitter.read_pos) if want > 0 else b""
                if not data:
                    break  # the file shrank under us: the reader's generation will tell
                first = splitter.next_seq
                self.add_lines(first, splitter.feed(data))
                if not reserved and end_offset - splitter.consumed > 4 * BLOCK_BYTES:
                    self._reserve(splitter.consumed - start, end_offset - splitter.consumed)
                reserved = True
                if on_block is not None:
                    on_block()
        finally:
            os.close(fd)

    def _reserve(self, read: int, left: int) -> None:
        """Room for the ``left`` bytes still to read, at the rate of the ``read`` just read.

        A long read then fills its columns in place instead of copying each into
        one half as big again every so often (a copy that, for a moment, holds
        both), and ends with no spare room beyond a few percent.
        """
        scale = 1.02 * (read + left) / max(read, 1)
        for column in self._columns():
            column.reserve(int(column.size * scale) + 256)

    def add_lines(self, first_seq: int, lines: list[bytes | None]) -> None:
        """Add consecutive lines starting at ``first_seq`` (``None``: an over-long line)."""
        batch = self._rows(first_seq, lines)
        if batch is not None:
            self._add_rows(batch)
        self._add_events(first_seq, lines)

    def _add_rows(self, batch: Any) -> None:
        seq = batch.column("seq").to_numpy()
        starts = np.empty(len(seq), dtype=bool)
        starts[0] = True
        np.not_equal(seq[1:], seq[:-1], out=starts[1:])
        firsts = np.flatnonzero(starts)
        message_of_row = (self.msg_seq.size - 1) + np.cumsum(starts)
        names = batch.schema.names
        column = {name: batch.column(i) for i, name in enumerate(names)}
        import pyarrow as pa

        micros = _as_float(column["timestamp"].cast(pa.int64()))
        self.msg_seq.extend(seq[firsts].astype(np.float64))
        self.msg_time.extend(micros[firsts])
        self.msg_step.extend(_as_float(column["step"])[firsts])
        self.msg_epoch.extend(_as_float(column["epoch"])[firsts])
        self.msg_round.extend(_as_float(column["round"])[firsts])
        if self.first_timestamp is None and self.msg_time.size:
            first = self.msg_time.data[0]
            self.first_timestamp = None if np.isnan(first) else float(first)

        keys = np.stack(
            [
                _codes(column["metric"], self._names["metric"]),
                _codes(column["type"], self._names["type"]),
                _codes(column["phase"], self._names["phase"]),
                _codes(column["client_id"], self._names["client"]),
            ],
            axis=1,
        )
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(unique) + 1))
        values = column["value"].to_numpy()
        lookup = {
            k: {code: name for name, code in table.items()} for k, table in self._names.items()
        }
        for u, key_codes in enumerate(unique.tolist()):
            rows = order[bounds[u] : bounds[u + 1]]
            key = tuple(key_codes)
            series = self.series.get(key)
            if series is None:
                metric = lookup["metric"][key[0]]
                series = _Series(
                    metric,
                    lookup["type"][key[1]],
                    lookup["phase"][key[2]],
                    lookup["client"][key[3]],
                )
                self.series[key] = series
                self.by_metric.setdefault(metric, []).append(series)
            series.index.extend(message_of_row[rows])
            series.values.extend(values[rows])

    def _add_events(self, first_seq: int, lines: list[bytes | None]) -> None:
        """Keep every valid message that is not of a bulk type, in its wire form."""
        limit = self.max_line_bytes
        seq = first_seq - 1
        for line in lines:
            seq += 1
            if line is None:
                continue
            if _is_bulk(line):
                self.messages += 1
                continue
            try:
                message = decode_line(line, max_bytes=limit)
            except MalformedLine:
                continue
            self.messages += 1
            if message["type"] in BULK_TYPES:
                continue
            frame = wire_payload(line, self.experiment_id, seq)
            self.events.append(frame)
            self.event_bytes += len(frame)
        if self.event_bytes > MAX_EVENT_BYTES:
            self._drop_events()

    def _drop_events(self) -> None:
        keep, drop = KEEP_FIRST_EVENTS, 0
        while self.event_bytes > MAX_EVENT_BYTES * 3 // 4 and keep + drop < len(self.events):
            self.event_bytes -= len(self.events[keep + drop])
            drop += 1
        del self.events[keep : keep + drop]
        self.events_dropped += drop

    # ------------------------------------------------------------------ answering

    def x_values(self, kind: str, t0: float | None) -> np.ndarray:
        """The x of every message (NaN where it has none) for an x kind of :data:`X_KINDS`.

        ``t0`` is the run's first timestamp in microseconds since the Unix epoch
        (the first message's, which may carry no value); by default the first
        valued message's.
        """
        if kind == "step":
            return self.msg_step.view()
        if kind == "epoch":
            return self.msg_epoch.view()
        if kind == "round":
            return self.msg_round.view()
        if kind == "seq":
            return self.msg_seq.view()
        if kind == "time":
            origin = t0 if t0 is not None else self.first_timestamp
            return (self.msg_time.view() - (origin or 0.0)) / 1e6
        if kind == "wall":
            return self.msg_time.view() / 1000.0
        raise ValueError(f"x must be one of {', '.join(X_KINDS)}, not {kind!r}")

    def _drawable(
        self, series: _Series, key: tuple[str, float | None], x_all: np.ndarray, end: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The first ``end`` points of ``series`` with an x, in x order: ``(xs, ys)``."""
        cache = series.cache
        if cache is None or cache.key != key:
            cache = series.cache = _XCache(key)
        total = series.index.size
        if cache.usable and cache.done < total:
            cache.extend(x_all[series.index.data[cache.done : total]])
        if cache.usable:
            return cache.xs.data[:end], series.values.data[:end]
        xs = x_all[series.index.data[:end]]
        ys = series.values.data[:end]
        keep = ~np.isnan(xs)
        if not keep.all():
            xs, ys = xs[keep], ys[keep]
        if len(xs) > 1 and not (xs[1:] >= xs[:-1]).all():
            order = np.argsort(xs, kind="stable")  # a resumed run stepping back: x order
            xs, ys = xs[order], ys[order]
        return xs, ys

    def catalogue(self, query: SeriesQuery, *, t0: float | None = None) -> dict[str, Any]:
        """What a page needs to open a run: its series, its events unless left out, and
        with ``bulk`` the series of its bulk metrics."""
        answer: dict[str, Any] = {
            "run": self.experiment_id,
            "seq": self.last_seq,
            "messages": self.messages,
            "series": [s.describe() for s in self.series.values()],
        }
        if query.bulk:
            # One snapshot: every bulk metric up to the catalogue's seq (the lock is held).
            names = dict.fromkeys(s.metric for s in self.series.values() if s.type in BULK_TYPES)
            answer["metrics"] = [
                self.answer(replace(query, metric=name, upto=None, bulk=False), t0=t0)
                for name in names
            ]
        if query.events:
            answer["events_dropped"] = self.events_dropped
            answer["events"] = self.events
        return answer

    def answer(self, query: SeriesQuery, *, t0: float | None = None) -> dict[str, Any]:
        """The reduced series of ``query.metric`` (every series of that name), or the catalogue."""
        if query.metric is None:
            return self.catalogue(query, t0=t0)
        x_all = self.x_values(query.x, t0)
        last_seq = self.last_seq
        messages = len(x_all)
        if query.upto is not None and query.upto < last_seq:
            # Several requests answered up to one seq: one consistent snapshot of the run.
            last_seq = query.upto
            messages = int(np.searchsorted(self.msg_seq.view(), query.upto, "right"))
        out = []
        for series in self.by_metric.get(query.metric, ()):
            index = series.index.view()
            end = len(index)
            if messages < len(x_all):
                end = int(np.searchsorted(index, messages, "left"))
            xs, ys = self._drawable(series, (query.x, t0), x_all, end)
            x0 = query.x0 if query.x0 is not None else (float(xs[0]) if len(xs) else 0.0)
            x1 = query.x1 if query.x1 is not None else (float(xs[-1]) if len(xs) else 0.0)
            picked_x, picked_y, reduced, count = reduce_m4(
                xs, ys, x0, x1, query.width, query.max_raw
            )
            out.append(
                {
                    **series.describe(),
                    "count": count,
                    "reduced": reduced,
                    "x": _compact(picked_x),
                    "y": picked_y,
                }
            )
        return {
            "run": self.experiment_id,
            "metric": query.metric,
            "x": query.x,
            "seq": last_seq,
            "width": query.width,
            "series": out,
        }


def _is_bulk(line: bytes) -> bool:
    """Whether a line as the recorder writes it (``{"type":"...``) is of a bulk type."""
    if not line.startswith(b'{"type":"'):
        return False
    end = line.find(b'"', 9)
    return end > 0 and line[9:end].decode("ascii", "replace") in BULK_TYPES


def _compact(xs: np.ndarray) -> np.ndarray:
    """Whole-number x values as integers (``12`` rather than ``12.0`` on the wire)."""
    if (
        len(xs)
        and np.isfinite(xs).all()
        and (xs == np.floor(xs)).all()
        and np.abs(xs).max() < 2**53
    ):
        return xs.astype(np.int64)
    return xs


def _first_in_bucket(mask: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per bucket ``[start, end)``, the first index where ``mask`` holds, or -1."""
    hits = np.flatnonzero(mask)
    pos = np.searchsorted(hits, starts)
    found = np.full(len(starts), -1, dtype=np.int64)
    inside = pos < len(hits)
    inside[inside] = hits[pos[inside]] < ends[inside]
    found[inside] = hits[pos[inside]]
    return found


def reduce_m4(
    xs: np.ndarray, ys: np.ndarray, x0: float, x1: float, width: int, max_raw: int
) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """The points of ``[x0, x1]`` to draw at ``width`` pixel columns: ``(x, y, reduced, count)``.

    ``xs`` must be sorted. ``count`` is the number of points in the range.
    When it is at most ``max_raw`` the raw points come back; otherwise the
    range is cut into ``width`` equal columns and each keeps its first, last,
    lowest and highest finite point, and its first non-finite one (a gap), in
    x order. Either way the nearest point on each side outside the range is
    added, so lines run to the edges of a zoomed chart. Values are returned
    as they are (non-finite ones included: JSON writes them as null).
    """
    n = len(xs)
    lo = int(np.searchsorted(xs, x0, "left"))
    hi = int(np.searchsorted(xs, x1, "right"))
    count = max(hi - lo, 0)
    a, b = max(lo - 1, 0), min(max(hi, lo) + 1, n)
    if count <= max_raw or x1 <= x0:
        return xs[a:b], ys[a:b], False, count
    inside_y = ys[lo:hi]
    edges = x0 + (x1 - x0) * np.arange(1, width) / width  # column k: [edges[k-1], edges[k])
    starts = np.concatenate(([0], np.searchsorted(xs[lo:hi], edges, "left")))
    ends = np.append(starts[1:], count)
    filled = ends > starts
    starts, ends = starts[filled], ends[filled]
    finite = np.isfinite(inside_y)
    low = np.where(finite, inside_y, np.inf)
    high = np.where(finite, inside_y, -np.inf)
    sizes = ends - starts
    mins = np.minimum.reduceat(low, starts)
    maxs = np.maximum.reduceat(high, starts)
    argmin = _first_in_bucket(low == np.repeat(mins, sizes), starts, ends)
    argmax = _first_in_bucket(high == np.repeat(maxs, sizes), starts, ends)
    gaps = _first_in_bucket(~finite, starts, ends)
    picks: Iterable[np.ndarray] = (starts, ends - 1, argmin, argmax, gaps[gaps >= 0])
    chosen = np.unique(np.concatenate(list(picks))) + lo
    if lo > 0:
        chosen = np.concatenate(([lo - 1], chosen))
    if hi < n:
        chosen = np.append(chosen, hi)
    return xs[chosen], ys[chosen], True, count


def parse_first_timestamp(text: str | None) -> float | None:
    """A reader's ``first_timestamp`` in microseconds since the Unix epoch (None if unparsable)."""
    if not text:
        return None
    try:
        stamp = parse_timestamp(text)
        return float(
            (stamp - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
        )
    except (ValueError, TypeError, OverflowError):
        return None
