"""The built-in dashboard, driven in Chromium against a real `tailer serve`."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from recorder.format import encode_message, status_of
from tests._dashboard_helpers import (
    ReplayServer,
    Server,
    browser_fixture,
    chart_points,
    copy_samples,
    expected_charts,
    expected_round_charts,
    page_factory_fixture,
    read_messages,
    runs_state,
    screenshot,
    serving,
    view_state,
    wait_until,
    write_centralized,
    write_failed,
    write_federated,
    write_running,
)

pytestmark = pytest.mark.browser
# Fixtures (registered as `browser` and `page_factory`).
_fixtures = (browser_fixture, page_factory_fixture)

sync_api = pytest.importorskip("playwright.sync_api")
if not Path("/usr/bin/chromium").exists():  # pragma: no cover - CI image has it
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)

# Chromium logs a refused WebSocket handshake as a console error; expected only
# while a test has the server down on purpose.
SERVER_DOWN = (r"WebSocket connection to .* failed", r"ERR_CONNECTION_REFUSED")


# ---------------------------------------------------------------- the runs under test


def _kind(path: Path) -> str:
    """What a run file holds: federated, centralized, failed or running (from its messages)."""
    messages = read_messages(path)
    types = {m["type"] for m in messages}
    status = "unknown"
    for m in messages:
        status = status_of(m) or status
    if status == "failed":
        return "failed"
    if status == "running":
        return "running"
    if types & {"round_end", "round_metrics", "client_complete"}:
        return "federated"
    if "epoch_end" in types:
        return "centralized"
    return "other"


def _make_runs(directory: Path) -> Path:
    """A copy of sample_runs/ in `directory` (fixture runs made on the spot for kinds it lacks)."""
    copies = copy_samples(directory)
    kinds = {_kind(p) for p in copies}
    if "centralized" not in kinds:
        write_centralized(directory / "digits-centralized.jsonl", epochs=5, batches_per_epoch=12)
    if "federated" not in kinds:
        write_federated(directory / "federated-digits.jsonl")
    if "failed" not in kinds:
        write_failed(directory / "failed-run.jsonl")
    if "running" not in kinds:
        write_running(directory / "still-running.jsonl")
    return directory


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    """A temp copy of the sample runs that the test may change."""
    return _make_runs(tmp_path / "runs")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """(directory, server): one read-only copy of the sample runs and its `tailer serve`."""
    directory = _make_runs(tmp_path_factory.mktemp("shared") / "runs")
    with serving(directory) as server:
        yield directory, server


def _find(directory: Path, kind: str) -> Path:
    for path in sorted(directory.glob("*.jsonl")):
        if _kind(path) == kind:
            return path
    raise AssertionError(f"no {kind} run in {directory}")


def _expected_status(path: Path) -> str:
    status = "unknown"
    for message in read_messages(path):
        status = status_of(message) or status
    return status


def _open_run(page, server: Server, experiment_id: str) -> None:
    page.goto(server.page_url(f"#/runs/{experiment_id}"))
    wait_until(lambda: (view_state(page) or {}).get("id") == experiment_id, message="run view")


def _wait_charts(page, expected: dict[str, dict[str, int]], timeout: float = 15.0) -> None:
    """Wait until the page draws exactly `expected` ({chart: {trace: points}}) for those charts."""

    def matches():
        got = chart_points(page)
        for chart, traces in expected.items():
            if chart not in got:
                return False
            for trace, n in traces.items():
                if got[chart].get(trace) != (n, n):
                    return False
        return True

    try:
        wait_until(matches, timeout=timeout, message="charts")
    except AssertionError:
        got = chart_points(page)
        raise AssertionError(f"charts differ:\nexpected {expected}\ngot {got}") from None


def _wait_settled(page, messages: int) -> None:
    """Wait until the open run holds `messages` messages and every chart shows all of its points."""

    def settled():
        state = view_state(page)
        return state["live"]["messages"] == messages and state["settled"]

    wait_until(settled, message=f"{messages} messages, all drawn")


def _append(path: Path, *messages: bytes) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(messages))


# ---------------------------------------------------------------- tests


def test_runs_list_shows_every_run_with_status_and_count(shared, page_factory):
    """The list shows every run in the directory with its status, message count and a failed run's error."""
    runs_dir, server = shared
    page, console = page_factory()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(server.page_url())
    files = sorted(runs_dir.glob("*.jsonl"))
    expected = {p.stem: (_expected_status(p), len(read_messages(p))) for p in files}

    def listed():
        return {r["id"]: (r["status"], r["messages"]) for r in runs_state(page)}

    wait_until(lambda: listed() == expected, message=f"runs list {expected}")
    # What the person sees, not only the page's state.
    for experiment_id, (status, count) in expected.items():
        item = page.locator(f'li.run-item[data-id="{experiment_id}"]')
        badge = item.locator(".badge").inner_text()
        if status in ("running", "unknown"):  # the fixtures' lines are from 2025: long silent
            assert badge.startswith("no update for "), badge
        else:
            assert badge == status
        assert f"{count:,} message" in item.locator(".run-sub").inner_text()
    failed = _find(runs_dir, "failed")
    errors = [m for m in read_messages(failed) if m["type"] == "error"]
    want = str(errors[-1]["data"]["error"])
    item = page.locator(f'li.run-item[data-id="{failed.stem}"] .run-error')
    wait_until(lambda: item.inner_text() == want, message="failed run's error in the list")
    # The error text comes with /api/experiments: the list page opens the firehose only.
    assert [urlsplit(url).path for url in sockets] == ["/"], sockets
    assert page.locator("#conn").get_attribute("data-state") == "connected"
    screenshot(page, "list-light")
    console.check()


