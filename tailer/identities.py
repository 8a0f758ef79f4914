"""Where the tailer left each run file, kept across restarts (DESIGN §12).

A file's identity is the number of bytes read from it, their CRC-32 (the
reader keeps it running) and the number of lines they held. ``tailer serve``
writes them to ``<state dir>/files.json`` every few seconds and when it
stops; the next start compares each file's first bytes with what was read
before (:attr:`tailer.reader.FileReader.checkpoint`). A file whose bytes
changed while no tailer ran was replaced, even by a longer one, which
``since`` alone cannot tell: clients resuming from before get ``log_reset``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from tailer.fanout import DirectoryFanout

__all__ = ["FILE", "keep", "load", "save"]

log = logging.getLogger("tailer")

FILE = "files.json"

Identity = tuple[int, int, int]  # bytes read, their CRC-32, lines they held


def load(state_dir: str | os.PathLike[str]) -> dict[str, Identity]:
    """The identities the last tailer saved ({} if none, or unreadable)."""
    try:
        raw = orjson.loads((Path(state_dir) / FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    out: dict[str, Identity] = {}
    if isinstance(raw, dict):
        for experiment_id, value in raw.items():
            if (
                isinstance(value, list)
                and len(value) == 3
                and all(isinstance(v, int) and v >= 0 for v in value)
            ):
                out[experiment_id] = (value[0], value[1], value[2])
    return out


def save(state_dir: str | os.PathLike[str], identities: dict[str, Identity]) -> None:
    """Write the identities atomically (a crash leaves the old file or the new one)."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{FILE}.{os.getpid()}.tmp"
    tmp.write_bytes(orjson.dumps(identities))
    os.replace(tmp, directory / FILE)


async def keep(
    fanout: DirectoryFanout, state_dir: str | os.PathLike[str], every: float = 2.0
) -> None:
    """Save ``fanout``'s identities whenever they changed, every ``every`` seconds, and at the end."""
    saved: dict[str, Identity] | None = None
    try:
        while True:
            await asyncio.sleep(every)
            current = fanout.identities()
            if current != saved:
                try:
                    await asyncio.to_thread(save, state_dir, current)
                    saved = current
                except OSError as exc:
                    fanout.notes.warn(("state", None), "cannot save %s: %s", state_dir, exc)
    finally:
        current = fanout.identities()
        if current != saved:
            with contextlib.suppress(OSError):
                save(state_dir, current)
