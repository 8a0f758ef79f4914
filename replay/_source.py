"""Where runs come from, and how a run file becomes numbered complete lines.

Two pieces shared by :mod:`replay.tables`, :mod:`replay.export` and
:mod:`replay.pacing`:

* :func:`resolve_sources` turns what a user passes (a file, a directory of
  runs, or a list of them) into :class:`Run` s: ``(experiment_id, path, rank)``.
* :class:`LineBlocks` reads one file in large blocks and yields its complete
  lines, numbered the way the tailer numbers them: ``seq`` is the 0-based
  index of a complete line, counting every line, valid or not. A last line
  without its ``\\n`` (a crash mid-write) is never returned; it is only
  counted as torn. A line that grows past the line limit before its newline
  is not buffered: it comes back as ``None`` (still taking its ``seq``), so
  memory stays bounded whatever the file holds. Where lines end is
  :class:`recorder.format.LineBuffer`'s rule, the one the tailer uses too.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from recorder.format import (
    MAX_LINE_BYTES,
    RUN_FILE_SUFFIX,
    LineBuffer,
    experiment_id_of,
    split_lines,
    split_rank,
)

__all__ = ["LineBlocks", "Run", "SkipCounts", "Source", "resolve_sources"]

#: What ``src`` may be: a path, or an iterable of paths.
Source = Union[str, "os.PathLike[str]", Iterable[Union[str, "os.PathLike[str]"]]]

#: Bytes read at a time (about ten thousand typical messages). Peak memory grows with it:
#: the Python objects of one block dwarf its Arrow rows.
BLOCK_BYTES = 2 << 20


@dataclass(frozen=True)
class Run:
    """One run file, and the experiment id and rank its rows carry.

    A per-rank file ``<run>.rank<N>.jsonl`` is rank ``N`` of run ``<run>``
    (:func:`recorder.format.split_rank`); any other file is a whole run, rank ``None``.
    """

    experiment_id: str
    path: Path
    rank: int | None = None

    @classmethod
    def of(cls, path: Path) -> Run:
        """The run a file holds, named by its stem."""
        experiment_id, rank = split_rank(path.stem)
        return cls(experiment_id, path, rank)


@dataclass
class SkipCounts:
    """Lines that were not messages, summed over every file of one call."""

    malformed: int = 0
    torn: int = 0
    files: list[str] | None = None

    def add(self, path: Path, malformed: int, torn: bool) -> None:
        if malformed or torn:
            self.malformed += malformed
            self.torn += int(torn)
            if self.files is None:
                self.files = []
            self.files.append(path.name)

    def __bool__(self) -> bool:
        return bool(self.malformed or self.torn)

    def describe(self) -> str:
        """One line, e.g. ``2 malformed lines and 1 torn last line (in a.jsonl, b.jsonl)``."""
        parts = []
        if self.malformed:
            parts.append(f"{self.malformed} malformed line{'s' if self.malformed != 1 else ''}")
        if self.torn:
            parts.append(f"{self.torn} torn last line{'s' if self.torn != 1 else ''}")
        names = self.files or []
        where = ", ".join(names[:5]) + (
            f" and {len(names) - 5} more files" if len(names) > 5 else ""
        )
        return f"{' and '.join(parts)} (in {where})"


def _runs_in_directory(directory: Path, skipped: list[str]) -> list[Run]:
    runs = []
    for path in sorted(directory.glob(f"*{RUN_FILE_SUFFIX}")):
        if not path.is_file():
            continue
        if experiment_id_of(path.name) is None:
            skipped.append(path.name)
            continue
        runs.append(Run.of(path))
    return runs


def resolve_sources(src: Source, *, skipped: list[str] | None = None) -> list[Run]:
    """The runs named by ``src``: a ``.jsonl`` file, a directory, or a list of either.

    A directory contributes every ``*.jsonl`` directly in it (sorted by name)
    whose stem is a valid experiment id, as the tailer sees it; other names
    are appended to ``skipped``. A file named explicitly is always read, its
    stem naming its run and rank (:meth:`Run.of`).

    Raises:
        FileNotFoundError: a path does not exist.
        TypeError: ``src`` is not a path or a list of paths.
    """
    if skipped is None:
        skipped = []
    if isinstance(src, (str, os.PathLike)):
        items: list[object] = [src]
    elif isinstance(src, Iterable) and not isinstance(src, (bytes, bytearray)):
        items = list(src)
    else:
        raise TypeError(f"src must be a path or a list of paths, not {type(src).__name__}")
    runs: list[Run] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"src must be a path or a list of paths, not {type(item).__name__}")
        path = Path(item)
        if path.is_dir():
            runs.extend(_runs_in_directory(path, skipped))
        elif path.exists():
            runs.append(Run.of(path))
        else:
            raise FileNotFoundError(f"no such file or directory: {str(path)!r}")
    return runs


class LineBlocks:
    """Iterate over one open binary file as ``(first_seq, lines)`` blocks.

    ``lines`` holds the complete lines of one block, without their newlines
    (``None`` for a line over ``max_line_bytes``); the first has ``first_seq``,
    the next ``first_seq + 1`` and so on. After iteration, :attr:`torn` says
    whether the file ended inside a line and :attr:`next_seq` is the number of
    complete lines. :attr:`bytes_read` advances as blocks are read (progress).
    """

    def __init__(
        self,
        file: io.BufferedIOBase,
        *,
        block_bytes: int | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.file = file
        self.block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
        self.max_line_bytes = max_line_bytes
        self.next_seq = 0
        self.bytes_read = 0
        self.torn = False

    def __iter__(self) -> Iterator[tuple[int, list[bytes | None]]]:
        for oversized, chunk in self.chunks():
            lines: list[bytes | None] = split_lines(bytes(chunk))[0]  # type: ignore[assignment]
            out = [None, *lines] if oversized else lines
            if out:
                first = self.next_seq
                self.next_seq += len(out)
                yield first, out

    def chunks(self) -> Iterator[tuple[bool, bytearray]]:
        """The file as ``(oversized, chunk)``: raw bytes of complete lines, each ending in ``\\n``.

        ``oversized`` says that one line over the limit, left out of ``chunk``,
        came just before it. Only the caller numbers the lines (and so
        advances :attr:`next_seq`); :attr:`torn` and :attr:`bytes_read` are
        kept here, as for iteration. Each chunk is a new ``bytearray``, the
        caller's to keep.
        """
        readinto = self.file.readinto
        lines = LineBuffer(self.max_line_bytes)
        while True:
            read, _, oversized, chunk = lines.read(readinto, self.block_bytes)
            if not read:
                break
            self.bytes_read += read
            if chunk or oversized:
                yield oversized, chunk
        self.torn = lines.torn