def test_centralized_run_draws_each_metric_and_phase(shared, page_factory):
    """Opening the centralized run draws one line per metric and phase with every point."""
    runs_dir, server = shared
    page, console = page_factory()
    run = _find(runs_dir, "centralized")
    expected = expected_charts(run)
    assert expected, f"{run} has no epoch or batch metrics"
    _open_run(page, server, run.stem)
    _wait_charts(page, expected)
    _wait_settled(page, len(read_messages(run)))
    state = view_state(page)
    assert state["live"]["messages"] == len(read_messages(run))
    # Each expected epoch chart has exactly the expected lines (train/val/test as separate lines).
    for chart, traces in expected.items():
        assert set(state["charts"][chart]["traces"]) >= set(traces)
    # One chart per metric, whatever path logged it: no metric drawn twice.
    assert sorted(state["charts"]) == sorted(expected)
    assert len({c["metric"] for c in state["charts"].values()}) == len(expected)
    assert page.locator("#run-status").inner_text() == _expected_status(run)
    screenshot(page, "run-centralized-light")
    console.check()


def test_federated_run_draws_rounds_and_clients(shared, page_factory):
    """A federated run shows fit, eval and server metrics per round and one line per client."""
    runs_dir, server = shared
    page, console = page_factory(scheme="dark")
    run = _find(runs_dir, "federated")
    messages = read_messages(run)
    expected = expected_round_charts(run)
    assert expected, f"{run} has no round metrics"
    clients = {
        str(m["data"]["client_id"])
        for m in messages
        if m["type"] == "client_complete" and m["data"].get("metrics")
    }
    _open_run(page, server, run.stem)
    _wait_charts(page, expected)
    _wait_settled(page, len(messages))
    charts = view_state(page)["charts"]
    assert sorted(c for c in charts if c.startswith("round:")) == sorted(expected)
    per_client = [c for cid, c in charts.items() if cid.startswith("client:round/")]
    assert per_client, charts.keys()
    for chart in per_client:
        assert {t.removeprefix("client ") for t in chart["traces"]} == clients
    assert "federated" in page.locator("#run-meta").inner_text()
    screenshot(page, "run-federated-dark")
    console.check()


