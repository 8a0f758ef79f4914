"""Routing of new lines to subscribers: one reader per file, one encoding per batch.

The :class:`DirectoryFanout` owns a :class:`~tailer.reader.FileReader` per experiment and
the subscriber sets. When a reader yields new lines, the fan-out frames them once
(:func:`tailer.frames.frame_lines`) and writes the same bytes to every
subscriber of that experiment and every unfiltered firehose client, without
awaiting anyone: a slow client never slows the others.

Bounded memory: a client's queue is its transport's write buffer. The kernel
socket buffer absorbs bursts; once more than ``queue_bytes`` wait in user
space the client is closed with 1013 ("try again later") and can reconnect
with ``since`` set to the last ``seq`` it received to continue without a gap.
Nothing else holds messages: history is read back from disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Container, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from websockets.exceptions import ConnectionClosed

from recorder.format import experiment_id_of, run_file_name
from tailer import wsio
from tailer.config import DEFAULT_QUEUE_BYTES
from tailer.frames import frame_lines, text_frame
from tailer.reader import FileReader, Notes, PollKind, PollResult, StaleHistory

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from tailer.sessions import CountingTransport

__all__ = ["Client", "DirectoryFanout", "log_reset_frame"]

log = logging.getLogger("tailer")

#: Bytes of history read per step of a catch-up; bounds a catching-up client's memory.
HISTORY_CHUNK = 256 << 10

#: Time a start-up may spend reading files before it listens; what is left is read
#: in the background (DESIGN §12: /healthz answers within a second of start).
STARTUP_BUDGET = 0.3

#: A refresh of many files yields to the event loop after this long.
STEP_BUDGET = 0.02


#: Poll outcomes that send nothing to clients.
_NOTHING_TO_SEND = frozenset((PollKind.NONE, PollKind.WAIT, PollKind.VERIFY))


def log_reset_frame(experiment_id: str) -> bytes:
    """The frame telling a client that ``experiment_id`` was truncated or replaced."""
    return text_frame(
        orjson.dumps({"type": "log_reset", "experiment_id": experiment_id, "data": {}})
    )


class Client:
    """One WebSocket subscriber and its bounded send queue."""

    __slots__ = (
        "budget",
        "charged",
        "closing",
        "connection",
        "counter",
        "label",
        "queue_bytes",
        "transport",
    )

    def __init__(self, connection: ServerConnection, *, queue_bytes: int, label: str) -> None:
        self.connection = connection
        self.transport = wsio.transport(connection)
        self.queue_bytes = queue_bytes
        self.label = label
        self.closing = False
        #: The server-wide budget this client's queue counts against (None: none).
        self.budget: QueueBudget | None = None
        self.charged = 0  # this client's bytes in the budget's running total
        #: A session's :class:`~tailer.sessions.CountingTransport` (None: none): websockets
        #: writes through it; :meth:`write` writes to the transport under it and counts here,
        #: one Python call less per line.
        self.counter: CountingTransport | None = None

    def write(self, frames: bytes) -> bool:
        """Queue already-framed bytes; close the client with 1013 if it is too far behind.

        Returns whether they were written (not to a client closed or closing).
        """
        # Frames are written straight to the transport (see tailer.frames); the protocol
        # state check keeps data from following a close frame.
        if self.closing or wsio.state(self.connection) is not wsio.OPEN:
            return False
        transport = self.transport
        transport.write(frames)
        if self.counter is not None:
            self.counter.written += len(frames)
        queued = transport.get_write_buffer_size()
        if self.budget is not None and queued != self.charged:  # unchanged: nothing to count
            self.budget.charge(self, queued)
        if queued > self.queue_bytes:
            self.close(1013, "client too slow: reconnect with since=<last seq received>")
        return True

    def deliver(self, frames: bytes, experiment_id: str, seq: int) -> None:
        """Queue live frames of ``experiment_id`` whose last line is ``seq`` (-1: a reset).

        :class:`tailer.sessions.SessionClient` also notes what it was sent.
        """
        self.write(frames)

    def send_history(self, frames: bytes, experiment_id: str, seq: int) -> None:
        """Queue frames of a catch-up from disk (:meth:`DirectoryFanout.attach`)."""
        self.write(frames)

    def release(self, experiment_id: str) -> None:
        """A firehose catch-up of ``experiment_id`` is done: its live lines come through."""

    def close(self, code: int, reason: str, *, why: str | None = None) -> None:
        """Start a closing handshake without waiting for it (``why``: what to log instead)."""
        if self.closing:
            return
        # What it holds still counts against the budget until its socket is gone.
        self.closing = True
        if why is not None:
            log.warning("closing client %s (%d): %s", self.label, code, why)
        elif code == 1013:
            log.warning(
                "client %s fell more than %d bytes behind; closing it (1013)",
                self.label,
                self.queue_bytes,
            )
        task = asyncio.get_running_loop().create_task(self.connection.close(code, reason))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its low-water mark.

        A peer that resets the connection meanwhile (RST) only ends this client.
        """
        try:
            await wsio.drain(self.connection)
        except (OSError, ConnectionClosed):
            self.closing = True


