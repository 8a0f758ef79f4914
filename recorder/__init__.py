"""runtail's recording side: append every training message as one JSON line.

``import recorder`` loads neither torch, lightning nor flwr: the Lightning
classes are imported on first use, so a process without torch can record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recorder._lazy import lazy_getattr
from recorder.format import MalformedLine, decode_line, encode_message, validate_experiment_id

if TYPE_CHECKING:
    from recorder.lightning import JsonlLogger, RecorderCallback
    from recorder.recorder import MetricsRecorder

__all__ = [
    "JsonlLogger",
    "MalformedLine",
    "MetricsRecorder",
    "RecorderCallback",
    "decode_line",
    "encode_message",
    "validate_experiment_id",
]

__getattr__ = lazy_getattr(
    __name__,
    {
        "MetricsRecorder": "recorder.recorder",
        "RecorderCallback": "recorder.lightning",
        "JsonlLogger": "recorder.lightning",
    },
)
