"""runtail's streaming side: ``tailer serve DIR`` pushes new log lines to WebSocket clients.

In-process use (tests, notebooks, embedding)::

    async with serve_directory("runs", port=0) as app:
        print(app.url)
        await app.serve_forever()

Names load on first use, so ``tailer export`` does not pay for the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tailer.server import TailerServer, serve_directory, serve_replay

__all__ = ["TailerServer", "serve_directory", "serve_replay"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'tailer' has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module("tailer.server"), name)
    return value
