"""The tailer's asyncio server: WebSocket streams and a few HTTP endpoints on one port.

:func:`serve_directory` is the in-process API (tests, notebooks, embedding);
:func:`serve_replay` serves one finished run paced on ``/``. Both are async
context managers yielding a :class:`TailerServer` whose ``port`` is the real
port (bind port 0 to get a free one)::

    async with serve_directory("runs", port=0) as server:
        print(server.ws_url)
        await server.serve_forever()

Each connection follows websockets' own server: it is added to a set, its
handler runs, failures are logged with ``exc_info``, and it is removed in
``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tailer import wsio
from tailer.api import hparams_body, metrics_body, parse_metrics_query, schema_body
from tailer.config import (
    DEFAULT_HOST,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_PORT,
    DEFAULT_QUEUE_BYTES,
    DEFAULT_SCAN_INTERVAL,
    NetworkOptions,
)
from tailer.fanout import Client, QueueBudget
from tailer.frames import PONG_FRAME
from tailer.listening import BACKLOG, AcceptErrors, Admission, listen_socket, other_urls
from tailer.routes import (
    TOKEN_COOKIE,
    RequestError,
    Route,
    content_type,
    host_allowed,
    is_loopback_host,
    origin_allowed,
    parse_ws_route,
    single_header,
    split_target,
    static_file,
    token_presented,
)
from tailer.series_api import SeriesBuilding, SeriesService, parse_series_query
from tailer.sessions import DEFAULT_SESSION_TTL, Session, SessionClient, SessionStore
from tailer.sources import LiveDirectory, PacedReplay, RunSource

__all__ = ["MAX_CLIENT_FRAME", "ListenError", "TailerServer", "serve_directory", "serve_replay"]

log = logging.getLogger("tailer")

#: Largest frame a client may send (pings are ~20 bytes); bigger ones close with 1009.
MAX_CLIENT_FRAME = 4096

STATIC_DIR = Path(__file__).resolve().parent / "static"

_PLACEHOLDER = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>runtail</title></head>
<body><h1>runtail tailer</h1>
<p>The dashboard is not installed. Streams: <code>ws://HOST/</code> (all experiments),
<code>/experiments/ID</code>; list: <a href="/api/experiments">/api/experiments</a>.</p>
</body></html>
"""


def _plotly_js() -> Path | None:
    """The ``plotly.min.js`` shipped inside the installed ``plotly`` package (offline)."""
    try:
        resource = importlib.resources.files("plotly") / "package_data" / "plotly.min.js"
    except ModuleNotFoundError:
        return None
    path = Path(str(resource))
    return path if path.is_file() else None


def _response(
    status: int,
    body: bytes,
    content: str,
    *,
    cache: str = "no-cache",
    extra: Iterable[tuple[str, str]] = (),
) -> Response:
    headers = Headers()
    headers["Date"] = formatdate(usegmt=True)
    headers["Connection"] = "close"
    headers["Content-Type"] = content
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = cache
    headers["X-Content-Type-Options"] = "nosniff"
    for name, value in extra:
        headers[name] = value
    return Response(status, HTTPStatus(status).phrase, headers, body)


def _error(status: int, reason: str, extra: Iterable[tuple[str, str]] = ()) -> Response:
    return _response(
        status, (reason + "\n").encode(), "text/plain; charset=utf-8", cache="no-store", extra=extra
    )


