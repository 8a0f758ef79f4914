"""A real browser (headless Chromium) receives lines appended live over WebSocket."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tailer.server import serve_directory
from tests._dashboard_helpers import CHROMIUM_ARGS
from tests._tailer_helpers import Writer


class _ServerThread:
    """serve_directory on its own event loop in a thread (Playwright's sync API owns the main one)."""

    def __init__(self, directory) -> None:
        self.directory = directory
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve_directory(self.directory, port=0) as app:
            self.port = app.port
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> _ServerThread:
        self._thread.start()
        assert self._ready.wait(30), "tailer did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.mark.browser
def test_chromium_websocket_receives_appended_lines(tmp_path):
    """A page served by the tailer opens ws://127.0.0.1:PORT/ and sees lines appended after it connected."""
    playwright = pytest.importorskip("playwright.sync_api")
    writer = Writer(tmp_path, "browser-run")
    writer.message("training_start")
    with _ServerThread(tmp_path) as server, playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.port}/healthz")  # same origin as the socket
            page.evaluate(
                """port => new Promise((resolve, reject) => {
                    window.received = [];
                    const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
                    ws.onmessage = (event) => window.received.push(JSON.parse(event.data));
                    ws.onopen = () => { ws.send(JSON.stringify({type: "ping"})); resolve(); };
                    ws.onerror = () => reject(new Error("websocket error"));
                })""",
                server.port,
            )
            page.wait_for_function("window.received.some(m => m.type === 'pong')", timeout=10_000)
            for epoch in range(3):
                writer.message(
                    "epoch_end",
                    {"epoch": epoch, "phase": "train", "metrics": {"loss": 1 / (epoch + 1)}},
                )
            page.wait_for_function(
                "window.received.filter(m => m.type === 'epoch_end').length === 3", timeout=10_000
            )
            epochs = page.evaluate("window.received.filter(m => m.type === 'epoch_end')")
            assert [m["data"]["epoch"] for m in epochs] == [0, 1, 2]
            assert [m["seq"] for m in epochs] == [1, 2, 3]
            assert {m["experiment_id"] for m in epochs} == {"browser-run"}
        finally:
            browser.close()
