"""runtail's analysis side: read runs into pandas, export them to Parquet, replay them.

``read_messages(src)`` gives one row per message, ``read_metrics(src)`` the long
table with one row per numeric value; ``src`` is a run file, a directory of runs,
or a list of them. ``tailer export`` writes the same tables to Parquet, and
``paced_frames`` re-emits a finished run at its recorded pace.

Names load on first use, so a replay served by the tailer does not pay for
pyarrow and pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recorder._lazy import lazy_getattr

if TYPE_CHECKING:
    from replay.pacing import iter_frames, paced_frames
    from replay.tables import (
        MESSAGE_COLUMNS,
        METRIC_COLUMNS,
        SkippedLinesWarning,
        read_messages,
        read_metrics,
    )

__all__ = [
    "MESSAGE_COLUMNS",
    "METRIC_COLUMNS",
    "SkippedLinesWarning",
    "iter_frames",
    "paced_frames",
    "read_messages",
    "read_metrics",
]

__getattr__ = lazy_getattr(
    __name__,
    {
        **dict.fromkeys(
            (
                "MESSAGE_COLUMNS",
                "METRIC_COLUMNS",
                "SkippedLinesWarning",
                "read_messages",
                "read_metrics",
            ),
            "replay.tables",
        ),
        "iter_frames": "replay.pacing",
        "paced_frames": "replay.pacing",
    },
)