class TailerServer:
    """A running tailer: its source of runs, the listening socket and the connected clients."""

    def __init__(
        self,
        source: RunSource,
        network: NetworkOptions,
        *,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        static_dir: Path = STATIC_DIR,
    ) -> None:
        self.source = source
        self.sessions = source.sessions
        self.network = network
        self.host = network.host
        self.token = network.token
        self.queue_bytes = queue_bytes
        self.static_dir = static_dir
        self.clients: set[Client] = set()
        self.budget = QueueBudget(max_queued_bytes, self.clients)
        self.admission = Admission(max_clients=network.max_clients, max_handshakes=max_handshakes)
        self.dual_stack = False  # one IPv6 socket that IPv4 clients reach too
        self.port = 0
        self.server: Server | None = None
        self._routes: weakref.WeakKeyDictionary[ServerConnection, Route] = (
            weakref.WeakKeyDictionary()
        )
        # `/` handshakes accepted with a cookie session: the session and the cookie to set.
        self._session_of: weakref.WeakKeyDictionary[ServerConnection, tuple[Session, str]] = (
            weakref.WeakKeyDictionary()
        )
        self.series = SeriesService(source.reader)

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """``http://host:port/`` of the dashboard."""
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    @property
    def other_urls(self) -> list[str]:
        """For a wildcard host, ``http://ADDRESS:port/`` of this machine's other addresses."""
        return other_urls(self.host, self.port, self.dual_stack)

    @property
    def ws_url(self) -> str:
        """``ws://host:port/``, the firehose."""
        return "ws" + self.url[4:]

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        await asyncio.Event().wait()

    # ------------------------------------------------------------------ HTTP

    def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | Awaitable[Response] | None:
        """Security checks for every request, then HTTP endpoints; ``None`` accepts a WebSocket.

        Endpoints that work off the event loop (``/api/series``) answer with an awaitable.
        """
        try:
            response = self._process_request(connection, request)
        except RequestError as exc:
            return _error(exc.status, exc.reason)
        if response is None or isinstance(response, Response):
            return response
        return _refusals_answered(response)

    def process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        """Free the client slot of a handshake refused after :meth:`process_request` took it.

        websockets validates the handshake (key, version, ``Connection``) after
        our checks; when it refuses one, :meth:`handler` never runs to take the
        route back, and the slot would stay counted until the garbage collector
        freed the connection: a few hundred bad handshakes would lock every
        client out with 503.
        """
        self.admission.handshake_done(connection)
        if response.status_code != 101:
            self._routes.pop(connection, None)
            self._session_of.pop(connection, None)
        elif connection in self._session_of and self.sessions is not None:
            value = self._session_of[connection][1]
            response.headers["Set-Cookie"] = self.sessions.set_cookie(value)

    def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | Awaitable[Response] | None:
        headers = request.headers
        host = single_header(headers, "Host")
        origin = single_header(headers, "Origin")
        authorization = single_header(headers, "Authorization")
        path, query = split_target(request.path)
        if not host_allowed(host, self.host, self.network.allow_hosts):
            raise RequestError(403, "Host not allowed (add it with --allow-host)")
        if not origin_allowed(origin, self.network.allow_origins):
            raise RequestError(403, "Origin not allowed (add it with --allow-origin)")
        upgrade = "websocket" in ",".join(headers.get_all("Upgrade")).lower()
        if path == "/healthz" and not upgrade:
            return _response(200, b"ok\n", "text/plain; charset=utf-8", cache="no-store")
        if self.token is not None and not token_presented(
            self.token, query, authorization, "; ".join(headers.get_all("Cookie")) or None
        ):
            return _error(
                401,
                "token required: ?token=... or Authorization: Bearer ...",
                extra=[("WWW-Authenticate", 'Bearer realm="tailer"')],
            )
        if upgrade:
            route = self.source.resolve(parse_ws_route(path, query), query)
            # Handshakes accepted but whose handler has not started yet count too.
            max_clients = self.network.max_clients
            if len(self.clients) + len(self._routes) >= max_clients:
                raise RequestError(503, f"too many clients (--max-clients {max_clients})")
            self._routes[connection] = route
            if self.sessions is not None and route.kind == "firehose":
                self._session_of[connection] = self.sessions.session_for(
                    "; ".join(headers.get_all("Cookie")) or None
                )
            return None
        if path == "/api/series":
            return self._series(query, ", ".join(headers.get_all("Accept-Encoding")))
        return self._http(path, query, ", ".join(headers.get_all("If-None-Match")) or None)

    async def _series(self, query: dict[str, list[str]], accept_encoding: str) -> Response:
        """``GET /api/series`` (docs/DESIGN.md, "Reduced series"), computed on a worker thread."""
        gzip_ok = "gzip" in accept_encoding.lower()
        parsed = parse_series_query(query)
        if parsed.if_over is not None and not self.series.bigger_than(parsed.run, parsed.if_over):
            return _response(204, b"", "application/json", cache="no-store")
        try:
            body, gzipped = await self.series.respond(parsed, gzip_ok=gzip_ok)
        except SeriesBuilding as exc:
            return _error(exc.status, exc.reason, extra=[("Retry-After", "1")])
        extra = [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")] if gzipped else []
        return _response(200, body, "application/json", cache="no-store", extra=extra)

    def _http(
        self, path: str, query: dict[str, list[str]], if_none_match: str | None = None
    ) -> Response | Awaitable[Response]:
        if path == "/":
            index = self.static_dir / "index.html"
            body = index.read_bytes() if index.is_file() else _PLACEHOLDER
            extra = []
            if self.token is not None and query.get("token"):
                # Lets the page's own /static/ and /api/ requests through without a query string.
                extra.append(
                    (
                        "Set-Cookie",
                        f"{TOKEN_COOKIE}={quote(self.token, safe='')}; "
                        "Path=/; HttpOnly; SameSite=Strict",
                    )
                )
            return _response(200, body, "text/html; charset=utf-8", extra=extra)
        if path == "/api/experiments":
            body = orjson.dumps(self.summaries())
            return _response(200, body, "application/json", cache="no-store")
        if path in ("/api/metrics", "/api/hparams"):
            return self._data(path, query)  # a coroutine: websockets awaits it
        if path == "/api/schema":
            return _response(200, schema_body(), "application/json")
        if path == "/static/vendor/plotly.min.js":
            plotly = _plotly_js()
            if plotly is None:
                raise RequestError(404, "plotly is not installed")
            return self._file(plotly, if_none_match, cache="public, max-age=86400")
        if path.startswith("/static/vendor/"):  # third-party bundles, as shipped
            path_ = static_file(self.static_dir, path[len("/static/") :])
            return self._file(path_, if_none_match, cache="public, max-age=86400")
        if path.startswith("/static/"):
            return self._file(static_file(self.static_dir, path[len("/static/") :]), if_none_match)
        if path == "/favicon.ico":
            return _response(204, b"", "image/x-icon", cache="public, max-age=86400")
        raise RequestError(404, "not found")

    async def _data(self, path: str, query: dict[str, list[str]]) -> Response:
        """``/api/metrics`` and ``/api/hparams`` (:mod:`tailer.api`), read in a thread."""
        try:
            files = self.source.run_files()
            if path == "/api/hparams":
                body = await asyncio.to_thread(hparams_body, files)
                return _response(200, body, "application/json", cache="no-store")
            request = parse_metrics_query(query, files)
            body, content_type = await asyncio.to_thread(metrics_body, request)
        except RequestError as exc:
            return _error(exc.status, exc.reason)
        return _response(200, body, content_type, cache="no-store")

    def _file(self, path: Path, if_none_match: str | None, *, cache: str = "no-cache") -> Response:
        """A static file; ``no-cache`` makes browsers revalidate, and an unchanged file is a 304."""
        try:
            st = path.stat()
            etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
            if if_none_match is not None and etag in (t.strip() for t in if_none_match.split(",")):
                return _response(304, b"", content_type(path), cache=cache, extra=[("ETag", etag)])
            body = path.read_bytes()
        except OSError:
            raise RequestError(404, "not found") from None
        return _response(200, body, content_type(path), cache=cache, extra=[("ETag", etag)])

    def summaries(self) -> list[dict[str, object]]:
        """The ``/api/experiments`` list."""
        return self.source.summaries()

    # ------------------------------------------------------------------ WebSocket

    async def handler(self, connection: ServerConnection) -> None:
        route = self._routes.pop(connection, None)
        if route is None:  # pragma: no cover - process_request always sets it
            await connection.close(1011, "no route")
            return
        peer = connection.remote_address
        label = f"{peer[0]}:{peer[1]} {connection.request.path.split('?')[0] if connection.request else ''}"
        session = self._session_of.pop(connection, None)
        client: Client
        if session is not None:
            client = SessionClient(
                connection,
                queue_bytes=self.queue_bytes,
                label=label,
                session=session[0],
                experiment=route.experiment_id,
            )
            # The last count of acknowledged bytes, while the socket still exists.
            connection.on_lost = client.settle  # type: ignore[attr-defined]
        else:
            client = Client(connection, queue_bytes=self.queue_bytes, label=label)
        client.budget = self.budget
        self.clients.add(client)
        log.info("client %s connected (%d connected)", label, len(self.clients))
        receiver = asyncio.create_task(self._receive(client))
        try:
            await self.source.stream(client, route)
        except ConnectionClosed:
            pass
        finally:
            receiver.cancel()
            self.source.detach(client)
            self.clients.discard(client)
            reason = connection.close_reason
            log.info(
                "client %s closed: %s%s",
                label,
                connection.close_code,
                f" ({reason})" if reason else "",
            )

    async def _receive(self, client: Client) -> None:
        """Answer pings; ignore everything else a client sends."""
        try:
            async for message in client.connection:
                if len(message) > 256:
                    continue
                try:
                    decoded: Any = orjson.loads(message)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(decoded, dict) and decoded.get("type") == "ping":
                    client.write(PONG_FRAME)
        except ConnectionClosed:
            pass


async def _refusals_answered(pending: Awaitable[Response]) -> Response:
    """An endpoint's awaited answer, its :class:`RequestError` turned into the error response."""
    try:
        return await pending
    except RequestError as exc:
        return _error(exc.status, exc.reason)


def _malformed_request() -> bytes:
    response = _error(400, "malformed request target")
    head = "".join(f"{k}: {v}\r\n" for k, v in response.headers.raw_items())
    return f"HTTP/1.1 400 Bad Request\r\n{head}\r\n".encode() + response.body


class ListenError(OSError):
    """The server could not bind its address (port in use, address not available...)."""


def _warn_exposed(network: NetworkOptions) -> None:
    host = network.host
    if not is_loopback_host(host) and not network.token:
        log.warning(
            "binding %s without a token: anyone who can reach this port can read every run "
            "(set --token or TAILER_TOKEN)",
            host or "all interfaces",
        )


@contextlib.asynccontextmanager
async def _listen(app: TailerServer) -> AsyncIterator[Server]:
    try:
        server = await _start(app, app.network.host, app.network.port)
    except OSError as exc:
        raise ListenError(exc.errno, exc.strerror or str(exc)) from exc
    app.server = server
    app.port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(AcceptErrors(previous))
    try:
        yield server
    finally:
        loop.set_exception_handler(previous)
        server.close(close_connections=True)  # closes every client with 1001 (going away)
        await server.wait_closed()
        app.series.close()


async def _start(app: TailerServer, host: str, port: int) -> Server:
    # websockets answers every ping with a pong and closes with a close frame, writing them
    # without a look at the send buffer. A peer that sends while never reading (a ping
    # flood) would grow that buffer, and the server's memory, without bound; the fan-out's
    # 1013 check only runs when a line is sent to it. Past twice the queue limit, drop it.
    limit = 2 * app.queue_bytes

    class Connection(wsio.RawConnection):  # overrides asyncio Protocol methods: see wsio
        request_line_checked = False
        on_lost: Callable[[], object] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            # Past the handshake or connection limits: closed before it costs more than
            # this descriptor, which goes back at once.
            if not app.admission.admit(self):
                transport.abort()  # type: ignore[attr-defined]

        def connection_lost(self, exc: Exception | None) -> None:
            app.admission.closed(self)
            if self.on_lost is not None:
                self.on_lost()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self.request_line_checked and not self._request_line_ok(data):
                return
            super().data_received(data)
            transport = self.transport
            if transport.get_write_buffer_size() > limit and not transport.is_closing():
                log.warning(
                    "client %s sends but does not read (%d bytes waiting); dropping it",
                    self.remote_address,
                    transport.get_write_buffer_size(),
                )
                transport.abort()

        def _request_line_ok(self, data: bytes) -> bool:
            """Answer 400 to a request line with bytes outside ASCII.

            websockets decodes the request line as ASCII and, failing, closes
            the connection without a word; a client deserves a status.
            """
            self._head = getattr(self, "_head", b"") + data[:8192]
            end = self._head.find(b"\r\n")
            if end < 0 and len(self._head) < 8192:
                return True
            self.request_line_checked = True
            if self._head[: end if end >= 0 else 8192].isascii():
                return True
            self.transport.write(_malformed_request())
            self.transport.close()
            return False

    sock = listen_socket(host, port)
    app.dual_stack = sock is not None
    where: dict[str, Any] = {"sock": sock} if sock is not None else {"host": host, "port": port}
    if sock is None:
        where["backlog"] = BACKLOG  # the socket above listens with it already
        if host == "":
            where["host"] = "0.0.0.0"  # no IPv6 here: every IPv4 interface
    return await serve(
        app.handler,
        **where,
        open_timeout=10,  # a connection still in the handshake after this is closed
        process_request=app.process_request,
        process_response=app.process_response,
        create_connection=Connection,
        compression=None,  # frames are shared between clients, so no per-connection deflate
        max_size=MAX_CLIENT_FRAME,
        max_queue=16,
        write_limit=(256 << 10, 64 << 10),
        ping_interval=20,
        ping_timeout=20,
        close_timeout=5,
        logger=logging.getLogger("tailer.websockets"),
    )


@contextlib.asynccontextmanager
async def serve_directory(
    directory: str | os.PathLike[str],
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    # Security
    token: str | None = None,
    allow_origins: Iterable[str] = (),
    allow_hosts: Iterable[str] = (),
    # Limits
    max_clients: int = DEFAULT_MAX_CLIENTS,
    queue_bytes: int = DEFAULT_QUEUE_BYTES,
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    # Watching
    poll: bool = False,
    scan_interval: float = DEFAULT_SCAN_INTERVAL,
    poll_interval: float = 0.25,
    index_every: int = 1000,
    follow_symlinks: bool = False,
    static_dir: Path = STATIC_DIR,
    # Cookie sessions on `/` (DESIGN §11)
    state_dir: str | os.PathLike[str] | None = None,
    session_ttl: float = DEFAULT_SESSION_TTL,
    on_listen: Callable[[TailerServer], None] | None = None,
) -> AsyncIterator[TailerServer]:
    """Stream every ``*.jsonl`` in ``directory`` (created if missing) until the block exits.

    Reads the existing files first (big ones go on in the background), then
    listens and watches. Leaving the block closes every client with 1001.
    Raises ``OSError`` if the port is taken. A ``*.jsonl`` symlink is an
    experiment only if it resolves to a file inside ``directory``, unless
    ``follow_symlinks``. Sessions are kept under ``state_dir`` (``None``: in
    memory, lost at exit; ``tailer serve`` defaults to
    :func:`tailer.sessions.default_state_dir`).
    """
    network = NetworkOptions(
        host, port, token, tuple(allow_origins), tuple(allow_hosts), max_clients
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    source = await LiveDirectory.open(
        directory,
        queue_bytes=queue_bytes,
        index_every=index_every,
        follow_symlinks=follow_symlinks,
        state_dir=state_dir,
        sessions=SessionStore(state_dir, ttl=session_ttl),
    )
    app = TailerServer(
        source,
        network,
        queue_bytes=queue_bytes,
        max_queued_bytes=max_queued_bytes,
        static_dir=static_dir,
    )
    _warn_exposed(network)
    # Sessions outlive the listener: its exit closes every client, whose records are final.
    async with source.sessions.running(), _listen(app):
        if on_listen is not None:
            on_listen(app)
        async with source.watching(
            poll=poll, scan_interval=scan_interval, poll_interval=poll_interval
        ):
            app.series.warm(source.fanout.readers.values())  # long runs' series, in the background
            yield app


@contextlib.asynccontextmanager
async def serve_replay(
    path: str | os.PathLike[str],
    *,
    speed: float = 1.0,
    max_gap: float | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    allow_origins: Iterable[str] = (),
    allow_hosts: Iterable[str] = (),
    max_clients: int = DEFAULT_MAX_CLIENTS,
    static_dir: Path = STATIC_DIR,
    on_listen: Callable[[TailerServer], None] | None = None,
) -> AsyncIterator[TailerServer]:
    """Serve one recorded run on ``/``: every client gets its own paced replay from the start."""
    network = NetworkOptions(
        host, port, token, tuple(allow_origins), tuple(allow_hosts), max_clients
    )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    app = TailerServer(
        PacedReplay(path, speed=speed, max_gap=max_gap), network, static_dir=static_dir
    )
    _warn_exposed(network)
    async with _listen(app):
        if on_listen is not None:
            on_listen(app)
        yield app
