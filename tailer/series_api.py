"""``GET /api/series``: reduced series of a run, answered off the event loop.

:class:`SeriesService` keeps one :class:`~tailer.series.SeriesStore` per run
that was asked for, least recently used first out once they hold more than
``max_bytes``. A request snapshots the run's reader on the event loop — its
generation and the offset up to which its lines are numbered — then brings
the store up to that offset and computes the answer on a worker thread, so a
cold 1,000,000-line file never holds the loop: other clients' lines keep
flowing while it is read.

Races, in order:

1. The snapshot ``(generation, consumed)`` is taken on the loop, where the
   reader updates both together; the store reads bytes below ``consumed``
   only, so it never covers a line the WebSocket has not numbered.
2. The worker brings the store to that offset and answers with the last
   ``seq`` it covers: a client then subscribes with ``since=seq`` and gets
   every later line exactly once.
3. If the file was truncated or replaced meanwhile (the generation moved),
   the answer is thrown away with the store and the request starts over
   on a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from recorder.format import MalformedLine, decode_line, is_valid_experiment_id, parse_timestamp
from tailer.reader import FileReader
from tailer.routes import RequestError
from tailer.series import X_KINDS, SeriesQuery, SeriesStore, parse_first_timestamp

__all__ = ["DEFAULT_STORE_BYTES", "SeriesBuilding", "SeriesService", "parse_series_query"]

log = logging.getLogger("tailer")

#: Memory the stores of all runs may hold together before the least recently used go.
DEFAULT_STORE_BYTES = 512 << 20
#: Runs whose file is at least this big get their store built in the background at start
#: (see warm()); about the page's 20,000 lines ...
WARM_FROM_BYTES = 2 << 20
#: ... if their last line is at most this many seconds old (a run being trained now) ...
WARM_ACTIVE_S = 3600.0
#: ... the most recent this many of them. Any other run is read when first asked for.
WARM_RUNS = 2
#: Bytes of store per byte of file, as estimated for warming (batch lines with two values).
_STORE_PER_FILE_BYTE = 0.45
#: Seconds between two steps of a warm build that follows the tailer's start-up read.
_WARM_STEP_S = 0.5
MAX_WIDTH = 10_000
MAX_RAW = 200_000
#: Answers at least this long are compressed when the client accepts gzip.
GZIP_FROM = 2048
#: Seconds a request waits for a run being read before it is answered 503 (retry): well
#: within the handshake timeout that also bounds an HTTP request.
BUILD_WAIT_S = 5.0
_ATTEMPTS = 3


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _number(query: Mapping[str, list[str]], name: str) -> float | None:
    text = _one(query, name)
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise RequestError(400, f"{name} must be a finite number, not {text[:40]!r}")
    return value


def _count(query: Mapping[str, list[str]], name: str, default: int, top: int) -> int:
    text = _one(query, name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= top:
        raise RequestError(400, f"{name} must be an integer from 1 to {top}, not {text[:40]!r}")
    return value


def _size(query: Mapping[str, list[str]], name: str) -> int | None:
    text = _one(query, name)
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 18:
        raise RequestError(400, f"{name} must be a number of bytes, not {text[:40]!r}")
    return int(text)


def _upto(query: Mapping[str, list[str]]) -> int | None:
    text = _one(query, "upto")
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -2
    if value < -1:
        raise RequestError(400, f"upto must be an integer >= -1, not {text[:40]!r}")
    return value


def parse_series_query(query: Mapping[str, list[str]]) -> SeriesQuery:
    """The parameters of ``/api/series``; an invalid run id is a 404, a bad value a 400."""
    run = _one(query, "run")
    if run is None or not is_valid_experiment_id(run):
        raise RequestError(404, "no such experiment")
    x = _one(query, "x") or "step"
    if x not in X_KINDS:
        raise RequestError(400, f"x must be one of {', '.join(X_KINDS)}, not {x[:40]!r}")
    x0, x1 = _number(query, "x0"), _number(query, "x1")
    if x0 is not None and x1 is not None and x1 < x0:
        raise RequestError(400, "x1 must not be below x0")
    return SeriesQuery(
        run=run,
        metric=_one(query, "metric") or None,
        x=x,
        x0=x0,
        x1=x1,
        width=_count(query, "width", 1000, MAX_WIDTH),
        max_raw=_count(query, "max_raw", SeriesQuery.max_raw, MAX_RAW),
        events=_one(query, "events") != "0",
        upto=_upto(query),
        if_over=_size(query, "if_over"),
        bulk=_one(query, "bulk") == "1",
    )


def _encode(answer: dict[str, Any]) -> bytes:
    """The answer as JSON; events, already JSON (wire frames), are spliced in as they are."""
    events = answer.pop("events", None)
    body = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if events is None:
        return body
    return body[:-1] + b',"events":[' + b",".join(events) + b"]}"


class SeriesBuilding(RequestError):
    """503: the run's file is still being read; ``Retry-After`` says when to ask again."""

    def __init__(self, done: float) -> None:
        super().__init__(503, f"reading the run: {done:.0%} done; retry")
        self.done = done


