"""Noticing appended bytes: kernel notifications for speed, a periodic size check for certainty.

:func:`watch_directory` runs until cancelled and calls ``on_change(ids)``
with the experiment ids whose files changed (``None``: check everything).
Three sources, the fastest available first:

* On Linux, inotify read directly on the event loop (``loop.add_reader`` on
  one inotify descriptor watching the directory): an appended line reaches
  clients a fraction of a millisecond after the write. A wake-up whose events
  are one ``IN_MODIFY`` already seen, byte for byte (a run appended to again),
  is handed on without parsing. watchfiles' ``awatch``
  costs one to two milliseconds more (its Rust thread wakes every ``step``
  and waits for a quiet ``step`` before reporting), which is most of the
  latency budget.
* Elsewhere, or if that fails, ``watchfiles.awatch`` on the directory,
  filtered to ``*.jsonl``, with ``step`` 1 ms instead of 50 and a short
  ``debounce``.
* Always, a sweep every ``scan_interval`` seconds that lists the directory
  and lets the fan-out stat every file: it catches whatever notifications
  coalesced or missed. With ``poll=True`` (network filesystems, where remote
  writes raise no events) or when notifications are unavailable (inotify
  watches exhausted), it runs every ``poll_interval`` seconds and is the only
  source; a warning says so.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from recorder.format import experiment_id_of

__all__ = ["JsonlFilter", "NotificationsUnavailable", "watch_directory"]

log = logging.getLogger("tailer")

OnChange = Callable[[set[str] | None], Awaitable[None]]
#: Handles changed ids synchronously, in the notification callback; returns those it
#: left. Its second set holds the ids named by more than content events (see below).
AtOnce = Callable[[set[str], set[str]], set[str]]

#: While the watched directory is gone, how often to look for its return.
REARM_INTERVAL = 0.1


class NotificationsUnavailable(OSError):
    """The kernel cannot notify us about this directory (no inotify, watch limit reached...)."""


class JsonlFilter:
    """A watchfiles filter passing only ``<valid id>.jsonl`` directly in the directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = str(directory)

    def __call__(self, change: object, path: str) -> bool:
        head, name = os.path.split(path)
        return head == self.directory and experiment_id_of(name) is not None


async def watch_directory(
    directory: Path,
    on_change: OnChange,
    *,
    poll: bool = False,
    scan_interval: float = 1.0,
    poll_interval: float = 0.25,
    step_ms: int = 1,
    debounce_ms: int = 20,
    at_once: AtOnce | None = None,
) -> None:
    """Call ``on_change`` with changed experiment ids until cancelled.

    With ``at_once``, a notification naming files is first handed to it in
    the notification's own callback (no task in between: the latency path);
    only the ids it returns, and every sweep, go through ``on_change``. Its
    second argument, ``named``, holds the ids for which something else than
    content changed (created, renamed, deleted, attributes; with watchfiles
    or after an overflow: all): for the others, the name still leads to the
    file it led to before (``FileReader.poll(appended=True)``).

    If the directory itself goes away (``rm -rf DIR``), changes are swept
    every ``poll_interval`` while it is gone and its return is checked every
    :data:`REARM_INTERVAL`; once it is back, inotify watches it again.
    """
    changes = _Coalescer(on_change, at_once)
    sweeper = asyncio.create_task(_sweep(changes, poll_interval if poll else scan_interval))
    try:
        if not poll:
            while True:
                try:
                    gone = await _inotify(directory, changes)
                except NotificationsUnavailable as exc:
                    log.debug("direct inotify unavailable (%s); using watchfiles", exc)
                    # Returns only when notifications fail; the sweep is then the only source.
                    await _watchfiles(directory, changes, step_ms=step_ms, debounce_ms=debounce_ms)
                    gone = False
                sweeper.cancel()
                sweeper = asyncio.create_task(_sweep(changes, poll_interval))
                if not gone:
                    break
                while not os.path.isdir(directory):
                    await asyncio.sleep(REARM_INTERVAL)
                log.warning("the watched directory %s is back; watching it again", directory)
                sweeper.cancel()
                sweeper = asyncio.create_task(_sweep(changes, scan_interval))
                changes.add(None)  # whatever was created before the new watch
        await sweeper
    finally:
        sweeper.cancel()
        changes.cancel()


class _Coalescer:
    """Runs ``on_change`` for the ids reported so far; reports arriving meanwhile wait for the next run."""

    def __init__(self, on_change: OnChange, at_once: AtOnce | None = None) -> None:
        self.on_change = on_change
        self.at_once = at_once
        self.pending: set[str] = set()
        self.everything = False
        self.task: asyncio.Task[None] | None = None

    def add(self, ids: set[str] | None, named: set[str] | None = None) -> None:
        """Report changed ids (``None``: check everything); ``named``: see :func:`watch_directory`."""
        if ids is None:
            self.everything = True
        else:
            if self.at_once is not None:
                # Until a full check ran, a lost rename cannot be ruled out.
                try:
                    ids = self.at_once(ids, ids if named is None or self.everything else named)
                except Exception:
                    log.exception("reading changed files failed")  # the task tries again
                if not ids:
                    return
            self.pending |= ids
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.pending or self.everything:
            ids: set[str] | None = None if self.everything else self.pending
            self.pending, self.everything = set(), False
            try:
                await self.on_change(ids)
            except Exception:
                log.exception("reading changed files failed")

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


async def _sweep(changes: _Coalescer, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        changes.add(None)


# --------------------------------------------------------------------------- inotify (Linux)

_IN_MODIFY = 0x2
_IN_ATTRIB = 0x4
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x1000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
)
_EVENT = struct.Struct("iIII")
_UNSEEN = ""  # no experiment id is empty
#: Events that change a file's content only, never which file its name leads to.
_CONTENT = _IN_MODIFY | _IN_CLOSE_WRITE
_READ_SIZE = 1 << 16
_LONGEST_EVENT = _EVENT.size + 256  # NAME_MAX + 1


def _libc() -> ctypes.CDLL:
    if not sys.platform.startswith("linux"):
        raise NotificationsUnavailable("inotify is Linux-only")
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.inotify_init1  # noqa: B018
    except (OSError, AttributeError) as exc:
        raise NotificationsUnavailable(f"no inotify in {name}: {exc}") from None
    return libc


async def _inotify(directory: Path, changes: _Coalescer) -> bool:
    """Report changes from an inotify descriptor read on the event loop until the watch ends.

    Returns True when the directory went away (it can be watched again once
    it is back), False when no watch could be set (the limit is reached).
    """
    libc = _libc()
    fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        raise NotificationsUnavailable(os.strerror(ctypes.get_errno()))
    try:
        if libc.inotify_add_watch(fd, os.fsencode(directory), _MASK) < 0:
            code = ctypes.get_errno()
            if code == errno.ENOSPC:
                # Not a reason to try watchfiles (it would hit the same limit): poll instead.
                log.warning(
                    "inotify watch limit reached (fs.inotify.max_user_watches); "
                    "falling back to checking sizes periodically"
                )
                return False
            raise NotificationsUnavailable(os.strerror(code))
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        ids_of: dict[bytes, str | None] = {}  # file name -> experiment id (None: not one)
        # One IN_MODIFY event, byte for byte (the watch, the mask, the padded name) -> the id
        # it names: the usual wake-up, a line appended to a run, needs no parsing.
        modified: dict[bytes, str] = {}

        def failed(exc: OSError) -> bool:
            """Whether reading the descriptor failed (the watch ends) rather than found nothing."""
            if isinstance(exc, BlockingIOError):
                return False
            if not ended.done():
                ended.set_exception(exc)
            return True

        def readable() -> None:
            try:
                data = os.read(fd, _READ_SIZE)
            except OSError as exc:
                failed(exc)
                return
            experiment_id = modified.get(data)
            if experiment_id is not None:  # the latency path (DESIGN §4.3)
                changes.add({experiment_id}, set())
            else:
                parse(data)

        def parse(data: bytes) -> None:
            ids: set[str] = set()
            named: set[str] = set()
            everything = False
            while True:
                pos = 0
                while pos + _EVENT.size <= len(data):
                    start = pos
                    _wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                    name = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
                    pos += _EVENT.size + length
                    if mask & _IN_Q_OVERFLOW:
                        everything = True
                    elif mask & (_IN_IGNORED | _IN_DELETE_SELF | _IN_MOVE_SELF):
                        if not ended.done():
                            ended.set_result(None)
                    elif name:
                        experiment_id = ids_of.get(name, _UNSEEN)
                        if experiment_id is _UNSEEN:
                            if len(ids_of) >= 4096:
                                ids_of.clear()
                            experiment_id = ids_of[name] = experiment_id_of(os.fsdecode(name))
                        if experiment_id is not None:
                            ids.add(experiment_id)
                            if mask & ~_CONTENT:
                                named.add(experiment_id)
                            elif mask == _IN_MODIFY:
                                if len(modified) >= 4096:
                                    modified.clear()
                                modified[data[start:pos]] = experiment_id
                if len(data) <= _READ_SIZE - _LONGEST_EVENT:
                    break  # everything queued fitted: no need for a read that fails
                try:
                    data = os.read(fd, _READ_SIZE)
                except OSError as exc:
                    if failed(exc):
                        return
                    break
            if everything:
                changes.add(None)
            elif ids:
                changes.add(ids, named)

        loop.add_reader(fd, readable)
        try:
            await ended
            log.warning(
                "the watched directory %s went away; checking sizes periodically until it is back",
                directory,
            )
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    return True


# --------------------------------------------------------------------------- watchfiles


async def _watchfiles(
    directory: Path, changes: _Coalescer, *, step_ms: int, debounce_ms: int
) -> None:
    """Forward watchfiles notifications; return (leaving the sweep) if notifications fail."""
    import watchfiles

    resolved = directory.resolve()
    try:
        async for found in watchfiles.awatch(
            resolved,
            watch_filter=JsonlFilter(resolved),
            step=step_ms,
            debounce=debounce_ms,
            recursive=False,
            force_polling=False,
        ):
            changes.add({os.path.basename(path)[:-6] for _change, path in found})
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # e.g. inotify watch limit reached, directory unwatchable
        log.warning(
            "file notifications unavailable (%s); falling back to checking sizes "
            "periodically (raise fs.inotify.max_user_watches, or use --poll)",
            exc,
        )
