"""Noticing appended bytes: watchfiles for speed, a periodic size check for certainty.

:func:`watch_directory` runs until cancelled and calls ``on_change(ids)``
with the experiment ids whose files changed. Two sources feed it:

* ``watchfiles.awatch`` on the directory, filtered to ``*.jsonl`` and tuned
  for latency (``step`` of 1 ms instead of 50, a short ``debounce``), so an
  appended line reaches clients a millisecond or two after the write;
* a sweep every ``scan_interval`` seconds that lists the directory and lets
  the hub stat every file: it catches whatever the watcher coalesced or
  missed, and is the only source with ``poll=True`` (network filesystems,
  where inotify sees no remote writes) or when inotify watches run out.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from recorder.format import is_valid_experiment_id

__all__ = ["JsonlFilter", "watch_directory"]

log = logging.getLogger("tailer")


class JsonlFilter:
    """A watchfiles filter passing only ``<valid id>.jsonl`` directly in the directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = str(directory)

    def __call__(self, change: object, path: str) -> bool:
        head, name = os.path.split(path)
        return (
            head == self.directory and name.endswith(".jsonl") and is_valid_experiment_id(name[:-6])
        )


async def watch_directory(
    directory: Path,
    on_change: Callable[[set[str] | None], Awaitable[None]],
    *,
    poll: bool = False,
    scan_interval: float = 1.0,
    poll_interval: float = 0.25,
    step_ms: int = 1,
    debounce_ms: int = 20,
) -> None:
    """Call ``on_change`` with changed experiment ids (``None``: check everything) until cancelled."""
    sweeper = asyncio.create_task(_sweep(on_change, poll_interval if poll else scan_interval))
    try:
        if not poll:
            # Returns only when notifications fail; the sweep then becomes the only source.
            await _notify(directory, on_change, step_ms=step_ms, debounce_ms=debounce_ms)
            sweeper.cancel()
            sweeper = asyncio.create_task(_sweep(on_change, poll_interval))
        await sweeper
    finally:
        sweeper.cancel()


async def _sweep(on_change: Callable[[set[str] | None], Awaitable[None]], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await on_change(None)
        except Exception:
            log.exception("periodic directory check failed")


async def _notify(
    directory: Path,
    on_change: Callable[[set[str] | None], Awaitable[None]],
    *,
    step_ms: int,
    debounce_ms: int,
) -> None:
    """Forward watchfiles notifications; return (leaving the sweep) if notifications fail."""
    import watchfiles

    resolved = directory.resolve()
    try:
        async for changes in watchfiles.awatch(
            resolved,
            watch_filter=JsonlFilter(resolved),
            step=step_ms,
            debounce=debounce_ms,
            recursive=False,
            force_polling=False,
        ):
            ids = {os.path.basename(path)[:-6] for _change, path in changes}
            try:
                await on_change(ids)
            except Exception:
                log.exception("reading changed files failed")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # e.g. inotify watch limit reached, directory unwatchable
        log.warning(
            "file notifications unavailable (%s); falling back to checking sizes "
            "periodically (raise fs.inotify.max_user_watches, or use --poll)",
            exc,
        )
