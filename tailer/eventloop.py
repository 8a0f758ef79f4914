"""The event loop ``tailer serve`` and ``tailer replay`` run on: uvloop where installed.

uvloop (libuv under asyncio's API) wakes up, runs callbacks and writes to
sockets in C where asyncio's own loop runs Python: it takes a tenth of a
millisecond or so off every line's way from the file to the client
(``benchmarks/bench_latency.py``). It is a dependency on CPython outside
Windows; anywhere it is missing, asyncio's loop runs the same code.
``--loop asyncio`` picks asyncio's loop on purpose.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LOOPS", "check", "run"]

T = TypeVar("T")

#: ``--loop`` choices: ``auto`` is uvloop when it can be imported, else asyncio.
LOOPS = ("auto", "uvloop", "asyncio")


def check(loop: str) -> None:
    """Raise ``ValueError`` if ``loop`` is unknown, or ``uvloop`` and cannot be imported."""
    if loop not in LOOPS:
        raise ValueError(f"--loop must be one of {', '.join(LOOPS)}, not {loop!r}")
    if loop == "uvloop" and _uvloop() is None:
        raise ValueError("--loop uvloop: uvloop is not installed (pip install uvloop)")


def run(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """Run ``main`` to completion on a new event loop of the kind ``loop`` names."""
    uvloop = _uvloop() if loop != "asyncio" else None
    if uvloop is not None:
        return uvloop.run(main)
    if loop == "uvloop":
        main.close()
        raise ValueError("uvloop is not installed")
    return asyncio.run(main)


def _uvloop() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop
