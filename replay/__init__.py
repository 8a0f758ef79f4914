"""runtail's analysis side: read runs into pandas, export them to Parquet, replay them.

``read_messages(src)`` gives one row per message, ``read_metrics(src)`` the long
table with one row per numeric value; ``src`` is a run file, a directory of runs,
or a list of them. ``tailer export`` writes the same tables to Parquet, and
:mod:`replay.pacing` re-emits a finished run at its recorded pace.
"""

from replay.tables import SkippedLinesWarning, read_messages, read_metrics

__all__ = ["SkippedLinesWarning", "read_messages", "read_metrics"]