_background: set[asyncio.Task[None]] = set()


class QueueBudget:
    """Bytes queued for all clients together (``--max-queued-bytes``, DESIGN §12).

    Each client's queue is bounded (``--queue-bytes``), but a thousand slow
    clients could still hold a thousand full queues. The budget keeps a
    running total, updated from each client's own buffer size as it is
    written to; the total only overestimates (buffers drain unseen), so when
    it passes the limit the real sizes are summed. A client closed with 1013
    keeps its queue, close frame last, until its closing handshake ends (up to
    websockets' close timeout), so it still counts. Over the limit, clients
    already closing are dropped at once (they were told and are not reading),
    largest first; if the open ones alone hold more than half the limit, the
    fullest are closed with 1013 until they fit in that half, which leaves
    the closing ones room to read their close frame before they are dropped.
    """

    def __init__(self, limit: int, clients: Iterable[Client]) -> None:
        self.limit = limit
        self.clients = clients
        self.total = 0

    def charge(self, client: Client, queued: int) -> None:
        self.total += queued - client.charged
        client.charged = queued
        if self.total > self.limit:
            self._shed()

    def release(self, client: Client) -> None:
        """``client`` is gone: nothing of it is held any more."""
        self.total -= client.charged
        client.charged = 0

    def _shed(self) -> None:
        open_sizes: list[tuple[int, Client]] = []
        closing_sizes: list[tuple[int, Client]] = []
        total = 0
        for client in self.clients:
            queued = client.transport.get_write_buffer_size()
            client.charged = queued
            total += queued
            if queued:
                (closing_sizes if client.closing else open_sizes).append((queued, client))
        if total > self.limit:
            closing_sizes.sort(key=lambda pair: pair[0], reverse=True)
            for queued, client in closing_sizes:
                if total <= self.limit:
                    break
                log.warning(
                    "dropping client %s: closed, %d bytes still queued, over --max-queued-bytes",
                    client.label,
                    queued,
                )
                client.transport.abort()
                client.charged = 0
                total -= queued
        self.total = total
        held_open = sum(queued for queued, _ in open_sizes)
        if total <= self.limit or held_open <= self.limit // 2:
            return
        open_sizes.sort(key=lambda pair: pair[0], reverse=True)
        for queued, client in open_sizes:
            if held_open <= self.limit // 2:
                break
            client.close(
                1013,
                "server busy: reconnect with since=<last seq received>",
                why=f"{total} bytes queued for all clients, over --max-queued-bytes "
                f"{self.limit}; it had the most ({queued})",
            )
            held_open -= queued


