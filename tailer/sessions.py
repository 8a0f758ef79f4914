"""Cookie sessions on ``/``: what a reconnecting client that never sends ``since`` missed.

The unmodified React client connects to ``ws://host:8765/`` and, after any
close, reconnects without ``since``: the firehose alone gives it live lines
only, so everything written while it was away was lost (DESIGN §11). A
browser keeps cookies, though, also those set on a WebSocket's 101 answer.

- The 101 answer to a ``/`` handshake sets ``runtail_session`` (random,
  HttpOnly, SameSite=Lax, Path=/); the same session is kept while the browser
  presents it (sliding expiry, ``--session-ttl``).
- Each connection of a session keeps a :class:`Record`: per experiment, the
  last ``seq`` the peer has *acknowledged*. Frames are written straight to the
  transport (see :mod:`tailer.frames`), so "received" is measured where it
  happens: a :class:`CountingTransport` numbers every byte written, and the
  kernel's count of bytes the peer's TCP acknowledged (``TCP_INFO``
  ``tcpi_bytes_acked``, Linux) says which frames arrived. Lines still in
  flight when a network drops are therefore sent again, not lost.
- When the connection closes its record joins the session's closed records.
  A later ``/`` handshake of the session without ``since`` takes the most
  recent one and first receives, experiment by experiment, every line after
  its cursor (from seq 0 for experiments created meanwhile; ``log_reset`` and
  seq 0 for files truncated or replaced meanwhile), then live.
- Records are written under ``--state-dir`` at most ``FLUSH_INTERVAL`` after
  they change, so a ``kill -9`` of the tailer may repeat what was sent in its
  last ~100 ms but never loses a line.

Several tabs share one cookie. A tab that reconnects takes the session's
most recently closed record (normally its own); with none, it starts from the
record of an open connection of the session that has stopped acknowledging
(a connection that died silently and that the server has not noticed yet),
else from the least advanced open one: in practice a second tab gets live.

Bounded state: at most ``max_sessions`` sessions (the least recently seen is
dropped), ``MAX_RECORDS`` closed records per session, and one cursor per
experiment per record.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from tailer import identities, wsio
from tailer.fanout import Client, log_reset_frame

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from tailer.fanout import DirectoryFanout
    from tailer.routes import Route

__all__ = [
    "DEFAULT_SESSION_TTL",
    "SESSION_COOKIE",
    "CountingTransport",
    "Record",
    "Session",
    "SessionClient",
    "SessionStore",
    "default_state_dir",
    "parse_duration",
]

log = logging.getLogger("tailer")

SESSION_COOKIE = "runtail_session"
DEFAULT_SESSION_TTL = 24 * 3600.0
#: Seconds between two writes of changed sessions to disk (the kill -9 repeat window).
FLUSH_INTERVAL = 0.1
#: Closed records kept per session (one per tab that left and has not come back).
MAX_RECORDS = 8
DEFAULT_MAX_SESSIONS = 1000
#: An open connection with frames unacknowledged this long counts as dead for a resume.
STALL_SECONDS = 1.0

# struct tcp_info (linux/tcp.h): 8 one-byte fields, 24 u32, then u64 pacing_rate,
# max_pacing_rate, bytes_acked (Linux >= 4.1).
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_OFFSET = 8 + 24 * 4 + 8 + 8


def default_state_dir(directory: str | os.PathLike[str]) -> Path:
    """``$XDG_STATE_HOME/runtail/<hash of DIR>`` (``~/.local/state`` without it).

    Outside the runs directory, so the state is never taken for a run and a
    read-only runs directory still gets sessions; one folder per runs
    directory, so two tailers of different directories never mix cursors.
    """
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    digest = hashlib.sha256(str(Path(directory).resolve()).encode()).hexdigest()[:16]
    return Path(base) / "runtail" / digest


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``24h`` or ``7d`` in seconds (argparse type: a positive duration)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"not a positive duration: {text!r} (try 90, 30m, 24h, 7d)")
    return seconds


def _acked_bytes(transport: Any) -> int | None:
    """Bytes of this connection the peer's TCP has acknowledged, or ``None`` if unknown."""
    if _TCP_INFO is None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
    except (OSError, ValueError):  # ValueError: uvloop's socket, once closed
        return None
    if len(info) < _BYTES_ACKED_OFFSET + 8:
        return None
    return _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)[0]


class CountingTransport:
    """A transport that numbers the bytes written on the connection (all of them, websockets' too).

    ``written`` starts at the size of what was written before the wrap (the
    101 answer), so it is the stream offset that ``tcpi_bytes_acked`` counts.
    websockets writes through it; the fan-out writes its frames to the transport
    under it and adds them to ``written`` itself (``Client.write``), one Python
    call less per line.
    """

    def __init__(self, transport: Any, written: int) -> None:
        self.transport = transport
        self.written = written
        # The transport's own methods, not wrappers: asked after every write on the live path.
        self.get_write_buffer_size = transport.get_write_buffer_size
        self.is_closing = transport.is_closing

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)

    def acked(self) -> int | None:
        """Stream offset up to which the peer acknowledged, or ``None`` if unknown."""
        acked = _acked_bytes(self.transport)
        if acked is None and not self.transport.is_closing():
            # No TCP_INFO (not Linux): count what the kernel took. A drop may then lose
            # what was in flight; on Linux it is sent again.
            acked = self.written - self.transport.get_write_buffer_size()
        return acked


@dataclass
class Record:
    """What one connection had received: per experiment, the last ``seq`` acknowledged.

    ``-1``: nothing of the experiment's current file. ``experiment`` is the
    connection's ``?experiment=`` filter; a record covers that experiment only.
    """

    experiment: str | None
    cursors: dict[str, int] = field(default_factory=dict)
    updated: float = field(default_factory=time.time)

    def covers(self, experiment_id: str | None) -> bool:
        return self.experiment is None or self.experiment == experiment_id

    def to_json(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "cursors": self.cursors, "updated": self.updated}

    @classmethod
    def from_json(cls, data: Any) -> Record:
        cursors = data["cursors"]
        experiment = data["experiment"]
        if not isinstance(cursors, dict) or not (experiment is None or isinstance(experiment, str)):
            raise ValueError("malformed record")
        return cls(
            experiment,
            {str(k): int(v) for k, v in cursors.items()},
            float(data["updated"]),
        )


class Session:
    """One browser's cookie: the records of its closed connections and its open ones."""

    def __init__(self, key: str, expires: float, closed: Iterable[Record] = ()) -> None:
        self.key = key  # sha256 of the cookie value: the cookie itself is never stored
        self.expires = expires
        self.closed: list[Record] = list(closed)[-MAX_RECORDS:]
        self.open: set[SessionClient] = set()
        self.dirty = False

    def push(self, record: Record) -> None:
        record.updated = time.time()
        self.closed.append(record)
        del self.closed[:-MAX_RECORDS]
        self.dirty = True

    def resume_point(self, experiment: str | None, now: float) -> Record | None:
        """Where a new connection without ``since`` starts: see the module docstring."""
        for i in range(len(self.closed) - 1, -1, -1):
            if self.closed[i].covers(experiment):
                self.dirty = True
                return self.closed.pop(i)
        candidates = [c for c in self.open if c.record.covers(experiment)]
        if not candidates:
            return None
        # The one that stopped acknowledging first; a live tab acknowledges within ms.
        client = min(candidates, key=lambda c: c.stalled_since)
        if client.stalled_since < now - STALL_SECONDS:
            client.superseded = True  # its close must not hand out its stale record again
        return Record(client.record.experiment, dict(client.record.cursors))

    def to_json(self) -> bytes:
        live = [c.record for c in self.open if not c.superseded]
        records = sorted([*self.closed, *live], key=lambda r: r.updated)[-MAX_RECORDS:]
        return orjson.dumps({"expires": self.expires, "records": [r.to_json() for r in records]})


class SessionClient(Client):
    """A ``/`` client of a session: it notes where each frame ends, to learn what arrived."""

    __slots__ = ("held", "marks", "record", "session", "stalled_since", "superseded")

    counter: CountingTransport  # always one here (Client's may be None)

    def __init__(
        self,
        connection: ServerConnection,
        *,
        queue_bytes: int,
        label: str,
        session: Session,
        experiment: str | None,
    ) -> None:
        response = connection.response
        counter = CountingTransport(
            wsio.transport(connection), len(response.serialize()) if response is not None else 0
        )
        wsio.replace_transport(connection, counter)
        super().__init__(connection, queue_bytes=queue_bytes, label=label)
        self.counter = counter
        self.transport = counter.transport  # Client.write counts its frames in counter.written
        self.session = session
        self.record = Record(experiment)
        self.marks: collections.deque[tuple[int, str, int]] = collections.deque()
        self.held: set[str] = set()
        self.stalled_since = time.monotonic()
        self.superseded = False

    def deliver(self, frames: bytes, experiment_id: str, seq: int) -> None:
        # send_history's lines, one call less on the live path.
        if experiment_id in self.held or not self.write(frames):
            return  # being caught up from disk (the catch-up sends these lines), or closing
        if not self.marks:
            self.stalled_since = time.monotonic()
        self.marks.append((self.counter.written, experiment_id, seq))

    def send_history(self, frames: bytes, experiment_id: str, seq: int) -> None:
        if not self.write(frames):
            return  # not sent: no mark, so the cursor never passes these lines
        if not self.marks:
            self.stalled_since = time.monotonic()
        self.marks.append((self.counter.written, experiment_id, seq))

    def release(self, experiment_id: str) -> None:
        self.held.discard(experiment_id)

    def settle(self, acked: int | None = None) -> bool:
        """Move the cursors past every frame the peer acknowledged; ``True`` if any moved."""
        if not self.marks:
            return False
        if acked is None:
            acked = self.counter.acked()
            if acked is None:
                return False
        marks = self.marks
        cursors = self.record.cursors
        moved = False
        while marks and marks[0][0] <= acked:
            _, experiment_id, seq = marks.popleft()
            cursors[experiment_id] = seq
            moved = True
        if moved:
            self.stalled_since = time.monotonic()
            self.record.updated = time.time()
            self.session.dirty = True
        return moved


