"""A sparse ``seq -> byte offset`` index of one log file.

Only every ``every``-th line's offset is kept (a few kilobytes for millions of
lines), so a client resuming with ``since=N`` seeks to the nearest recorded
line at or before ``N + 1`` and scans at most ``every - 1`` lines from there
instead of the whole file. Pure: no I/O.
"""

from __future__ import annotations

from array import array

__all__ = ["SparseIndex"]


class SparseIndex:
    """Offsets of the lines numbered ``0, every, 2 * every, ...``."""

    __slots__ = ("_offsets", "every")

    def __init__(self, every: int = 1000) -> None:
        if every < 1:
            raise ValueError(f"index spacing must be at least 1, not {every!r}")
        self.every = every
        self._offsets = array("q")

    def __len__(self) -> int:
        return len(self._offsets)

    def record(self, seq: int, offset: int) -> None:
        """Note that line ``seq`` (a multiple of ``every``) starts at ``offset``."""
        k = seq // self.every
        if k == len(self._offsets):
            self._offsets.append(offset)
        elif k > len(self._offsets):  # pragma: no cover - a caller bug, lines are fed in order
            raise ValueError(
                f"index gap: line {seq} recorded before line {len(self._offsets) * self.every}"
            )

    def seek(self, seq: int) -> tuple[int, int]:
        """``(seq0, offset)`` of the last indexed line at or before ``seq``."""
        if not self._offsets or seq <= 0:
            return 0, 0
        k = min(seq // self.every, len(self._offsets) - 1)
        return k * self.every, self._offsets[k]

    def clear(self) -> None:
        del self._offsets[:]