class DirectoryFanout:
    """Readers for every ``*.jsonl`` in ``directory`` and who receives their lines."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        index_every: int = 1000,
        follow_symlinks: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.queue_bytes = queue_bytes
        self.index_every = index_every
        #: Symlinks are read only when they resolve inside the directory (None: any).
        self.root = None if follow_symlinks else self.directory
        self.notes = Notes()
        self.readers: dict[str, FileReader] = {}
        self.subscribers: dict[str, set[Client]] = {}
        self.firehose: set[Client] = set()
        # Readers with more to read than one step: each has its own task, so a huge
        # file (or a verification) never holds up the others.
        self._catch_ups: dict[FileReader, asyncio.Task[None]] = {}
        self._again: set[FileReader] = set()
        self._turn = asyncio.Lock()
        #: What the previous tailer had read of each file (:mod:`tailer.identities`).
        self.checkpoints: dict[str, tuple[int, int, int]] = {}

    # ------------------------------------------------------------------ files

    def experiment_ids_on_disk(self) -> list[str]:
        """Valid experiment ids of the ``*.jsonl`` files directly in the directory."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as exc:  # EMFILE and the like: the known readers are still read
            self.notes.warn(("list", None), "cannot list %s: %s", self.directory, exc)
            return []
        self.notes.clear(("list", None))
        return [e for e in map(experiment_id_of, names) if e is not None]

    def reader_for(self, experiment_id: str) -> FileReader:
        reader = self.readers.get(experiment_id)
        if reader is None:
            reader = FileReader(
                self.directory / run_file_name(experiment_id),
                experiment_id,
                index_every=self.index_every,
                root=self.root,
                notes=self.notes,
            )
            reader.checkpoint = self.checkpoints.pop(experiment_id, None)
            self.readers[experiment_id] = reader
        return reader

    async def refresh(
        self, experiment_ids: Iterable[str] | None = None, *, startup: bool = False
    ) -> None:
        """Read what is new in the given experiments (all known and listed ones by default).

        Each file gets one bounded step here; a file with more to read (a
        burst, a big file copied in, a replacement to verify) goes on in its
        own background task, so no file holds up another. At ``startup``, files
        are read here until :data:`STARTUP_BUDGET` is spent; what they hold
        beyond is read in the background, sent to the experiment's
        subscribers but not to the firehose (it was not new).
        """
        if experiment_ids is None:
            ids = set(self.readers)
            ids.update(self.experiment_ids_on_disk())
        else:
            ids = set(experiment_ids)
        started = step_started = time.monotonic()
        for experiment_id in sorted(ids) if startup else ids:
            is_new = experiment_id not in self.readers
            reader = self.reader_for(experiment_id)
            if not startup:
                self._step(reader)
            elif reader in self._catch_ups:
                self._again.add(reader)  # its task reads this change too
            else:
                while True:
                    result = reader.poll()
                    if is_new and result.kind is PollKind.DATA and result.more:
                        reader.backlog_end = reader.size
                    self.dispatch(reader, result)
                    if not _wants_more(result) or reader.deleted:
                        break
                    if time.monotonic() - started > STARTUP_BUDGET:
                        self._catch_up(reader)
                        break
            if is_new:
                if not reader.exists:
                    # Named by an event for a file already gone: no experiment.
                    if self.readers.get(experiment_id) is reader:
                        del self.readers[experiment_id]
                elif not reader.deleted and reader not in self._catch_ups:
                    log.info("experiment %s: %d messages", experiment_id, reader.messages)
            if time.monotonic() - step_started > STEP_BUDGET:
                await asyncio.sleep(0)
                step_started = time.monotonic()

    def refresh_now(self, experiment_ids: Iterable[str], named: Container[str] = ()) -> set[str]:
        """:meth:`refresh` of known experiments, synchronously: the live path.

        Called from the watcher's notification callback, so an appended line
        is read, framed and written to every client in that one callback, with
        no task in between (DESIGN §13, latency). Each file gets the same one
        bounded step as in :meth:`refresh` (more goes on in its own task).
        Files not in ``named`` only had their content changed (the watcher
        saw no create, rename or delete): their kept descriptor is read
        (``FileReader.poll(appended=True)``). Returns the ids left for
        :meth:`refresh`: files not seen before, and what remains once
        :data:`STEP_BUDGET` is spent.
        """
        left: set[str] = set()
        started = 0.0  # read when the first file is stepped: one clock read for one file
        for experiment_id in experiment_ids:
            reader = self.readers.get(experiment_id)
            if reader is None:
                left.add(experiment_id)
                continue
            if not started:
                started = time.monotonic()
            elif time.monotonic() - started > STEP_BUDGET:
                left.add(experiment_id)
                continue
            if reader in self._catch_ups:
                self._again.add(reader)  # its task reads this change too
                continue
            appended = experiment_id not in named
            if appended and reader.read_appended(self.send_lines):
                continue  # the common case, done
            result = reader.poll(appended=appended, deliver=self.dispatch)
            if _wants_more(result) and not reader.deleted:
                self._catch_up(reader)
        return left

    def _step(self, reader: FileReader) -> None:
        """One bounded read of ``reader``, sent on; a file with more goes on in its own task.

        (:meth:`refresh_now` repeats these lines for the live path.)
        """
        if reader in self._catch_ups:
            self._again.add(reader)  # its task reads this change too
            return
        # Sent before the reader's own bookkeeping (checksum, statistics): DESIGN §4.3.
        result = reader.poll(deliver=self.dispatch)
        if _wants_more(result) and not reader.deleted:
            self._catch_up(reader)

    def _catch_up(self, reader: FileReader) -> None:
        """Read ``reader`` to its end in a task of its own, one bounded step per turn of the loop."""
        task = asyncio.get_running_loop().create_task(self._read_on(reader))
        self._catch_ups[reader] = task

    async def _read_on(self, reader: FileReader) -> None:
        result = PollResult(PollKind.NONE, more=True)
        try:
            while True:
                if reader.deleted or self.readers.get(reader.experiment_id) is not reader:
                    return
                if result.kind is PollKind.VERIFY:
                    result = await reader.verify()  # on a worker thread
                    self.dispatch(reader, result)
                else:
                    if result.kind is PollKind.WAIT:
                        await asyncio.sleep(result.retry_after)
                    # One background step per turn of the event loop, whatever the number
                    # of files being read: the turn is held until the loop came round.
                    async with self._turn:
                        if reader.deleted or self.readers.get(reader.experiment_id) is not reader:
                            return
                        result = reader.poll()
                        self.dispatch(reader, result)
                        await asyncio.sleep(0)
                if _wants_more(result):
                    continue
                if reader in self._again:
                    self._again.discard(reader)
                    result = PollResult(PollKind.NONE, more=True)
                    continue
                if reader.exists and not reader.deleted and reader.backlog_end:
                    log.info("experiment %s: %d messages", reader.experiment_id, reader.messages)
                    reader.backlog_end = 0
                return
        except Exception:
            log.exception("reading %s failed", reader.path)
        finally:
            self._catch_ups.pop(reader, None)
            self._again.discard(reader)

    async def close(self) -> None:
        """Stop the background reads."""
        tasks = list(self._catch_ups.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for reader in self.readers.values():
            reader.release()

    def dispatch(self, reader: FileReader, result: PollResult) -> None:
        """Send one poll's outcome to the experiment's subscribers and the firehose."""
        kind = result.kind
        if kind in _NOTHING_TO_SEND:
            return
        experiment_id = reader.experiment_id
        subscribers = self.subscribers.get(experiment_id)
        seq = -1  # a reset or deletion: nothing of the experiment's (new) file yet
        if kind is PollKind.DATA:
            if not result.lines:
                return
            if not result.backlog:
                self.send_lines(experiment_id, result.lines)
            elif subscribers:  # there before the tailer started: history, not news
                frames = frame_lines(result.lines, experiment_id)
                for client in subscribers:
                    client.deliver(frames, experiment_id, result.lines[-1][0])
            return
        if kind is PollKind.RESET:
            frames = log_reset_frame(experiment_id)
        else:  # PollKind.DELETED
            if self.readers.get(experiment_id) is reader:
                del self.readers[experiment_id]
            for client in list(subscribers or ()):
                client.close(1000, f"experiment {experiment_id} was deleted")
            # The firehose stays open; log_reset tells it to forget the experiment (a file
            # created again under that name starts from seq 0).
            frames = log_reset_frame(experiment_id)
            for client in self.firehose:
                client.deliver(frames, experiment_id, seq)
            return
        if subscribers:
            for client in subscribers:
                client.deliver(frames, experiment_id, seq)
        for client in self.firehose:
            client.deliver(frames, experiment_id, seq)

    def send_lines(self, experiment_id: str, lines: list[tuple[int, bytes]]) -> None:
        """Frame new lines of ``experiment_id`` once; write them to its subscribers and the firehose."""
        subscribers = self.subscribers.get(experiment_id)
        if not (subscribers or self.firehose):
            return
        frames = frame_lines(lines, experiment_id)
        seq = lines[-1][0]
        if subscribers:
            for client in subscribers:
                client.deliver(frames, experiment_id, seq)
        for client in self.firehose:
            client.deliver(frames, experiment_id, seq)

    # ------------------------------------------------------------------ subscribers

    def subscribe_firehose(self, client: Client) -> None:
        self.firehose.add(client)

    def unsubscribe(self, client: Client) -> None:
        if client.budget is not None:
            client.budget.release(client)
        self.firehose.discard(client)
        for experiment_id, clients in list(self.subscribers.items()):
            clients.discard(client)
            if not clients:
                del self.subscribers[experiment_id]

    async def attach(
        self, client: Client, experiment_id: str, since: int | None, *, firehose: bool = False
    ) -> bool:
        """Send ``experiment_id``'s history after ``since`` from disk, then subscribe live.

        ``since=None`` subscribes to new messages only; ``since=-1`` sends
        everything. Returns ``False`` if the client was closed meanwhile.
        ``firehose=True``: the client is already on the firehose with this
        experiment held back; step 5 releases it instead of subscribing
        (:mod:`tailer.sessions`), and a deletion sends ``log_reset`` instead
        of closing.

        The switch from history to live must neither drop nor repeat a line
        that arrives during the catch-up:

        1. The catch-up notes the reader's ``(consumed, next_seq, generation)``,
           which the reader updates together, synchronously, in the same step
           that dispatches those lines to live subscribers.
        2. It sends lines ``[start, next_seq)`` from disk, below ``consumed``
           (not further: bytes past it have not been numbered or dispatched).
        3. It awaits the client's drain between chunks; meanwhile the reader
           may dispatch new lines to live subscribers, not yet to this client.
        4. After the history it compares ``next_seq`` again, with no await in
           between: if lines arrived, it loops to step 1 from where it stopped.
        5. Once nothing new arrived it adds the client to the subscribers in
           that same synchronous step, so the next dispatched line (the first
           one it has not sent) goes to the client live.
        6. If the generation changed (truncation, replacement), the history it
           was reading is gone: it sends ``log_reset`` and starts over from 0.

        A client resuming with ``since`` at or past the file's line count claims
        lines the file does not have: the file was truncated, replaced or
        deleted while this client was away (typically while the tailer was
        stopped, so no ``log_reset`` reached it). It gets ``log_reset`` first,
        then the file from the start. What stays undetectable: a file replaced
        while the client was away by one that is at least ``since + 1`` lines
        long; the client then gets the new file's lines after ``since`` as if it
        had grown (``seq`` carries no identity of the file it numbers).
        """
        start = 0 if since is None or since < 0 else since + 1
        live_only = since is None
        if not live_only and start > 0:
            reader = self.readers.get(experiment_id)
            # Until the reader got as far as the previous tailer had, it cannot tell
            # whether the file was replaced while no tailer ran (tailer.identities).
            # (Bounded: a file that cannot be read at all never gets there.)
            for _ in range(200):
                if reader is None or reader.checkpoint is None or client.closing:
                    break
                await asyncio.sleep(0.05)
            # A file still being read in the background (a big one at start-up) has not
            # numbered its lines up to `since` yet: that is no truncation, wait for them.
            while (
                reader is not None
                and reader in self._catch_ups
                and reader.next_seq < start
                and not client.closing
            ):
                await asyncio.sleep(0.05)
            lines = reader.next_seq if reader is not None and reader.exists else 0
            replaced = reader.replaced_lines if reader is not None else 0
            if start > lines or start <= replaced:
                client.send_history(log_reset_frame(experiment_id), experiment_id, -1)
                start = 0
        while True:
            if client.closing or wsio.state(client.connection) is not wsio.OPEN:
                return False
            reader = self.readers.get(experiment_id)
            if reader is None or live_only or start >= reader.next_seq:
                if firehose:
                    client.release(experiment_id)
                else:
                    self.subscribers.setdefault(experiment_id, set()).add(client)
                return True
            generation, end_offset, end_seq = reader.generation, reader.consumed, reader.next_seq
            try:
                for chunk in reader.history(start, end_offset, chunk_bytes=HISTORY_CHUNK):
                    frames = frame_lines(chunk, experiment_id)
                    client.send_history(frames, experiment_id, chunk[-1][0])
                    start = chunk[-1][0] + 1
                    await client.drain()
                    # drain() returns without yielding while the kernel takes everything; yield
                    # anyway so one fast catch-up never starves live dispatch or other clients.
                    await asyncio.sleep(0)
                    if client.closing:
                        return False
                start = end_seq
            except StaleHistory:
                # Replaced under the reader, which has not decided yet (a copy to verify):
                # give it a moment instead of spinning.
                if reader.generation == generation:
                    await asyncio.sleep(0.05)
            if reader.generation != generation or self.readers.get(experiment_id) is not reader:
                if reader.deleted and self.readers.get(experiment_id) is None:
                    if firehose:
                        client.send_history(log_reset_frame(experiment_id), experiment_id, -1)
                        client.release(experiment_id)
                        return True
                    client.close(1000, f"experiment {experiment_id} was deleted")
                    return False
                client.send_history(log_reset_frame(experiment_id), experiment_id, -1)
                start = 0

    def identities(self) -> dict[str, tuple[int, int, int]]:
        """Where each file was read to (:mod:`tailer.identities`), the unseen ones kept."""
        out = dict(self.checkpoints)
        for experiment_id, reader in self.readers.items():
            if reader.exists:
                out[experiment_id] = reader.identity()
        return out

    def summaries(self) -> list[dict[str, object]]:
        """One ``/api/experiments`` entry per experiment that has a file, sorted by id."""
        return [
            self.readers[experiment_id].summary()
            for experiment_id in sorted(self.readers)
            if self.readers[experiment_id].exists
        ]


def _wants_more(result: PollResult) -> bool:
    return result.more or result.kind in (PollKind.VERIFY, PollKind.WAIT)