class SeriesService:
    """The stores of the runs asked for, and the worker threads that fill and query them."""

    def __init__(
        self,
        reader_for: Callable[[str], FileReader | None],
        *,
        max_bytes: int = DEFAULT_STORE_BYTES,
        workers: int = 2,
    ) -> None:
        self.reader_for = reader_for
        self.max_bytes = max_bytes
        self.stores: OrderedDict[str, SeriesStore] = OrderedDict()
        self.build_wait = BUILD_WAIT_S
        self._building: dict[str, asyncio.Future[None]] = {}
        self._warming: set[asyncio.Task[None]] = set()
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="tailer-series")

    def close(self) -> None:
        for task in self._warming:
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def bigger_than(self, run: str, size: int) -> bool:
        """Whether ``run`` has a file of more than ``size`` bytes (``if_over``)."""
        reader = self.reader_for(run)
        return reader is not None and reader.exists and reader.size > size

    async def respond(self, query: SeriesQuery, *, gzip_ok: bool) -> tuple[bytes, bool]:
        """``(body, gzipped)`` of the answer to ``query``; 404 for a run without a file."""
        loop = asyncio.get_running_loop()
        for _ in range(_ATTEMPTS):
            reader = self.reader_for(query.run)
            if reader is None or not reader.exists:
                self.stores.pop(query.run, None)
                raise RequestError(404, "no such experiment")
            generation, end_offset = reader.generation, reader.consumed
            t0 = parse_first_timestamp(reader.first_timestamp)
            backlog = reader.backlog_end > end_offset  # the tailer still reads it in
            store = self.stores.get(query.run)
            if store is None or store.generation != generation:
                store = SeriesStore(
                    reader.path,
                    query.run,
                    generation=generation,
                    max_line_bytes=reader.max_line_bytes,
                )
                self.stores[query.run] = store
            self.stores.move_to_end(query.run)
            if backlog:
                # The tailer is still numbering the file's lines (start-up): an answer now
                # would cover a fraction of the run. Read what is numbered meanwhile.
                self._build_soon(store, end_offset)
                raise SeriesBuilding(end_offset / reader.backlog_end)
            if store.offset < end_offset:
                await self._built(store, end_offset)
            body = await loop.run_in_executor(
                self._executor, _answer, store, query, end_offset, t0, gzip_ok
            )
            if reader.generation == generation and self.reader_for(query.run) is reader:
                self._evict(keep=query.run)
                return body
            if self.stores.get(query.run) is store:
                del self.stores[query.run]
        raise RequestError(503, "the run's file keeps changing; try again")

    def _build_soon(self, store: SeriesStore, end_offset: int) -> asyncio.Future[None]:
        """The background read of ``store`` (one at a time per run), started if none runs."""
        building = self._building.get(store.experiment_id)
        if building is None or building.done():
            loop = asyncio.get_running_loop()
            building = loop.run_in_executor(self._executor, _build, store, end_offset)
            building.add_done_callback(_log_failure)
            self._building[store.experiment_id] = building
        return building

    async def _built(self, store: SeriesStore, end_offset: int) -> None:
        """Wait for ``store`` to be read up to ``end_offset``, at most :attr:`build_wait` seconds.

        Past that the request gets :class:`SeriesBuilding` (503 with
        ``Retry-After``) while the read goes on: a cold file of millions of lines
        never runs into the handshake timeout, and the client asks again.
        """
        while store.offset < end_offset:
            building = self._build_soon(store, end_offset)
            try:
                await asyncio.wait_for(asyncio.shield(building), self.build_wait)
            except TimeoutError:
                raise SeriesBuilding(store.offset / max(end_offset, 1)) from None
            if building.exception() is not None:
                raise RequestError(500, "could not read the run's series") from None

    def warm(self, readers: Iterable[FileReader], *, min_bytes: int = WARM_FROM_BYTES) -> None:
        """Build the stores of long runs being trained now, in the background.

        A page opening such a run then gets its series at once instead of
        waiting for the file to be read (seconds for a million lines); later
        requests only read what was appended since. Taken: runs of at least
        ``min_bytes`` whose last line is at most :data:`WARM_ACTIVE_S` old (by its
        timestamp, as the runs list's ``stale``; the file's mtime without one),
        the :data:`WARM_RUNS` most recent, while their estimated size fits in
        :attr:`max_bytes`. Finished runs cost no memory until a page asks for
        them. Each build follows the tailer's own start-up read of the file.
        """
        now = time.time()
        recent = []
        for reader in readers:
            if reader.exists and reader.size >= min_bytes:
                last = _last_line_time(reader.path)
                if last is not None and now - last <= WARM_ACTIVE_S:
                    recent.append((last, reader))
        recent.sort(key=lambda pair: pair[0], reverse=True)
        budget: float = self.max_bytes
        for _, reader in recent[:WARM_RUNS]:
            estimate = reader.size * _STORE_PER_FILE_BYTE
            if estimate > budget or reader.experiment_id in self.stores:
                continue
            budget -= estimate
            store = SeriesStore(
                reader.path,
                reader.experiment_id,
                generation=reader.generation,
                max_line_bytes=reader.max_line_bytes,
            )
            self.stores[reader.experiment_id] = store
            task = asyncio.get_running_loop().create_task(self._warm(reader, store))
            self._warming.add(task)
            task.add_done_callback(self._warming.discard)

    async def _warm(self, reader: FileReader, store: SeriesStore) -> None:
        """Read ``store`` along with the tailer's start-up read of its file, to the end."""
        while (
            self.stores.get(store.experiment_id) is store and reader.generation == store.generation
        ):
            backlog = reader.backlog_end > reader.consumed
            if store.offset < reader.consumed:
                with contextlib.suppress(Exception):  # logged by _log_failure
                    await self._build_soon(store, reader.consumed)
            if not backlog:
                return
            await asyncio.sleep(_WARM_STEP_S)

    def _evict(self, *, keep: str) -> None:
        """Drop the least recently used stores past :attr:`max_bytes` (never ``keep``)."""
        total = sum(store.nbytes for store in self.stores.values())
        for run in list(self.stores):
            if total <= self.max_bytes:
                return
            if run != keep:
                total -= self.stores.pop(run).nbytes


