"""``tailer serve DIR``: stream a directory of runs to WebSocket clients and the dashboard."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import logging
import signal
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from urllib.parse import quote

from tailer import config, eventloop
from tailer.config import NetworkOptions
from tailer.listening import RESERVED_FDS
from tailer.paths import PathError, directory_to_serve
from tailer.server import ListenError, TailerServer, serve_directory
from tailer.sessions import DEFAULT_SESSION_TTL, default_state_dir, parse_duration

__all__ = ["add_arguments", "add_network_arguments", "run", "run_server"]

log = logging.getLogger("tailer")


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``serve`` and ``replay``: address, security, limits, logging."""
    net = parser.add_argument_group("network")
    net.add_argument(
        "--host",
        default=None,
        help=f"address to bind (default {config.DEFAULT_HOST}, or TAILER_HOST)",
    )
    net.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port to bind, 0 for any free one (default {config.DEFAULT_PORT}, or TAILER_PORT)",
    )
    sec = parser.add_argument_group("security")
    sec.add_argument(
        "--token",
        default=None,
        help="require this token on every request (?token= or Authorization: Bearer); "
        "default TAILER_TOKEN",
    )
    sec.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept browser connections from ORIGIN (repeatable; '*' for any)",
    )
    sec.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept requests whose Host is NAME (repeatable; '*' for any)",
    )
    lim = parser.add_argument_group("limits")
    lim.add_argument(
        "--max-clients",
        type=int,
        default=None,
        help=f"WebSocket connections at once (default {config.DEFAULT_MAX_CLIENTS})",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument(
        "--loop",
        choices=eventloop.LOOPS,
        default="auto",
        help="event loop: uvloop (faster) when installed, else asyncio's (default auto)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory",
        metavar="DIR",
        help="directory of <experiment_id>.jsonl files (created if missing)",
    )
    add_network_arguments(parser)
    parser.add_argument(
        "--queue-bytes",
        type=int,
        default=None,
        help="bytes a client may fall behind before it is closed with 1013 "
        f"(default {config.DEFAULT_QUEUE_BYTES})",
    )
    parser.add_argument(
        "--max-queued-bytes",
        type=int,
        default=None,
        help="bytes queued for all clients together; past it the clients with the most "
        f"queued are closed with 1013 first (default {config.DEFAULT_MAX_QUEUED_BYTES})",
    )
    watch = parser.add_argument_group("watching")
    watch.add_argument(
        "--poll",
        action="store_true",
        help="check file sizes periodically instead of using inotify "
        "(network filesystems, where remote writes raise no events)",
    )
    watch.add_argument(
        "--poll-interval",
        type=float,
        default=0.25,
        help="seconds between checks with --poll (default 0.25)",
    )
    watch.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="serve *.jsonl symlinks wherever they point (default: only links to files "
        "inside DIR; others are ignored with a warning)",
    )
    watch.add_argument(
        "--scan-interval",
        type=float,
        default=None,
        help="seconds between safety size checks alongside inotify "
        f"(default {config.DEFAULT_SCAN_INTERVAL})",
    )
    sessions = parser.add_argument_group("sessions (resume for clients that never send since)")
    sessions.add_argument(
        "--state-dir",
        default=None,
        metavar="PATH",
        help="where cookie sessions' cursors are kept across restarts "
        "(default $XDG_STATE_HOME/runtail/<hash of DIR>, or ~/.local/state/...)",
    )
    sessions.add_argument(
        "--session-ttl",
        type=parse_duration,
        default=DEFAULT_SESSION_TTL,
        metavar="DURATION",
        help="forget a session unused this long: seconds, or 30m, 24h, 7d (default 24h)",
    )


def network_options(args: argparse.Namespace) -> NetworkOptions:
    """Keyword arguments for the server from the CLI, falling back on ``TAILER_*`` variables."""
    max_clients = (
        args.max_clients
        if args.max_clients is not None
        else config.env_int("MAX_CLIENTS", config.DEFAULT_MAX_CLIENTS)
    )
    if max_clients < 1:
        raise ValueError(f"--max-clients must be at least 1, not {max_clients}")
    if args.token == "":
        raise ValueError("--token must not be empty (leave it out to serve without a token)")
    port = args.port if args.port is not None else config.env_int("PORT", config.DEFAULT_PORT)
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, not {port}")
    return NetworkOptions(
        host=args.host or config.env_str("HOST", None) or config.DEFAULT_HOST,
        port=port,
        # An empty TAILER_TOKEN counts as unset (env_str), never as a token nobody can give.
        token=args.token if args.token is not None else config.env_str("TOKEN", None),
        allow_origins=(*config.env_list("ALLOW_ORIGINS"), *args.allow_origin),
        allow_hosts=(*config.env_list("ALLOW_HOSTS"), *args.allow_host),
        max_clients=max_clients,
    )