def test_failed_run_shows_error_and_traceback(shared, page_factory):
    """A failed run shows its error up top, with the traceback collapsible, and in its timeline."""
    runs_dir, server = shared
    page, console = page_factory()
    run = _find(runs_dir, "failed")
    error = [m for m in read_messages(run) if m["type"] == "error"][-1]["data"]
    _open_run(page, server, run.stem)
    banner = page.locator("#run-error")
    banner.wait_for(state="visible")
    assert str(error["error"]) in banner.inner_text()
    if error.get("traceback"):
        details = page.locator("#run-error-traceback")
        assert details.is_visible()
        assert not page.locator("#run-error-traceback pre").is_visible()  # collapsed
        details.locator("summary").click()
        assert (
            page.locator("#run-error-traceback pre").inner_text().strip()
            == str(error["traceback"]).strip()
        )
    assert page.locator("#timeline .event-error").count() >= 1
    screenshot(page, "run-failed-light")
    console.check()


def test_appended_lines_appear_live(runs_dir, page_factory):
    """Lines appended to a running run reach its charts and the runs list, pushed, not polled."""
    page, console = page_factory()
    run = _find(runs_dir, "running")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    with serving(runs_dir) as server:
        _open_run(page, server, run.stem)
        n = len(read_messages(run))
        wait_until(lambda: view_state(page)["live"]["messages"] == n, message="history")
        page.wait_for_timeout(300)
        requests.clear()
        before = chart_points(page).get("metrics:live_metric", {}).get("train", (0, 0))[0]
        for k in range(3):
            _append(
                run,
                encode_message(
                    "epoch_end",
                    {"epoch": 100 + k, "phase": "train", "metrics": {"live_metric": k / 3}},
                ),
            )
            want = before + k + 1
            wait_until(
                lambda want=want: (
                    chart_points(page).get("metrics:live_metric", {}).get("train") == (want, want)
                ),
                timeout=10.0,  # generous: six engineers share two cores
                message=f"{want} live points",
            )
        wait_until(
            lambda: {r["id"]: r["messages"] for r in runs_state(page)}.get(run.stem) == n + 3,
            timeout=10.0,  # generous: six engineers share two cores
            message="list count",
        )
        # Nothing was fetched for those points: they came over the open WebSockets.
        assert requests == [], requests
        # A new run appears in the list on its own, with its status.
        new = runs_dir / "brand-new-run.jsonl"
        new.write_bytes(
            encode_message("training_start", {}) + encode_message("status", {"status": "running"})
        )
        wait_until(
            lambda: (
                {r["id"]: (r["status"], r["messages"]) for r in runs_state(page)}.get(
                    "brand-new-run"
                )
                == ("running", 2)
            ),
            timeout=5.0,
            message="new run in the list",
        )
        _append(new, encode_message("training_end", {}))
        wait_until(
            lambda: (
                {r["id"]: r["status"] for r in runs_state(page)}.get("brand-new-run") == "completed"
            ),
            timeout=5.0,
            message="run finishing",
        )
    console.check()


def test_reconnects_after_restart_without_gaps_or_duplicates(runs_dir, page_factory):
    """Killing and restarting the server: the page reconnects, resumes from its last seq, and ends exact."""
    page, console = page_factory(allowed=SERVER_DOWN)
    run = _find(runs_dir, "running")

    def metric(k):
        return encode_message(
            "batch_metrics",
            {"step": 10_000 + k, "batch_idx": k, "restart_probe": 1 / (k + 1), "epoch": 0},
        )

    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    server = Server(runs_dir).start()
    try:
        _open_run(page, server, run.stem)
        _append(run, *(metric(k) for k in range(50)))
        wait_until(
            lambda: (
                chart_points(page).get("metrics:restart_probe", {}).get("train (batch)") == (50, 50)
            ),
            message="first 50",
        )
        last_seq = view_state(page)["live"]["lastSeq"]
        server.kill()
        wait_until(
            lambda: page.evaluate("window.__runtail.connection()") in ("reconnecting", "offline"),
            message="connection state shown",
        )
        assert page.locator("#conn").get_attribute("data-state") in ("reconnecting", "offline")
        screenshot(page, "server-down")
        _append(run, *(metric(k) for k in range(50, 80)))  # written while the server is down
        server.start()
        _append(run, *(metric(k) for k in range(80, 100)))
        wait_until(
            lambda: page.evaluate("window.__runtail.connection()") == "connected",
            timeout=20,
            message="reconnected",
        )
        wait_until(
            lambda: (
                chart_points(page).get("metrics:restart_probe", {}).get("train (batch)")
                == (100, 100)
            ),
            timeout=10,
            message="100 points",
        )
        time.sleep(0.5)  # anything duplicated would land now
        state = view_state(page)
        assert chart_points(page)["metrics:restart_probe"]["train (batch)"] == (100, 100)
        assert state["live"]["messages"] == len(read_messages(run))
        xs = page.evaluate(
            "() => document.querySelector('[data-chart-id=\"metrics:restart_probe\"] .plot').data[0].x"
        )
        assert xs == [10_000 + k for k in range(100)]
        # It asked for what it lacked (since=<its last seq>), not for the whole run again.
        assert any(f"/experiments/{run.stem}?since={last_seq}" in u for u in sockets), sockets
        # The runs list caught up too.
        wait_until(
            lambda: (
                {r["id"]: r["messages"] for r in runs_state(page)}.get(run.stem)
                == len(read_messages(run))
            ),
            message="list count after the restart",
        )
    finally:
        server.stop()
    console.check()


