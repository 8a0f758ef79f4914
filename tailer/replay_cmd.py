"""``tailer replay FILE``: serve one finished run on ``/`` at its recorded pace.

Every client that connects gets its own replay from the start, so an
unmodified frontend pointed at ``ws://localhost:8765`` sees the run as if it
were live. The pacing itself is :func:`replay.pacing.paced_frames`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from recorder.format import named_file_id
from tailer.paths import run_to_replay
from tailer.reader import FileReader
from tailer.serve_cmd import add_network_arguments, configure_logging, network_options, run_server
from tailer.server import TailerServer, serve_replay

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a recorded <experiment_id>.jsonl run")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="divide the recorded gaps by S (2: twice as fast; 0: no waiting; default 1)",
    )
    parser.add_argument(
        "--max-gap",
        type=float,
        default=None,
        metavar="G",
        help="cap any recorded gap at G seconds (before dividing by --speed)",
    )
    add_network_arguments(parser)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.quiet)
    path = Path(args.file)
    try:
        if not math.isfinite(args.speed) or args.speed < 0:
            raise ValueError(f"--speed must be a finite number >= 0, not {args.speed}")
        if args.max_gap is not None and (not math.isfinite(args.max_gap) or args.max_gap <= 0):
            raise ValueError(f"--max-gap must be a positive number, not {args.max_gap}")
        path = run_to_replay(path)
        options = network_options(args)
    except ValueError as exc:  # PathError included
        print(f"tailer: {exc}", file=sys.stderr)
        return 2
    if not _holds_a_message(path):
        print(
            f"tailer: warning: {path} holds no message (empty, or no line is one); nothing to replay",
            file=sys.stderr,
        )
        return 1

    def start(
        on_listen: Callable[[TailerServer], None],
    ) -> AbstractAsyncContextManager[TailerServer]:
        return serve_replay(
            path, speed=args.speed, max_gap=args.max_gap, on_listen=on_listen, **vars(options)
        )

    speed = "as fast as possible" if args.speed == 0 else f"at {args.speed:g}x"
    return run_server(start, lambda app: f"replaying {path} {speed}", options, args.loop)


def _holds_a_message(path: Path) -> bool:
    """Whether some complete line of ``path`` is a message (reads only up to the first one)."""
    reader = FileReader(path, named_file_id(path.name))
    while True:
        result = reader.poll()
        if result.lines:
            return True
        if not result.more:
            return False