def configure_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tailer: %(levelname)s %(message)s"))
    root = logging.getLogger("tailer")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
    # websockets logs every refused handshake and closed connection; we log our own.
    logging.getLogger("tailer.websockets").setLevel(logging.ERROR)


def run_server(
    start: Callable[[Callable[[TailerServer], None]], AbstractAsyncContextManager[TailerServer]],
    describe: Callable[[TailerServer], str],
    options: NetworkOptions,
    loop: str = "auto",
) -> int:
    """Run a server until SIGINT/SIGTERM (exit 0); a bind failure prints one line and gives 2.

    ``loop``: the event loop (:mod:`tailer.eventloop`).
    """

    def announce(app: TailerServer) -> None:
        suffix = f"?token={quote(app.token, safe='')}" if app.token else ""
        print(f"tailer: {describe(app)} on {app.url}{suffix} ({app.ws_url})", flush=True)
        others = app.other_urls
        if others:
            print("tailer: also on " + " ".join(url + suffix for url in others), flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        async with start(announce):
            # What start-up built (modules, the runs' readers) lives as long as the server:
            # out of the collector's way, a full collection no longer walks it (a pause of
            # tens of milliseconds on a live line's path, DESIGN §4.3).
            gc.freeze()
            await stop.wait()
            log.info("shutting down: closing clients (1001)")

    try:
        eventloop.check(loop)
    except ValueError as exc:
        print(f"tailer: {exc}", file=sys.stderr)
        return 2
    try:
        eventloop.run(main(), loop)
    except ListenError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use (is another tailer running? try --port)"
        else:
            reason = exc.strerror or str(exc)
        print(f"tailer: cannot listen on {options.host}:{options.port}: {reason}", file=sys.stderr)
        return 2
    return 0


def _raise_open_file_limit(max_clients: int) -> None:
    """Raise the soft ``RLIMIT_NOFILE`` so ``max_clients`` sockets plus some files fit.

    Distributions start processes with a soft limit of 1024 descriptors (the
    hard one is usually far higher): below ``--max-clients``, ``accept()``
    failed with EMFILE, run files could not be opened, and lines waited.
    Warns if even the hard limit is too low.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return
    # Handshakes in progress, the listening socket, inotify, file reads (RESERVED_FDS).
    wanted = max_clients + config.DEFAULT_MAX_HANDSHAKES + RESERVED_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < wanted:
        log.warning(
            "only %d open files allowed (ulimit -n): fewer than --max-clients %d clients fit",
            soft,
            max_clients,
        )


def run(args: argparse.Namespace) -> int:
    configure_logging(args.quiet)
    try:
        options = network_options(args)
        queue_bytes = (
            args.queue_bytes
            if args.queue_bytes is not None
            else config.env_int("QUEUE_BYTES", config.DEFAULT_QUEUE_BYTES)
        )
        scan_interval = (
            args.scan_interval
            if args.scan_interval is not None
            else config.env_float("SCAN_INTERVAL", config.DEFAULT_SCAN_INTERVAL)
        )
        max_queued_bytes = (
            args.max_queued_bytes
            if args.max_queued_bytes is not None
            else config.env_int("MAX_QUEUED_BYTES", config.DEFAULT_MAX_QUEUED_BYTES)
        )
        if max_queued_bytes < queue_bytes:
            raise ValueError(
                f"--max-queued-bytes ({max_queued_bytes}) must be at least --queue-bytes "
                f"({queue_bytes})"
            )
        if queue_bytes < 1024:
            raise ValueError(f"--queue-bytes must be at least 1024, not {queue_bytes}")
        if scan_interval <= 0 or args.poll_interval <= 0:
            raise ValueError("--scan-interval and --poll-interval must be positive")
    except ValueError as exc:
        print(f"tailer: {exc}", file=sys.stderr)
        return 2
    _raise_open_file_limit(options.max_clients)
    directory = args.directory
    try:
        created = directory_to_serve(directory)
    except PathError as exc:
        print(f"tailer: {exc}", file=sys.stderr)
        return 2
    if created:
        print(f"tailer: {created}", file=sys.stderr)

    def start(
        on_listen: Callable[[TailerServer], None],
    ) -> AbstractAsyncContextManager[TailerServer]:
        return serve_directory(
            directory,
            queue_bytes=queue_bytes,
            max_queued_bytes=max_queued_bytes,
            poll=args.poll,
            poll_interval=args.poll_interval,
            scan_interval=scan_interval,
            follow_symlinks=args.follow_symlinks,
            state_dir=args.state_dir or default_state_dir(directory),
            session_ttl=args.session_ttl,
            on_listen=on_listen,
            **vars(options),
        )

    return run_server(start, lambda app: f"serving {directory}", options, args.loop)