class SessionStore:
    """Every session of one tailer, kept on disk under ``state_dir`` (``None``: memory only)."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None,
        *,
        ttl: float = DEFAULT_SESSION_TTL,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"session ttl must be positive, not {ttl}")
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.ttl = ttl
        self.max_sessions = max_sessions
        self.flush_interval = flush_interval
        self.sessions: dict[str, Session] = {}
        self._removed: set[str] = set()

    # ------------------------------------------------------------------ disk

    def load(self) -> None:
        """Read the sessions a previous run left (expired and unreadable ones are removed)."""
        if self.state_dir is None:
            return
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            names = os.listdir(self.state_dir)
        except OSError as exc:
            log.warning(
                "sessions kept in memory only: cannot use %s (%s)",
                self.state_dir,
                exc.strerror or exc,
            )
            self.state_dir = None
            return
        now = time.time()
        for name in names:
            if not name.endswith(".json") or name == identities.FILE:
                continue  # files.json: where each run file was read to, not a session
            path = self.state_dir / name
            key = name[:-5]
            try:
                data = orjson.loads(path.read_bytes())
                session = Session(
                    key,
                    float(data["expires"]),
                    (Record.from_json(r) for r in data["records"]),
                )
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable session file %s", path)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if session.expires <= now:
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            self.sessions[key] = session
        self._evict()

    def _snapshot(self) -> tuple[dict[str, bytes], set[str]]:
        changed = {}
        for key, session in self.sessions.items():
            if session.dirty:
                session.dirty = False
                changed[key] = session.to_json()
        removed, self._removed = self._removed, set()
        return changed, removed

    def _write(self, changed: dict[str, bytes], removed: set[str]) -> None:
        state_dir = self.state_dir
        if state_dir is None:
            return
        for key, data in changed.items():
            path = os.path.join(state_dir, f"{key}.json")
            tmp = os.path.join(state_dir, f".{key}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                try:
                    os.write(fd, data)  # a regular file takes a few hundred bytes whole
                finally:
                    os.close(fd)
                os.replace(tmp, path)
            except OSError as exc:
                log.warning("cannot write session state %s: %s", path, exc.strerror or exc)
        for key in removed:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(state_dir, f"{key}.json"))

    def flush_now(self) -> None:
        """Settle every open connection and write what changed, synchronously (shutdown)."""
        self.settle_all()
        self._write(*self._snapshot())

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SessionStore]:
        """Load the sessions on disk, keep writing them, write them a last time on exit."""
        self.load()
        task = asyncio.create_task(self.run())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.flush_now()

    async def run(self) -> None:
        """Settle and write changed sessions every ``flush_interval`` seconds until cancelled."""
        sweep = time.monotonic()
        # Off the event loop, so a slow disk never holds up delivery; handed over without
        # waiting for the write (no wake-up of the loop when it is done).
        writer = _Writer(self._write)
        try:
            while True:
                await asyncio.sleep(self.flush_interval)
                self.settle_all()
                if time.monotonic() - sweep > 10:
                    sweep = time.monotonic()
                    self._expire(time.time())
                changed, removed = self._snapshot()
                if (changed or removed) and self.state_dir is not None:
                    writer.put(changed, removed)
        finally:
            writer.close()  # what it still holds is written before the last flush

    def settle_all(self) -> None:
        for session in self.sessions.values():
            for client in session.open:
                client.settle()

    def _expire(self, now: float) -> None:
        for key, session in list(self.sessions.items()):
            if session.expires <= now and not session.open:
                del self.sessions[key]
                self._removed.add(key)

    def _evict(self) -> None:
        excess = len(self.sessions) - self.max_sessions
        if excess <= 0:
            return
        idle = sorted((s for s in self.sessions.values() if not s.open), key=lambda s: s.expires)
        for session in idle[:excess]:
            del self.sessions[session.key]
            self._removed.add(session.key)

    # ------------------------------------------------------------------ handshakes

    def session_for(self, cookie_header: str | None) -> tuple[Session, str]:
        """The session a handshake presents, or a new one with its cookie value to set.

        An unknown or expired value is never adopted: the client gets a new
        random one (a client cannot choose its session).
        """
        now = time.time()
        value = _cookie_value(cookie_header)
        if value is not None:
            key = _key(value)
            session = self.sessions.get(key)
            if session is not None and session.expires > now:
                session.expires = now + self.ttl
                session.dirty = True
                return session, value
        value = secrets.token_urlsafe(32)
        session = Session(_key(value), now + self.ttl)
        self.sessions[session.key] = session
        self._evict()
        return session, value

    def set_cookie(self, value: str) -> str:
        """The ``Set-Cookie`` value for a 101 answer (renewed each time: sliding expiry)."""
        return f"{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={int(self.ttl)}"

    # ------------------------------------------------------------------ connections

    async def attach(self, fanout: DirectoryFanout, client: SessionClient, route: Route) -> None:
        """Send what the session missed (unless the handshake has ``since``), then live.

        1. Settle the session's open connections, then pick the resume record.
        2. Experiments the record covers start from its cursor (seq 0 if it has
           none: created while away); others, and all of them without a
           record, start live.
        3. The client joins the firehose at once, holding back the experiments
           it still has to catch up; each catch-up (:meth:`DirectoryFanout.attach`) sends
           the history from disk and releases its experiment in the same
           synchronous step that sees no newer line, as a subscription would.
        """
        session = client.session
        for other in session.open:
            other.settle()
        experiment = route.experiment_id
        resume = session.resume_point(experiment, time.monotonic()) if route.since is None else None
        session.open.add(client)
        session.dirty = True
        cursors = client.record.cursors
        if experiment is not None:
            since = route.since
            if since is None and resume is not None:
                since = resume.cursors.get(experiment, -1)
            reader = fanout.readers.get(experiment)
            lines = reader.next_seq if reader is not None and reader.exists else 0
            cursors[experiment] = since if since is not None else lines - 1
            await fanout.attach(client, experiment, since)
            return
        catch_up: dict[str, int] = {}
        for experiment_id, reader in fanout.readers.items():
            if not reader.exists:
                continue
            if resume is None:
                cursors[experiment_id] = reader.next_seq - 1
                continue
            seq = resume.cursors.get(experiment_id, -1)
            cursors[experiment_id] = seq
            if seq + 1 != reader.next_seq:  # behind, or past the end (truncated while away)
                catch_up[experiment_id] = seq
        if resume is not None:
            for experiment_id, seq in resume.cursors.items():
                reader = fanout.readers.get(experiment_id)
                if seq >= 0 and (reader is None or not reader.exists):
                    # Deleted while away: say so, as the firehose does when it happens live.
                    client.send_history(log_reset_frame(experiment_id), experiment_id, -1)
        client.held.update(catch_up)
        fanout.subscribe_firehose(client)
        for experiment_id, seq in catch_up.items():
            if not await fanout.attach(client, experiment_id, seq, firehose=True):
                return

    def detach(self, client: SessionClient) -> None:
        """The connection closed: its record becomes the session's most recent one."""
        session = client.session
        session.open.discard(client)
        client.settle()
        if not client.superseded:
            session.push(client.record)
        # The ttl counts from the last use: a tab open for days keeps its session.
        session.expires = max(session.expires, time.time() + self.ttl)
        session.dirty = True