def _last_line_time(path: str | os.PathLike[str], tail: int = 1 << 16) -> float | None:
    """When the file's last complete line was written: its timestamp, else the file's mtime."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - tail))
            lines = f.read(tail).split(b"\n")[:-1]  # the part after the last newline is torn
            mtime = os.fstat(f.fileno()).st_mtime
    except OSError:
        return None
    for line in reversed(lines[1:] if size > tail else lines):
        if line.strip():
            try:
                stamp = decode_line(line).get("timestamp")
                return parse_timestamp(stamp).timestamp() if isinstance(stamp, str) else mtime
            except (MalformedLine, ValueError, TypeError, OverflowError):
                return mtime
    return mtime


def _build(store: SeriesStore, end_offset: int) -> None:
    with store.lock:
        store.catch_up(end_offset)


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("building series in the background failed", exc_info=future.exception())


def _answer(
    store: SeriesStore, query: SeriesQuery, end_offset: int, t0: float | None, gzip_ok: bool
) -> tuple[bytes, bool]:
    """On a worker thread: catch the store up, answer, encode (and compress)."""
    with store.lock:
        store.catch_up(end_offset)
        body = _encode(store.answer(query, t0=t0))
    if gzip_ok and len(body) >= GZIP_FROM:
        return gzip.compress(body, compresslevel=1, mtime=0), True
    return body, False
