"""runtail's streaming side: ``tailer serve DIR`` pushes new log lines to WebSocket clients.

In-process use (tests, notebooks, embedding)::

    async with serve_directory("runs", port=0) as app:
        print(app.url)
        await app.serve_forever()

Names load on first use, so ``tailer export`` does not pay for the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recorder._lazy import lazy_getattr

if TYPE_CHECKING:
    from tailer.server import TailerServer, serve_directory, serve_replay

__all__ = ["TailerServer", "serve_directory", "serve_replay"]

__getattr__ = lazy_getattr(__name__, dict.fromkeys(__all__, "tailer.server"))
