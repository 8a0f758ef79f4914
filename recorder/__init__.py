"""runtail's recording side: append every training message as one JSON line.

``import recorder`` loads neither torch, lightning nor flwr: the Lightning
classes are imported on first use, so a process without torch can record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

_LAZY = {
    "MetricsRecorder": "recorder.recorder",
    "RecorderCallback": "recorder.lightning",
    "JsonlLogger": "recorder.lightning",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'recorder' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