def test_replay_at_max_speed_ends_with_full_chart(shared, page_factory):
    """Replay at max speed redraws the finished run from nothing and ends with every point."""
    runs_dir, server = shared
    page, console = page_factory()
    run = _find(runs_dir, "centralized")
    expected = expected_charts(run)
    _open_run(page, server, run.stem)
    _wait_charts(page, expected)
    page.select_option("#replay-speed", "0")
    page.click("#replay-play")
    wait_until(lambda: view_state(page)["replay"] == "finished", timeout=20, message="replay end")
    _wait_charts(page, expected)
    assert view_state(page)["shown"]["messages"] == len(read_messages(run))
    assert "finished" in page.locator("#replay-state").inner_text()
    page.click("#replay-stop")
    wait_until(lambda: view_state(page)["replay"] is None, message="back to live")
    _wait_charts(page, expected)
    console.check()


@pytest.mark.slow
def test_tailer_replay_unfolds_the_run_view_at_its_pace(shared, page_factory):
    """Under `tailer replay FILE`, #/runs/<id> unfolds the run at the replay's pace, then stays put."""
    runs_dir, _ = shared
    run = _find(runs_dir, "centralized")
    total = len(read_messages(run))
    page, console = page_factory()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(urlsplit(ws.url).path))
    server = ReplayServer(run, speed=2).start()
    try:
        page.goto(server.page_url(f"#/runs/{run.stem}"))
        seen: set[int] = set()

        def finished():
            state = view_state(page)
            if not state:
                return False
            seen.add(state["live"]["messages"])
            connection = page.evaluate("() => window.__runtail.connection()")
            return state["live"]["messages"] == total and connection == "ended"

        wait_until(finished, timeout=30, interval=0.02, message="the replay reaches its end")
        assert any(0 < n < total for n in seen), f"the run arrived all at once: {sorted(seen)}"
        _wait_charts(
            page,
            expected_charts(run),
        )
        assert page.locator("#run-status").inner_text() == _expected_status(run)
        assert page.locator("#conn .conn-label").inner_text() == "replay finished"
        # The replay ended the streams for good: no reconnect replays the run again (a
        # reconnect comes within about a second), and replay_end is not a message.
        time.sleep(2)
        assert sorted(sockets) == ["/", f"/experiments/{run.stem}"], sockets
        assert view_state(page)["live"]["messages"] == total
        screenshot(page, "replay-run-view")
        console.check()
    finally:
        server.stop()


