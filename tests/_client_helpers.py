"""Helpers for the React-client tests and benchmark: an app page, a cuttable proxy, a steady writer.

The "app" is a page at http://localhost:P (a local HTTP server, as the React
dev server is); it loads either our module
(tailer/static/runtail-client.js) or the stand-in of the unmodified client
(tests/js/legacy_client.js) and talks to the tailer at ws://localhost:PORT,
so the browser treats the tailer's cookie as same-site, as it would for the
real app.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from recorder.format import encode_message

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "tailer" / "static" / "runtail-client.js"
LEGACY = ROOT / "tests" / "js" / "legacy_client.js"

_PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>app</title>
<script src="/legacy_client.js"></script></head><body><h1>app</h1></body></html>"""


class _AppHandler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, tuple[bytes | Path, str]]] = {
        "/": (_PAGE, "text/html"),
        "/runtail-client.js": (MODULE, "text/javascript"),
        "/legacy_client.js": (LEGACY, "text/javascript"),
    }

    def do_GET(self) -> None:
        entry = self.files.get(self.path.split("?")[0])
        if entry is None:
            self.send_error(404)
            return
        body, kind = entry
        data = body if isinstance(body, bytes) else body.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def app_server() -> Iterator[str]:
    """The "React app": a local HTTP server of the page; yields its origin (http://localhost:P).

    A real server, not Playwright routing: Chromium lets only a page from a
    local address open WebSockets to localhost (Local Network Access).
    """
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AppHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def open_app(context, origin: str):
    """A page of the app with both clients loaded (the module on demand)."""
    page = context.new_page()
    page.set_default_timeout(15000)
    page.goto(origin + "/")
    return page


class SteadyWriter:
    """Appends one message to ``<dir>/<id>.jsonl`` every ``interval`` seconds from a thread."""

    def __init__(self, directory: Path, experiment_id: str, interval: float = 0.05) -> None:
        self.path = directory / f"{experiment_id}.jsonl"
        self.interval = interval
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while not self._stop.is_set():
                os.write(fd, encode_message("batch_metrics", {"step": self.written, "loss": 0.5}))
                self.written += 1
                self._stop.wait(self.interval)
        finally:
            os.close(fd)

    def start(self) -> SteadyWriter:
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop writing; the number of lines written."""
        self._stop.set()
        self._thread.join()
        return self.written


class CuttableProxy:
    """A TCP relay from a local port to the tailer that can drop every connection.

    ``cut(seconds)`` ends every relayed connection (both ends see it end, as
    after a network failure that resets connections) and refuses new ones for
    ``seconds``. A relay acknowledges bytes to the tailer before it passes them
    on, so a careless cut would lose lines the tailer rightly counts as
    received: a real network drop loses only unacknowledged bytes, which TCP
    and the tailer resend. So the thread relaying tailer → browser performs
    the cut itself, between two chunks: it forwards everything its socket has
    already acknowledged, then resets both ends.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._cut = threading.Event()
        self._pumps: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._refuse_until = 0.0
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                _reset(client)  # the network is "down": the attempt fails at once
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream.settimeout(0.01)
            threading.Thread(target=self._pump_up, args=(client, upstream), daemon=True).start()
            down = threading.Thread(target=self._pump_down, args=(upstream, client), daemon=True)
            with self._lock:
                self._pumps.append(down)
            down.start()

    @staticmethod
    def _pump_up(client: socket.socket, upstream: socket.socket) -> None:
        """Browser → tailer (handshakes and pings)."""
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def _pump_down(self, upstream: socket.socket, client: socket.socket) -> None:
        """Tailer → browser; performs the cut (see the class docstring)."""
        try:
            while not self._cut.is_set():
                try:
                    data = upstream.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                client.sendall(data)
            else:
                upstream.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    while data := upstream.recv(65536):
                        client.sendall(data)
        except OSError:
            pass
        _reset(upstream)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)  # a FIN after what was forwarded, not a reset
        client.close()

    def cut(self, seconds: float) -> None:
        """Drop every connection now and refuse new ones for ``seconds`` (blocks that long)."""
        self._refuse_until = time.monotonic() + seconds
        with self._lock:
            pumps, self._pumps = self._pumps, []
        self._cut.set()
        for pump in pumps:
            pump.join()
        self._cut.clear()
        time.sleep(max(0.0, self._refuse_until - time.monotonic()))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            pumps, self._pumps = self._pumps, []
        self._cut.set()
        for pump in pumps:
            pump.join()


def _reset(s: socket.socket) -> None:
    """Close with a TCP reset, as a dropped network path ends up doing."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        # Wakes the relay thread blocked in recv(); close() alone would wait for it.
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()


def received(page, expression: str = "window.client.messages") -> list[dict]:
    """The messages a page's client collected (type, experiment_id, seq)."""
    return page.evaluate(
        f"() => {expression}.map(m => ({{type: m.type, experiment_id: m.experiment_id, seq: m.seq}}))"
    )


def tally(seqs: list[int], written: int) -> dict[str, int]:
    """What a client got of ``written`` lines numbered 0..written-1."""
    got = set(seqs)
    first = min(got) if got else 0
    return {
        "written": written,
        "received": len(seqs),
        "unique": len(got),
        "duplicates": len(seqs) - len(got),
        "missing": len(set(range(first, written)) - got),
        "missing_seqs": sorted(set(range(first, written)) - got)[:10],
        "first": first,
    }


def measure_legacy(
    context,
    origin: str,
    runs: Path,
    interrupt: str,
    seconds: float,
    *,
    keep_cookie: bool = True,
    interval: float = 0.02,
    start: str | None = None,
) -> dict[str, object]:
    """Run the stand-in of the unmodified client against `tailer serve`, interrupt it, tally.

    A writer appends a line every ``interval`` s; the page connects through a
    :class:`CuttableProxy`. ``interrupt``: ``"drop"`` cuts the relay for
    ``seconds``; ``"restart"`` kills the tailer (SIGKILL) and starts it again on
    the same port ``seconds`` later. ``keep_cookie=False`` clears the browser's
    cookies first (a client without the session: the behaviour before §11).
    ``start``: a JS function of the URL that starts another client and sets
    ``window.client`` with the stand-in's ``messages``, ``opens``, ``closes``.
    """
    from tests._dashboard_helpers import Server, wait_until

    writer = SteadyWriter(runs, "run", interval).start()
    server = Server(runs).start()
    proxy = CuttableProxy(server.port)
    try:
        page = open_app(context, origin)
        page.evaluate(
            start or "url => { window.client = new LegacyClient(url); window.client.connect(); }",
            f"ws://localhost:{proxy.port}",
        )

        def seqs() -> list[int]:
            return [m["seq"] for m in received(page) if m["type"] == "batch_metrics"]

        wait_until(lambda: len(seqs()) > 30, message="first lines")
        cookies = context.cookies(f"http://localhost:{proxy.port}/")
        if not keep_cookie:
            context.clear_cookies()
        if interrupt == "drop":
            proxy.cut(seconds)
        else:
            server.kill()
            time.sleep(seconds)
            server.start()
        wait_until(
            lambda: page.evaluate("window.client.opens") == 2,
            timeout=seconds + 20,
            message="the client is back",
        )
        time.sleep(0.5)
        written = writer.stop()
        wait_until(lambda: max(seqs()) == written - 1, timeout=15, message="the last line")
        time.sleep(0.3)
        return {
            **tally(seqs(), written),
            "closes": page.evaluate("window.client.closes.length"),
            "cookies": cookies,
        }
    finally:
        writer.stop()
        proxy.close()
        server.stop()
