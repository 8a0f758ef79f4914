"""The React app in Chromium (DESIGN §11): runtail-client.js, and the unmodified client by cookie.

Real `tailer serve`/`tailer replay` processes, Debian's Chromium through
Playwright, an app page on http://localhost:P talking to ws://localhost:PORT.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("playwright")

from tests._client_helpers import (
    SteadyWriter,
    app_server,
    measure_legacy,
    open_app,
    received,
)
from tests._dashboard_helpers import (
    ReplayServer,
    Server,
    wait_until,
)
from tests._replay_helpers import line, write_run

if not Path("/usr/bin/chromium").exists():  # pragma: no cover - CI image has it
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def app():
    with app_server() as origin:
        yield origin


@pytest.fixture
def context(browser):
    context = browser.new_context()
    yield context
    context.close()


def _module_client(page, port: int, experiment_id: str) -> None:
    page.evaluate(
        """async ([url, id]) => {
            const { createTrainingProgressWebSocket } = await import("/runtail-client.js");
            const ws = createTrainingProgressWebSocket(id, { url, reconnectDelay: 200 });
            window.client = { ws, messages: [], events: [] };
            for (const name of ["connected", "disconnected", "reconnecting", "reconnected"]) {
                ws.on(name, () => window.client.events.push(name));
            }
            for (const type of ["batch_metrics", "epoch_end", "log_reset"]) {
                ws.on(type, (data, message) => window.client.messages.push(message));
            }
            ws.connect();
        }""",
        [f"ws://localhost:{port}", experiment_id],
    )


def _legacy_client(page, port: int) -> None:
    page.evaluate(
        "url => { window.client = new LegacyClient(url); window.client.connect(); }",
        f"ws://localhost:{port}",
    )


def _seqs(page, experiment_id: str) -> list[int]:
    return [
        m["seq"]
        for m in received(page)
        if m["experiment_id"] == experiment_id and m["type"] == "batch_metrics"
    ]


def test_static_module_and_types_are_served(tmp_path):
    """GET /static/runtail-client.js is JavaScript; the .d.ts is served as text."""
    server = Server(tmp_path).start()
    try:
        with urllib.request.urlopen(server.url + "static/runtail-client.js") as r:
            assert r.headers["Content-Type"].startswith("text/javascript")
            body = r.read().decode()
        assert "export function createTrainingProgressWebSocket" in body
        assert "import " not in body.replace("import.meta", "")  # dependency-free
        with urllib.request.urlopen(server.url + "static/runtail-client.d.ts") as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            assert "createTrainingProgressWebSocket" in r.read().decode()
    finally:
        server.stop()


@pytest.mark.slow
def test_module_loses_nothing_across_a_restart_and_gets_no_other_runs_lines(tmp_path, context, app):
    """runtail-client.js: kill -9 and restart of the tailer lose nothing, repeat nothing, route by id."""
    runs = tmp_path / "runs"
    runs.mkdir()
    mine = SteadyWriter(runs, "mine", 0.02).start()
    other = SteadyWriter(runs, "other", 0.02).start()
    server = Server(runs).start()
    try:
        page = open_app(context, app)
        _module_client(page, server.port, "mine")
        wait_until(lambda: len(_seqs(page, "mine")) > 30, message="first lines")
        server.kill()
        time.sleep(1.5)  # lines keep coming while the tailer is down
        server.start()  # same port
        wait_until(
            lambda: "reconnected" in page.evaluate("window.client.events"), message="reconnected"
        )
        time.sleep(0.5)
        written = mine.stop()
        other.stop()
        wait_until(lambda: len(received(page)) >= written, timeout=20, message="every line of mine")
        time.sleep(0.3)
        messages = received(page)
        assert {m["experiment_id"] for m in messages} == {"mine"}
        assert [m["seq"] for m in messages] == list(range(written))  # all, once, in order
        events = page.evaluate("window.client.events")
        assert events[0] == "connected" and "disconnected" in events and "reconnecting" in events
        assert page.evaluate("window.client.ws.isConnectedState()")
        page.evaluate("window.client.ws.disconnect()")
        assert not page.evaluate("window.client.ws.isConnectedState()")
    finally:
        mine.stop()
        other.stop()
        server.stop()


@pytest.mark.slow
def test_unmodified_client_resumes_by_cookie_across_a_kill_and_restart(tmp_path, context, app):
    """The stand-in of the unmodified client (base URL, no since) loses nothing across kill -9 + restart."""
    figures = measure_legacy(context, app, tmp_path, "restart", 1)
    (cookie,) = figures["cookies"]
    assert cookie["name"] == "runtail_session" and cookie["httpOnly"]
    assert cookie["sameSite"] == "Lax" and cookie["path"] == "/"
    assert figures["missing"] == 0, figures
    # The state is flushed every 100 ms: at 50 lines/s at most a handful come twice.
    assert figures["duplicates"] <= 10, figures


@pytest.mark.slow
def test_unmodified_client_resumes_by_cookie_after_a_network_drop(tmp_path, context, app):
    """Through a relay cut for 1 s, the stand-in reconnects 3 s later and gets what it missed."""
    figures = measure_legacy(context, app, tmp_path, "drop", 1)
    assert figures["missing"] == 0 and figures["duplicates"] <= 5, figures


@pytest.mark.slow
def test_unmodified_client_gets_a_replay_once(tmp_path, context, app):
    """Under `tailer replay`, the stand-in gets the run once and stays connected (no replay loop)."""
    run = write_run(
        tmp_path / "done.jsonl", [line("epoch_end", {"epoch": i}, at=i / 100) for i in range(20)]
    )
    server = ReplayServer(run, speed=0).start()
    try:
        page = open_app(context, app)
        _legacy_client(page, server.port)
        wait_until(
            lambda: any(m["type"] == "replay_end" for m in received(page)), message="replay_end"
        )
        time.sleep(4)  # the original reconnects 3 s after a close
        types = [m["type"] for m in received(page)]
        assert types.count("replay_end") == 1 and len(types) == 21, types
        assert page.evaluate("window.client.opens") == 1
        assert page.evaluate("window.client.closes") == []
    finally:
        server.stop()
