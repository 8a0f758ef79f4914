"""Per-file readers: new complete lines of a growing log, numbered and validated.

:class:`LineSplitter` is the pure core (bytes in, numbered complete lines
out); :class:`FileReader` adds the file: it remembers its offset, notices a
file that was truncated, rewritten, replaced or deleted, keeps per-experiment
statistics and the sparse index, and reads history back from disk.

Numbering: ``seq`` is the 0-based index of a complete line in its file,
counting every line, valid or not, so it is the same for every reader and
across tailer restarts. Blank lines are no lines: skipped silently, never
numbered. A trailing line without its ``\\n`` is held (not numbered) until
the newline arrives.

The partial-line race, step by step (why holding the rest is enough):

1. A writer appends ``{"type": ...}\\n`` with one ``os.write``; the kernel may
   make the first bytes visible to a reader before the last ones.
2. The reader's ``pread`` can therefore end inside that line.
3. :class:`recorder.format.LineBuffer` holds the bytes after the last
   ``\\n``; the reader advances ``read_pos`` past them, but ``consumed``
   (the offset clients resume from) stops at the newline.
4. The next notification reads from ``read_pos``; the held rest plus the new
   bytes form the complete line, which only now gets its ``seq``.
5. If the writer crashed, the rest stays held forever and is never sent; a
   truncation below ``read_pos`` discards it with everything else.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from recorder.format import (
    MAX_LINE_BYTES,
    STATUS_OF_TYPES,
    LineBuffer,
    MalformedLine,
    decode_line,
    is_blank_line,
    parse_timestamp,
    split_lines,
    split_rank,
    status_of,
)
from tailer.index import SparseIndex

__all__ = [
    "FileReader",
    "LineSplitter",
    "Notes",
    "PollKind",
    "PollResult",
    "StaleHistory",
    "at_most_lines",
    "scan_file",
]

log = logging.getLogger("tailer")

#: Largest single read; bounds the memory and the event-loop time of one poll.
READ_CHUNK = 1 << 20

#: Most lines split and checked in one step. Bytes alone do not bound a step: a
#: megabyte of newlines is a million lines (seconds of decoding), so a read
#: that holds more is cut here and the rest is read by the next step.
MAX_LINES_PER_STEP = 4096

#: How long a file may stay shorter than what was read before it counts as
#: truncated: ``cp``/``scp`` over a run truncate it, then write the new copy.
SETTLE_SECONDS = 0.5

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

#: Longest ``error`` text kept for the summary (the list shows one line of it; the
#: whole message, traceback included, is in the stream).
MAX_ERROR_CHARS = 2000

#: Files that keep a descriptor open between live polls (the most recently read
#: ones); far below the descriptors ``tailer serve`` reserves for files.
MAX_HELD = 32

#: First read of a live poll (:meth:`FileReader._poll_held`); a full one is followed by
#: a read of the rest of the step. A buffer of ``READ_CHUNK`` for every appended line
#: would be a fresh ``mmap`` (page faults, then ``mremap`` and ``munmap`` to shrink
#: it): 15-20 % of the tailer's CPU on the live path. Below malloc's mmap threshold.
HELD_FIRST_READ = 64 << 10

#: Readers keeping a descriptor, least recently read first.
_held: dict[FileReader, None] = {}

#: Malformed lines whose seq is remembered (8 bytes each), so history can skip them
#: without decoding again; past this, history decodes every line instead.
MAX_TRACKED_MALFORMED = 1 << 20


class StaleHistory(Exception):
    """The file was truncated, replaced or deleted while its history was being read."""


class NotAnExperiment(OSError):
    """The name is a symlink out of the runs directory (or to nothing): never read."""


class Notes:
    """Warnings said once per key until the condition clears (shared by a fan-out's readers).

    A reader is created again at every sweep for a name that is no experiment
    (a FIFO, a link out of DIR), so "once" must outlive the reader.
    """

    def __init__(self) -> None:
        self._said: set[object] = set()

    def warn(self, key: object, message: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)

    def clear(self, key: object) -> None:
        self._said.discard(key)


def at_most_lines(data: bytes, max_lines: int) -> bytes:
    """``data`` cut so that it holds at most ``max_lines`` newlines (a few C scans, no Python loop)."""
    cut = len(data)
    if data.count(b"\n", 0, cut) <= max_lines:
        return data
    while cut > 1 and data.count(b"\n", 0, cut) > max_lines:
        cut //= 2
    return data[:cut]


class LineSplitter:
    """Turn appended bytes into complete lines, numbered from 0, with their offsets; pure, no I/O.

    :class:`recorder.format.LineBuffer` decides where lines end (held partial
    lines, over-long ones); this numbers them, tracks offsets and fills the
    sparse index. A complete line longer than ``max_line_bytes`` is returned
    as is (the decoder refuses it); a line that grows past the limit before
    its newline arrives is not buffered and is returned as ``None`` once the
    newline comes, so it still takes its ``seq``.
    """

    __slots__ = ("_lines", "consumed", "index", "next_seq", "read_pos")

    def __init__(
        self,
        *,
        start_seq: int = 0,
        start_offset: int = 0,
        index: SparseIndex | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.next_seq = start_seq  # seq of the next complete line
        self.consumed = start_offset  # offset just past the last complete line
        self.read_pos = start_offset  # offset of the next byte to read
        self.index = index
        self._lines = LineBuffer(max_line_bytes)

    @property
    def pending(self) -> int:
        """Bytes read but not yet part of a complete line."""
        return self.read_pos - self.consumed

    def feed(self, data: bytes) -> list[bytes | None]:
        """Append ``data``; return the lines it completed (``None`` for over-long ones)."""
        if self.read_pos == self.consumed and data[-1:] == b"\n":
            # Nothing held and whole lines (an appended line, the live path): LineBuffer
            # would give them back as they are.
            dropped, over_long, chunk = 0, False, data
        else:
            dropped, over_long, chunk = self._lines.feed(data)
        self.read_pos += len(data)
        lines = split_lines(chunk)[0]
        out: list[bytes | None] = [None, *lines] if over_long else lines  # type: ignore[assignment]
        pos = self.consumed
        end = pos + dropped + len(chunk)
        if not out:
            self.consumed = end  # nothing, or only blank lines
            return out
        first = self.next_seq
        index = self.index
        if index is not None:
            if over_long and first % index.every == 0:
                index.record(first, pos)
            seq0, every = first + over_long, index.every
            if (-seq0) % every < len(lines):  # one of them starts an index entry
                for seq, offset in _line_starts(chunk, lines, pos + dropped, seq0, every):
                    index.record(seq, offset)
        self.consumed = end
        self.next_seq = first + len(out)
        return out


def _line_starts(
    chunk: bytes, lines: list[bytes], base: int, first: int, every: int
) -> Iterator[tuple[int, int]]:
    """``(seq, offset)`` of the lines of ``chunk`` whose seq is a multiple of ``every``.

    ``chunk`` is complete lines, each ending in ``\\n``, starting at file offset
    ``base``; ``lines`` are its non-blank lines (:func:`split_lines`), the
    first of which has seq ``first``.
    """
    if sum(map(len, lines)) + len(lines) == len(chunk):  # no blank line: lengths give offsets
        j = (-first) % every
        pos, a = base, 0
        while j < len(lines):
            pos += sum(map(len, lines[a:j])) + (j - a)
            yield first + j, pos
            a, j = j, j + every
        return
    seq, pos = first, base
    for raw in chunk[:-1].split(b"\n"):
        if not is_blank_line(raw):
            if seq % every == 0:
                yield seq, pos
            seq += 1
        pos += len(raw) + 1


class PollKind(StrEnum):
    """What kind of thing one :meth:`FileReader.poll` (or :meth:`~FileReader.verify`) found."""

    #: New lines (possibly none that are valid), in :attr:`PollResult.lines`.
    DATA = "data"
    #: Nothing new (or nothing to read yet: poll again when told, or when ``more``).
    NONE = "none"
    #: Truncated, rewritten or replaced: clients must forget the run (``log_reset``).
    RESET = "reset"
    #: The file is gone.
    DELETED = "deleted"
    #: Another inode, or a shorter file: :meth:`FileReader.verify` decides (on a thread).
    VERIFY = "verify"
    #: A file shrank: poll again after :attr:`PollResult.retry_after` seconds.
    WAIT = "wait"


@dataclass
class PollResult:
    """What one :meth:`FileReader.poll` found."""

    kind: PollKind
    #: ``(seq, line)`` of the new valid lines (malformed ones are counted, not listed).
    lines: list[tuple[int, bytes]] = field(default_factory=list)
    #: Whether more bytes are waiting (the read stopped at ``READ_CHUNK``).
    more: bool = False
    #: Lines that were in the file when the tailer started (not sent to the firehose).
    backlog: bool = False
    #: :attr:`PollKind.WAIT`: poll again after this many seconds.
    retry_after: float = 0.0


#: Takes a poll's outcome before the reader's bookkeeping (:meth:`FileReader.poll`).
Deliver = Callable[["FileReader", PollResult], None]
#: Takes an experiment's new valid lines before the reader's bookkeeping
#: (:meth:`FileReader.read_appended`).
Send = Callable[[str, list[tuple[int, bytes]]], None]


class FileReader:
    """Follows one ``<experiment_id>.jsonl`` file; all methods run on the event loop thread.

    The file is opened for each read and closed after, so thousands of
    experiments do not exhaust file descriptors. Its identity is its device,
    inode and a running CRC-32 of every byte read so far: another inode, or
    a file shorter than what was read, is checked against that checksum
    (:meth:`verify`), so a copy that continues the file (``rsync``, ``cp``
    over it) reads on as an append and anything else is a reset.

    With ``root`` set, a name that is a symlink is read only when it resolves
    to a file inside ``root``; otherwise it is no experiment (one warning).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        experiment_id: str,
        *,
        index_every: int = 1000,
        max_line_bytes: int = MAX_LINE_BYTES,
        root: str | os.PathLike[str] | None = None,
        notes: Notes | None = None,
        settle: float = SETTLE_SECONDS,
    ) -> None:
        self.path = Path(path)
        self.settle = settle
        self.experiment_id = experiment_id
        self.max_line_bytes = max_line_bytes
        self.root = None if root is None else os.path.realpath(root)
        self.notes = Notes() if notes is None else notes
        self.index = SparseIndex(index_every)
        self.generation = 0  # bumped on every reset or deletion
        self.deleted = False
        #: Bytes below this offset were there at start-up: read in the background, not "new".
        self.backlog_end = 0
        #: ``(bytes, crc, lines)`` read by the previous tailer (:mod:`tailer.identities`);
        #: checked once reading gets there.
        self.checkpoint: tuple[int, int, int] | None = None
        #: Lines of a file that was replaced while no tailer ran: clients resuming with a
        #: ``since`` below it get ``log_reset`` (they saw the old file).
        self.replaced_lines = 0
        self._identity: tuple[int, int] | None = None
        self._shrunk_since: float | None = None  # when the file was first seen shorter
        self._held_fd = -1  # kept open for the live path (poll(appended=True)), -1: none
        #: What :meth:`_check` read and found, for :meth:`_note` once it is sent on.
        self._unnoted: tuple[bytes, int, str | None, str | None, list[dict[str, Any]]] | None = None
        self._reset_state()

    # ------------------------------------------------------------------ state

    def _reset_state(self) -> None:
        self.index.clear()
        self.splitter = LineSplitter(index=self.index, max_line_bytes=self.max_line_bytes)
        self.malformed_seqs = array("q")
        self.malformed_untracked = 0  # malformed lines beyond MAX_TRACKED_MALFORMED
        self.messages = 0
        self.first_timestamp: str | None = None
        self.last_timestamp: str | None = None
        self.status: str | None = None
        self.error: str | None = None  # data.error of the last `error` message
        self._stamp_seen: tuple[str | None, float | None] = (None, None)  # stale()'s parse
        self.size = 0
        self.crc = 0  # CRC-32 of the bytes [0, read_pos)

    @property
    def next_seq(self) -> int:
        return self.splitter.next_seq

    @property
    def consumed(self) -> int:
        return self.splitter.consumed

    @property
    def malformed(self) -> int:
        return len(self.malformed_seqs) + self.malformed_untracked

    @property
    def exists(self) -> bool:
        """Whether the file has been seen and not deleted since."""
        return self._identity is not None and not self.deleted

    def summary(self) -> dict[str, object]:
        """The experiment's entry in ``/api/experiments`` and ``tailer ls``."""
        run, rank = split_rank(self.experiment_id)
        return {
            "experiment_id": self.experiment_id,
            "run": run,
            "rank": rank,
            "messages": self.messages,
            "malformed": self.malformed,
            "lines": self.splitter.next_seq,
            "bytes": self.size,
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
            "status": self.status or "unknown",
            "error": self.error,
            "stale": self.stale(),
        }

    def stale(self) -> float | None:
        """Seconds since the run's last line: now less the last message's timestamp.

        The timestamp, not the file's modification time, because it survives a
        copy or a ``git clone`` (a run whose writer died long ago must not look
        fresh). Without a parsable timestamp the file's mtime is used; None when
        that cannot be read either. Never negative (a writer's clock ahead).
        """
        text = self.last_timestamp
        if self._stamp_seen[0] != text:
            try:
                self._stamp_seen = (text, parse_timestamp(text).timestamp())  # type: ignore[arg-type]
            except (TypeError, ValueError, OverflowError):
                self._stamp_seen = (text, None)
        last = self._stamp_seen[1]
        if last is None:
            try:
                last = os.stat(self.path).st_mtime
            except OSError:
                return None
        return round(max(0.0, time.time() - last), 3)

    # ------------------------------------------------------------------ reading

    def _open(self) -> int:
        """A descriptor on the file; symlinks out of ``root`` raise :class:`NotAnExperiment`.

        ``O_NONBLOCK``: opening a FIFO that happens to be called x.jsonl must not
        block the event loop until some writer opens it (no effect on regular files).
        """
        if self.root is None:
            return os.open(self.path, _OPEN_FLAGS)
        try:
            return os.open(self.path, _OPEN_FLAGS | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
        # A symlink: open what it resolves to, then ask the kernel where the descriptor
        # really points (no race with a link or directory swapped in between).
        target = os.path.realpath(self.path)
        try:
            fd = os.open(target, _OPEN_FLAGS | os.O_NOFOLLOW)
        except OSError:
            fd = -1
        real = _real_path(fd, target) if fd >= 0 else target
        if fd >= 0 and os.path.commonpath([real, self.root]) == self.root:
            return fd
        if fd >= 0:
            os.close(fd)
        self.notes.warn(
            ("link", str(self.path)),
            "ignoring %s: a symlink to %s, which is not a file inside %s "
            "(--follow-symlinks to serve it)",
            self.path,
            target,
            self.root,
        )
        raise NotAnExperiment(errno.ELOOP, "symlink out of the runs directory", str(self.path))

    def poll(
        self,
        max_bytes: int = READ_CHUNK,
        max_lines: int = MAX_LINES_PER_STEP,
        *,
        appended: bool = False,
        deliver: Deliver | None = None,
    ) -> PollResult:
        """Read what was appended since the last poll (at most ``max_bytes``, ``max_lines``).

        ``appended=True``: the caller knows that nothing but the file's content
        changed since the previous poll (inotify named it only in content
        events: no create, rename, delete or attribute change). Then the
        descriptor that poll kept open is read with one ``pread`` (the live
        path, :meth:`_poll_held`); without one, this poll opens the file by
        name as usual and keeps its descriptor for the next. Any other poll
        closes a kept descriptor first, and keeps the new one only if the
        name still leads to the same file.

        ``deliver(reader, result)``, if given, is called with the result as
        soon as the new lines are numbered and checked, before the reader's
        own bookkeeping (running checksum, statistics: :meth:`_note`), which
        waits until it returns: the live path sends lines first.
        """
        result = None
        if appended and self._held_fd >= 0:
            result = self._poll_held(max_bytes, max_lines)
        if result is None:
            result = self._poll_by_name(max_bytes, max_lines, hold=appended)
        try:
            if deliver is not None:
                deliver(self, result)
        finally:
            if self._unnoted is not None:
                self._note()
        return result

    def _poll_by_name(self, max_bytes: int, max_lines: int, *, hold: bool) -> PollResult:
        """:meth:`poll` through the file's name (every poll but the kept descriptor's).

        Truncation and replacement race with this read; how each case is caught:

        1. The file is opened by name and ``fstat``-ed on that descriptor, so
           the identity, the size and the bytes read all belong to one file,
           even if the name is replaced a moment later.
        2. Another inode under the name, at least as long as what was read:
           ``verify`` (the caller runs :meth:`verify`, which compares the new
           file's first ``read_pos`` bytes with the running checksum: equal,
           it reads on as an append; else ``reset``).
        3. Shorter than ``read_pos`` (same inode or not): ``wait`` up to
           :data:`SETTLE_SECONDS` (``cp`` over the file truncates it first),
           ``verify`` once it is long enough again, ``reset`` if it stays short.
        4. Same inode, size not smaller, but the byte before ``consumed`` is
           no longer the ``\n`` read there: rewritten in place -> ``reset``.
        5. The name is gone: ``deleted`` once; a file created again later under
           that name gets a new reader, numbered from 0.

        ``hold``: keep the descriptor for the next appended poll (also kept
        when one was kept before).
        """
        hold = hold or self._held_fd >= 0
        self.release()
        if self.deleted:
            return PollResult(PollKind.NONE)
        keep = False  # whether the descriptor is kept for the next appended poll
        try:
            fd = self._open()
        except FileNotFoundError:
            if self._identity is None:
                return PollResult(PollKind.NONE)  # listed, then gone before the first read
            return self._mark_deleted()
        except NotAnExperiment:
            return self._not_an_experiment()
        except OSError as exc:
            self.notes.warn(("read", str(self.path)), "cannot read %s: %s", self.path, exc)
            return PollResult(PollKind.NONE)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.notes.warn(
                    ("kind", str(self.path)), "ignoring %s: not a regular file", self.path
                )
                return self._not_an_experiment()
            identity = (st.st_dev, st.st_ino)
            size = st.st_size
            read_pos = self.splitter.read_pos
            if self._identity is None:
                self._identity = identity
            elif size < read_pos:
                return self._shrunk(identity, size)
            elif identity != self._identity or self._shrunk_since is not None:
                return PollResult(PollKind.VERIFY)
            self.size = size
            if size == read_pos:
                keep = hold and self.checkpoint is None
                return PollResult(PollKind.NONE)
            consumed = self.splitter.consumed
            # Same inode, same or larger size, but the byte before our offset is no longer
            # the newline we read there: the file was rewritten in place.
            if consumed and os.pread(fd, 1, consumed - 1) != b"\n":
                return self._mark_reset(identity, "was rewritten")
            checkpoint = self.checkpoint
            if checkpoint is not None and size < checkpoint[0]:
                self._replaced_while_down(checkpoint, f"is shorter ({size} bytes)")
            want = min(size - read_pos, max_bytes)
            if self.checkpoint is not None:  # stop there, to compare checksums
                want = min(want, self.checkpoint[0] - read_pos)
            backlog = read_pos < self.backlog_end
            if backlog:
                want = min(want, self.backlog_end - read_pos)
            data = os.pread(fd, want, read_pos)
            keep = hold and self.checkpoint is None and not backlog
        except OSError as exc:  # EIO and the like: nothing consumed, the next poll retries
            keep = False
            self.notes.warn(("read", str(self.path)), "cannot read %s: %s", self.path, exc)
            return PollResult(PollKind.NONE)
        finally:
            if keep:
                self._hold(fd)
            else:
                os.close(fd)
        self.notes.clear(("read", str(self.path)))
        return self._take(data, max_lines, read_pos, size, backlog)

    def _take(
        self, data: bytes, max_lines: int, read_pos: int, size: int, backlog: bool
    ) -> PollResult:
        """Number and check the bytes read at ``read_pos`` (``size``: where the file ends).

        The valid lines (:meth:`_check`), numbered, make the result; what can
        wait until they are sent on is left for :meth:`_note` (:meth:`poll` runs it).
        """
        if data.count(b"\n") > max_lines:
            data = at_most_lines(data, max_lines)
        seq = self.splitter.next_seq
        valid = self._check(seq, self.splitter.feed(data), data)
        return PollResult(PollKind.DATA, valid, more=read_pos + len(data) < size, backlog=backlog)

    def _check(self, seq: int, lines: list[bytes | None], data: bytes) -> list[tuple[int, bytes]]:
        """The valid ``lines`` (read as ``data``) numbered from ``seq``; the rest noted for later.

        A malformed line (``None``: over-long or not one line) is noted by its
        seq (history skips it without decoding it again) and left out. Of the
        valid ones only what :meth:`_note` needs is kept (timestamps, the rare
        messages that may announce a status): a batch's decoded messages are
        freed as they go, never held for the garbage collector to walk.
        """
        valid: list[tuple[int, bytes]] = []
        malformed = self.malformed_seqs
        limit = self.max_line_bytes
        first_ts = last_ts = None
        statuses: list[dict[str, Any]] = []
        for line in lines:
            if line is None:
                malformed.append(seq)
            else:
                try:
                    message = decode_line(line, max_bytes=limit)
                except MalformedLine:
                    malformed.append(seq)
                else:
                    valid.append((seq, line))
                    ts = message.get("timestamp")
                    if ts.__class__ is str:
                        last_ts = ts
                        if first_ts is None:
                            first_ts = ts
                    if message["type"] in STATUS_OF_TYPES:
                        statuses.append(message)
            seq += 1
        self._unnoted = (data, len(valid), first_ts, last_ts, statuses)
        return valid

    def _note(self) -> None:
        """The bookkeeping of the bytes :meth:`_take` took: running checksum and statistics.

        A valid message adds to ``messages`` and may set the first and last
        timestamps, the status and the error of :meth:`summary`; reaching the
        previous tailer's checkpoint compares checksums.
        """
        assert self._unnoted is not None
        data, count, first_ts, last_ts, statuses = self._unnoted
        self._unnoted = None
        self.crc = zlib.crc32(data, self.crc)
        excess = len(self.malformed_seqs) - MAX_TRACKED_MALFORMED
        if excess > 0:
            del self.malformed_seqs[MAX_TRACKED_MALFORMED:]
            self.malformed_untracked += excess
        checkpoint = self.checkpoint
        if checkpoint is not None and self.splitter.read_pos >= checkpoint[0]:
            self.checkpoint = None
            if self.crc != checkpoint[1]:
                self._replaced_while_down(checkpoint, "holds other bytes")
        self.messages += count
        if last_ts is not None:
            self.last_timestamp = last_ts
            if self.first_timestamp is None:
                self.first_timestamp = first_ts
        for message in statuses:
            status = status_of(message)
            if status is not None:
                self.status = status
                if status == "failed" and message["type"] == "error":
                    self.error = _error_text(message.get("data"))

    def read_appended(self, send: Send) -> bool:
        """The live path in one call: whole lines appended since the last read, sent, then noted.

        The common case of a recorder appending to its run: the kept
        descriptor is read with one ``pread`` starting at the newline that
        ended the last line; the new lines are numbered (:class:`LineSplitter`)
        and checked (:func:`~recorder.format.decode_line`), the valid ones handed to
        ``send(experiment_id, lines)``, and only then is the reader's
        bookkeeping done (:meth:`_note`). Returns False, having changed
        nothing, when this is not that case (no kept descriptor, a partial line
        held, a checkpoint or backlog to reach, another byte at that newline,
        bytes that do not end in a newline, a burst of more than
        :data:`HELD_FIRST_READ` bytes or :data:`MAX_LINES_PER_STEP` lines):
        :meth:`poll` then reads the same bytes, with the same outcome
        (``tests/test_latency_path.py`` compares both ways).

        It repeats :meth:`_poll_held` and :meth:`_take` for that one case with
        four Python calls fewer: on a line's way to the socket each costs
        microseconds, the process waking with cold caches (DESIGN §4.3).
        """
        fd = self._held_fd
        splitter = self.splitter
        read_pos = splitter.read_pos
        if (
            fd < 0
            or not read_pos
            or read_pos != splitter.consumed
            or self.checkpoint is not None
            or self._shrunk_since is not None
            or read_pos < self.backlog_end
        ):
            return False
        try:
            data = os.pread(fd, HELD_FIRST_READ, read_pos - 1)
        except OSError:
            return False
        if (
            data[:1] != b"\n"
            or data[-1:] != b"\n"
            or len(data) == HELD_FIRST_READ
            or data.count(b"\n") > MAX_LINES_PER_STEP
        ):
            return False
        data = data[1:]
        if not data:
            return True  # nothing new
        valid = self._check(splitter.next_seq, splitter.feed(data), data)
        if splitter.read_pos > self.size:
            self.size = splitter.read_pos
        try:
            if valid:
                send(self.experiment_id, valid)
        finally:
            self._note()
        return True

    def _poll_held(self, max_bytes: int, max_lines: int) -> PollResult | None:
        """:meth:`poll` with the kept descriptor: one ``pread``; ``None``: poll by name instead.

        The read starts one byte early, at the newline that ended the last
        line: a file shorter than that, or with another byte there (truncated,
        rewritten in place), goes to the full poll, which tells which. So does
        a held partial line, a checkpoint to reach or a backlog to read.
        """
        splitter = self.splitter
        read_pos = splitter.read_pos
        if (
            read_pos != splitter.consumed
            or self.checkpoint is not None
            or self._shrunk_since is not None
            or read_pos < self.backlog_end
        ):
            return None
        start = read_pos - 1 if read_pos else 0
        want = max_bytes + read_pos - start
        first = min(want, HELD_FIRST_READ)
        try:
            data = os.pread(self._held_fd, first, start)
            if len(data) == first < want:  # a burst: the rest of the step
                data += os.pread(self._held_fd, want - first, start + first)
        except OSError:
            return None
        if read_pos:
            if data[:1] != b"\n":
                return None
            data = data[1:]
        if not data:
            return PollResult(PollKind.NONE)
        end = read_pos + len(data)
        self.size = max(self.size, end)
        # A full read may have stopped short of the end: say there may be more.
        return self._take(data, max_lines, read_pos, end + (len(data) == max_bytes), False)

    def _hold(self, fd: int) -> None:
        """Keep ``fd`` for the next ``appended`` poll (at most :data:`MAX_HELD` files keep one)."""
        self._held_fd = fd
        _held.pop(self, None)
        _held[self] = None
        if len(_held) > MAX_HELD:
            oldest = next(iter(_held))
            oldest.release()

    def release(self) -> None:
        """Close the descriptor kept for the live path, if any."""
        fd = self._held_fd
        if fd >= 0:
            self._held_fd = -1
            _held.pop(self, None)
            os.close(fd)

    def identity(self) -> tuple[int, int, int]:
        """``(bytes read, their CRC-32, lines)``, what :mod:`tailer.identities` keeps."""
        if self.checkpoint is not None:  # not read that far yet: the old one still holds
            return self.checkpoint
        return (self.splitter.read_pos, self.crc, self.splitter.next_seq)

    def _replaced_while_down(self, checkpoint: tuple[int, int, int], why: str) -> None:
        self.checkpoint = None
        self.replaced_lines = checkpoint[2]
        log.warning(
            "experiment %s: %s %s than when the tailer last read it: replaced while no tailer "
            "ran; clients resuming from before get log_reset",
            self.experiment_id,
            self.path,
            why,
        )

    def _shrunk(self, identity: tuple[int, int], size: int) -> PollResult:
        now = time.monotonic()
        if self._shrunk_since is None:
            self._shrunk_since = now
        waited = now - self._shrunk_since
        if waited < self.settle:
            return PollResult(PollKind.WAIT, retry_after=self.settle - waited)
        read_pos = self.splitter.read_pos
        return self._mark_reset(identity, f"shrank from {read_pos} to {size} bytes")

    def _not_an_experiment(self) -> PollResult:
        if self._identity is None:
            return PollResult(PollKind.NONE)
        return self._mark_deleted()

    async def verify(self) -> PollResult:
        """After ``verify``: does the file under the name begin with every byte read so far?

        The new file's first ``read_pos`` bytes are read in a worker thread (a
        big run takes a while; the event loop goes on). Equal checksums: the
        copy continues the file (``rsync``'s temp file and rename, ``cp``/``scp``
        over it, ``rsync --append``); reading goes on from ``read_pos``, ``seq``
        too, and nothing is sent again. Different: ``reset``.
        """
        read_pos, crc, generation = self.splitter.read_pos, self.crc, self.generation
        found = await asyncio.to_thread(self._checksum_of_prefix, read_pos)
        if self.generation != generation or self.splitter.read_pos != read_pos or found is None:
            return PollResult(PollKind.NONE, more=True)  # changed meanwhile: poll again
        identity, got = found
        self._shrunk_since = None
        if got != crc:
            return self._mark_reset(identity, "was replaced")
        if identity != self._identity:
            log.info(
                "experiment %s: file replaced by a copy that continues it; reading on",
                self.experiment_id,
            )
        self._identity = identity
        return PollResult(PollKind.NONE, more=True)

    def _checksum_of_prefix(self, length: int) -> tuple[tuple[int, int], int] | None:
        """``(identity, CRC-32 of the first length bytes)``; None if shorter, gone or unreadable."""
        try:
            fd = self._open()
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size < length:
                return None
            crc = 0
            pos = 0
            while pos < length:
                data = os.pread(fd, min(READ_CHUNK, length - pos), pos)
                if not data:
                    return None
                crc = zlib.crc32(data, crc)
                pos += len(data)
            return (st.st_dev, st.st_ino), crc
        except OSError:
            return None
        finally:
            os.close(fd)

    def _mark_reset(self, identity: tuple[int, int], why: str) -> PollResult:
        self.release()
        log.info("experiment %s: file %s; numbering restarts", self.experiment_id, why)
        self._identity = identity
        self._shrunk_since = None
        self.backlog_end = 0
        self.checkpoint = None
        self.generation += 1
        self._reset_state()
        return PollResult(PollKind.RESET, more=True)

    def _mark_deleted(self) -> PollResult:
        self.release()
        log.info("experiment %s: file deleted", self.experiment_id)
        self.deleted = True
        self.generation += 1
        return PollResult(PollKind.DELETED)

    def read_all(self) -> None:
        """Read the file to its current end (used at start-up and by ``tailer ls``)."""
        while True:
            result = self.poll()
            if not result.more:
                return

    # ------------------------------------------------------------------ history

    def history(
        self, start_seq: int, end_offset: int, *, chunk_bytes: int = READ_CHUNK
    ) -> Iterator[list[tuple[int, bytes]]]:
        """Valid ``(seq, line)`` pairs with ``seq >= start_seq`` below ``end_offset``, from disk.

        Seeks with the sparse index, skips lines this reader found malformed
        (without decoding them again) and yields one list per chunk read. The
        caller may await between chunks; if the file was reset or deleted
        meanwhile the next step raises :class:`StaleHistory`.
        """
        generation = self.generation
        if self.deleted:
            raise StaleHistory(self.experiment_id)
        seq0, offset = self.index.seek(start_seq)
        try:
            fd = self._open()
        except OSError:
            raise StaleHistory(self.experiment_id) from None
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self._identity:
                raise StaleHistory(self.experiment_id)
            splitter = LineSplitter(
                start_seq=seq0, start_offset=offset, max_line_bytes=self.max_line_bytes
            )
            malformed = self.malformed_seqs
            m = bisect_left(malformed, start_seq)
            next_bad = malformed[m] if m < len(malformed) else -1
            # Past the tracked malformed lines, validity must be decoded again.
            untracked_from = malformed[-1] + 1 if self.malformed_untracked else -1
            limit = self.max_line_bytes
            while splitter.consumed < end_offset:
                want = min(chunk_bytes, end_offset - splitter.read_pos)
                data = os.pread(fd, want, splitter.read_pos) if want > 0 else b""
                data = at_most_lines(data, MAX_LINES_PER_STEP)
                if not data:
                    break  # cannot happen for an append-only file; stop rather than spin
                seq = splitter.next_seq
                lines = splitter.feed(data)
                end = seq + len(lines)
                if (
                    seq >= start_seq
                    and (next_bad < 0 or next_bad >= end)
                    and (untracked_from < 0 or end <= untracked_from)
                    and None not in lines
                ):
                    # Every line of the chunk is wanted and known valid (the common case):
                    # number them at C speed.
                    if lines:
                        yield list(zip(range(seq, end), lines, strict=True))  # type: ignore[arg-type]
                    if self.generation != generation:
                        raise StaleHistory(self.experiment_id)
                    continue
                out: list[tuple[int, bytes]] = []
                append = out.append
                for line in lines:
                    if seq == next_bad:
                        m += 1
                        next_bad = malformed[m] if m < len(malformed) else -1
                    elif (
                        seq >= start_seq
                        and line is not None
                        and (untracked_from < 0 or seq < untracked_from or _valid(line, limit))
                    ):
                        append((seq, line))
                    seq += 1
                if out:
                    yield out
                if self.generation != generation:
                    raise StaleHistory(self.experiment_id)
        finally:
            os.close(fd)


def _error_text(data: object) -> str | None:
    """The text of an ``error`` message's ``data.error`` (``None`` when it has none), capped."""
    value = data.get("error") if isinstance(data, dict) else None
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return text


def _real_path(fd: int, fallback: str) -> str:
    """Where an open descriptor really points (Linux ``/proc``); ``fallback`` elsewhere."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return fallback


def _valid(line: bytes, limit: int) -> bool:
    try:
        decode_line(line, max_bytes=limit)
    except MalformedLine:
        return False
    return True


def scan_file(path: str | os.PathLike[str], experiment_id: str) -> dict[str, object]:
    """Statistics of a whole file, read once (``tailer ls``)."""
    reader = FileReader(path, experiment_id)
    reader.read_all()
    return reader.summary()