@pytest.mark.slow
def test_replay_pause_and_stop(tmp_path, page_factory):
    """A paused replay holds the charts still while frames buffer; resume continues; stop returns to live."""
    page, console = page_factory()
    directory = tmp_path / "runs"
    directory.mkdir()
    run = directory / "slow-run.jsonl"
    # 60 batch points one second apart: 6 s at 10x.
    lines = [encode_message("training_start", {}, timestamp="2025-10-22T11:00:00.000Z")]
    for k in range(60):
        lines.append(
            encode_message(
                "batch_metrics",
                {"step": k, "loss": 1 / (k + 1)},
                timestamp=f"2025-10-22T11:01:{k:02d}.000Z",
            )
        )
    lines.append(encode_message("training_end", {}, timestamp="2025-10-22T11:02:00.000Z"))
    run.write_bytes(b"".join(lines))
    with serving(directory) as server:
        _open_run(page, server, run.stem)
        wait_until(
            lambda: chart_points(page).get("metrics:loss", {}).get("train (batch)") == (60, 60),
            message="live",
        )
        page.select_option("#replay-speed", "10")
        page.click("#replay-play")
        wait_until(
            lambda: 3 <= view_state(page)["shown"]["messages"] < 40,
            timeout=10,
            message="replay under way",
        )
        page.click("#replay-pause")
        assert page.locator("#replay-pause").get_attribute("aria-pressed") == "true"
        assert page.locator("#replay-pause").inner_text() == "Resume"
        held = view_state(page)["shown"]["messages"]
        time.sleep(1.0)
        assert view_state(page)["shown"]["messages"] == held  # nothing drawn while paused
        assert "buffered" in page.locator("#replay-state").inner_text()
        page.click("#replay-pause")  # resume
        wait_until(lambda: view_state(page)["shown"]["messages"] > held, message="resumed")
        page.click("#replay-stop")
        wait_until(lambda: view_state(page)["replay"] is None, message="stopped")
        wait_until(
            lambda: chart_points(page).get("metrics:loss", {}).get("train (batch)") == (60, 60),
            message="live again",
        )
    console.check()


def test_log_reset_drops_the_run_and_starts_again(runs_dir, page_factory):
    """A truncated log replaces the run's charts with the new content, nothing left over."""
    page, console = page_factory()
    run = _find(runs_dir, "centralized")
    with serving(runs_dir) as server:
        _open_run(page, server, run.stem)
        wait_until(
            lambda: view_state(page)["live"]["messages"] == len(read_messages(run)),
            message="history",
        )
        fresh = runs_dir / "fresh.tmp"
        write_running(fresh, epochs=3)
        shutil.move(fresh, run)  # replaced, as a rerun with the same id would
        wait_until(
            lambda: (
                view_state(page)["live"]["messages"] == 4
                and chart_points(page).get("metrics:loss") == {"train": (3, 3)}
                and len(chart_points(page)) == 1
            ),
            timeout=10,
            message="reset to the new content",
        )
    console.check()