class _Writer:
    """Writes session files on a thread of its own; :meth:`put` hands work over without waiting.

    Work put while a write runs is merged (the newest bytes of a session win),
    so a slow disk makes writes rarer, not a queue longer.
    """

    def __init__(self, write: Callable[[dict[str, bytes], set[str]], None]) -> None:
        self._write = write
        self._changed: dict[str, bytes] = {}
        self._removed: set[str] = set()
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def put(self, changed: dict[str, bytes], removed: set[str]) -> None:
        with self._cond:
            for key in removed:
                self._changed.pop(key, None)
            self._removed |= removed
            self._removed -= changed.keys()
            self._changed.update(changed)
            self._cond.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="session-writer", daemon=True)
            self._thread.start()

    def _main(self) -> None:
        while True:
            with self._cond:
                while not (self._changed or self._removed or self._closed):
                    self._cond.wait()
                changed, self._changed = self._changed, {}
                removed, self._removed = self._removed, set()
                closed = self._closed
            if changed or removed:
                try:
                    self._write(changed, removed)
                except Exception:
                    log.exception("writing session state failed")
            elif closed:
                return

    def close(self) -> None:
        """Write what is left and end the thread (blocks until then)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()


def _key(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _cookie_value(header: str | None) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == SESSION_COOKIE and value:
            return value.strip('"')
    return None