def test_token_travels_by_cookie_only(runs_dir, page_factory):
    """With --token, the page opened as /?token=T works, and T travels by cookie, never in a URL again."""
    page, console = page_factory()
    token = "s3cret-Token"
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    responses: list[tuple[str, int]] = []
    page.on("response", lambda r: responses.append((r.url, r.status)))
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    run = _find(runs_dir, "centralized")
    with serving(runs_dir, token=token) as server:
        _open_run(page, server, run.stem)
        wait_until(
            lambda: view_state(page)["live"]["messages"] == len(read_messages(run)),
            message="history",
        )
        wait_until(
            lambda: len(runs_state(page)) == len(list(runs_dir.glob("*.jsonl"))), message="list"
        )
        ours = [u for u in requests if u.startswith(server.url)]
        assert ours[0] == server.page_url(f"#/runs/{run.stem}").split("#")[0], ours
        assert len(ours) > 3 and not any(token in u for u in ours[1:]), ours
        assert sockets and not any(token in u for u in sockets), sockets
        assert all(status < 400 for _, status in responses), responses
        # The address bar no longer shows the token (screenshots, shared links).
        assert token not in page.url and page.url.endswith(f"#/runs/{run.stem}")
        # Every request stays on this tailer: no CDN, no fonts, nothing outside.
        assert all(u.startswith((server.url, "data:")) for u in requests), requests
        # Without the token nothing is served, and the refusal says why.
        other, _ = page_factory(allowed=(r"401",))
        response = other.goto(server.url)
        assert response.status == 401
        assert "token" in other.content()
    console.check()


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [1280, 390])
def test_layout_fits_and_follows_colour_scheme(shared, page_factory, scheme, width):
    """Light and dark, desktop and phone: nothing overflows sideways and charts take the page's colours."""
    runs_dir, server = shared
    page, console = page_factory(width=width, scheme=scheme)
    run = _find(runs_dir, "centralized")
    page.goto(server.page_url())
    wait_until(lambda: len(runs_state(page)) > 0, message="list")
    screenshot(page, f"list-{scheme}-{width}")
    _open_run(page, server, run.stem)
    wait_until(lambda: view_state(page)["charts"], message="charts")
    page.wait_for_function("() => document.querySelector('.plot .main-svg')")
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"page scrolls sideways by {overflow}px"
    # Every plot fits its card (cards narrow as neighbours arrive; plots must follow).
    wait_until(
        lambda: page.evaluate(
            """() => [...document.querySelectorAll('.plot')].every(
                (p) => p._fullLayout && p._fullLayout.width <= p.clientWidth + 1)"""
        ),
        message="plots sized to their cards",
    )
    colours = page.evaluate(
        """() => {
            const css = getComputedStyle(document.documentElement);
            const plot = document.querySelector('.plot');
            return {fg: css.getPropertyValue('--fg').trim(), font: plot._fullLayout.font.color,
                    bg: getComputedStyle(document.body).backgroundColor};
        }"""
    )
    assert colours["font"].lower() == colours["fg"].lower()
    dark_bg = colours["bg"] in ("rgb(15, 19, 24)",)
    assert dark_bg == (scheme == "dark"), colours
    if width < 700:  # phone: the list gives way to the run, with a way back
        assert not page.locator("#runs-pane").is_visible()
        assert page.locator(".back").is_visible()
    else:
        assert page.locator("#runs-pane").is_visible()
    # Every control has an accessible name and is reachable with the keyboard.
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('button, select, input')].filter(e => {
            const label = e.labels && e.labels.length ? e.labels[0].textContent.trim() : '';
            return !(label || e.getAttribute('aria-label') || e.textContent.trim());
        }).map(e => e.id)"""
    )
    assert unnamed == []
    screenshot(page, f"run-{scheme}-{width}")
    console.check()


@pytest.mark.slow
def test_hundred_thousand_batch_points_stay_responsive(tmp_path, page_factory):
    """100,000 batch points arrive reduced per pixel column (gap kept), and zooming shows the raw points."""
    page, console = page_factory()
    directory = tmp_path / "runs"
    directory.mkdir()
    run = directory / "long-run.jsonl"
    n = 100_000
    with open(run, "wb") as f:
        f.write(encode_message("training_start", {}, timestamp="2025-10-22T11:00:00.000Z"))
        chunk = []
        for k in range(n):
            loss = "NaN" if k == 5000 else 1.0 / (1 + k) + (k % 7) * 1e-4
            chunk.append(
                b'{"type":"batch_metrics","timestamp":"2025-10-22T11:00:01.000Z","data":{"step":%d,"loss":%s}}\n'
                % (k, json.dumps(loss).encode())
            )
            if len(chunk) == 10_000:
                f.write(b"".join(chunk))
                chunk = []
        f.write(b"".join(chunk))
    with serving(directory) as server:
        _open_run(page, server, run.stem)
        wait_until(
            lambda: (
                view_state(page)
                and view_state(page)["live"]["lastSeq"] == n
                and chart_points(page).get("metrics:loss", {}).get("train (batch)", (0, 0))[1] > 0
            ),
            timeout=120,
            interval=0.5,
            message="100k lines loaded",
        )
        # A big run's history comes reduced from /api/series (reduced.js): a few points
        # per pixel column, the NaN's gap kept.
        page.wait_for_timeout(600)
        state = view_state(page)["charts"]["metrics:loss"]
        trace = state["traces"]["train (batch)"]
        assert trace["nonFinite"] == 1
        assert 100 < trace["drawn"] < 10_000
        # The page still answers at once, and zooming in shows every raw point of the range.
        page.evaluate(
            "() => Plotly.relayout(document.querySelector('[data-chart-id=\"metrics:loss\"] .plot'), "
            "{'xaxis.range': [50000, 50100]})"
        )
        wait_until(
            lambda: (
                [
                    x
                    for x in page.evaluate(
                        "() => document.querySelector('[data-chart-id=\"metrics:loss\"] .plot').data[0].x"
                    )
                    if 50000 <= x <= 50100
                ]
                == list(range(50000, 50101))
            ),
            timeout=20,
            message="the raw points of the zoomed range",
        )
        screenshot(page, "run-100k")
    console.check()


def test_keyboard_reaches_a_run_and_opens_it(shared, page_factory):
    """Tab reaches the runs' links and Enter opens the run at its own URL."""
    runs_dir, server = shared
    page, console = page_factory()
    run = _find(runs_dir, "centralized")
    page.goto(server.page_url())
    wait_until(lambda: len(runs_state(page)) == len(list(runs_dir.glob("*.jsonl"))), message="list")
    target = f"#/runs/{run.stem}"
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.getAttribute('href')") == target:
            break
    else:
        raise AssertionError("Tab never reached the run's link")
    page.keyboard.press("Enter")
    wait_until(lambda: (view_state(page) or {}).get("id") == run.stem, message="run opened")
    assert page.url.endswith(target)
    # The replay controls are reachable too.
    page.focus("#replay-speed")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "replay-play"
    console.check()


@pytest.mark.slow
def test_link_to_a_run_not_there_yet_waits_for_it(runs_dir, page_factory):
    """A link to a run with no file says so without alarming, then opens the run when its file appears."""
    page, console = page_factory(allowed=(r"WebSocket connection to .* failed",))
    with serving(runs_dir) as server:
        page.goto(server.page_url("#/runs/not-started-yet"))
        wait_until(
            lambda: "no run" in page.locator("#no-charts").inner_text().lower(),
            message="absent notice",
        )
        wait_until(
            lambda: page.locator("#conn").get_attribute("data-state") == "connected",
            message="no alarm",
        )
        (runs_dir / "not-started-yet.jsonl").write_bytes(
            encode_message("epoch_end", {"epoch": 0, "phase": "train", "metrics": {"loss": 1.0}})
        )
        wait_until(
            lambda: chart_points(page).get("metrics:loss") == {"train": (1, 1)},
            message="run opened",
        )
    console.check()


@pytest.mark.slow
def test_file_replaced_while_server_down_starts_the_run_over(runs_dir, page_factory):
    """A run rewritten shorter while the server was down is read again from its start after the restart."""
    page, console = page_factory(allowed=SERVER_DOWN)
    run = _find(runs_dir, "centralized")
    server = Server(runs_dir).start()
    try:
        _open_run(page, server, run.stem)
        wait_until(
            lambda: view_state(page)["live"]["messages"] == len(read_messages(run)),
            message="history",
        )
        server.kill()
        write_running(run, epochs=3)  # the same id, new and shorter content
        server.start()
        wait_until(
            lambda: (
                view_state(page)["live"]["messages"] == 4
                and chart_points(page) == {"metrics:loss": {"train": (3, 3)}}
            ),
            timeout=20,
            message="the new content only",
        )
    finally:
        server.stop()
    console.check()


def test_charts_follow_a_colour_scheme_switch(shared, page_factory):
    """Switching the system to dark while the page is open recolours the charts too."""
    runs_dir, server = shared
    page, console = page_factory(scheme="light")
    run = _find(runs_dir, "centralized")
    _open_run(page, server, run.stem)
    # Every card is in the grid before its plot is drawn: wait for all of them.
    page.wait_for_function(
        "() => [...document.querySelectorAll('.plot')].every((p) => p._fullLayout)"
        " && document.querySelector('.plot .main-svg')"
    )
    colours = """() => ({
        fg: getComputedStyle(document.documentElement).getPropertyValue('--fg').trim().toLowerCase(),
        fonts: [...document.querySelectorAll('.plot')].map((p) => p._fullLayout.font.color.toLowerCase()),
    })"""
    light = page.evaluate(colours)
    assert set(light["fonts"]) == {light["fg"]}
    page.emulate_media(color_scheme="dark")
    wait_until(
        lambda: (c := page.evaluate(colours))["fg"] != light["fg"] and set(c["fonts"]) == {c["fg"]},
        message="charts recoloured",
    )
    console.check()
