"""A big run in the dashboard: history from /api/series (reduced), zoom to raw points, live lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from recorder.format import encode_message
from tests._dashboard_helpers import (
    ConsoleWatch,
    launch,
    plotly_call_hook,
    serving,
    view_state,
    wait_until,
)

pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api")
if not Path("/usr/bin/chromium").exists():  # pragma: no cover - CI image has it
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)

STEPS = 30_000  # above the page's REDUCED_FROM_LINES
SPIKE_STEP = 12_345
PLOT = "document.querySelector('[data-chart-id=\"metrics:loss\"] .plot')"
BATCH = f"{PLOT}.data.find((t) => t.meta.line === 'train (batch)')"


def _loss(step: int) -> float:
    return 50.0 if step == SPIKE_STEP else round(1.0 / (1.0 + step / 1000), 6)


def _write_big_run(path: Path) -> None:
    lines = [encode_message("status", {"status": "running", "message": "go"})]
    for step in range(STEPS):
        lines.append(encode_message("batch_metrics", {"step": step, "loss": _loss(step)}))
        if step % 1000 == 999:
            lines.append(
                encode_message(
                    "epoch_end",
                    {"epoch": step // 1000, "phase": "val", "step": step, "metrics": {"loss": 0.5}},
                )
            )
    path.write_bytes(b"".join(lines))


def test_big_run_loads_reduced_zooms_raw_and_goes_on_live(tmp_path):
    """The page draws a big run from reduced series (spike kept), zooms to raw points, then live."""
    _write_big_run(tmp_path / "big.jsonl")
    lines = STEPS + STEPS // 1000 + 1
    with serving(tmp_path) as server, sync_api.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        console = ConsoleWatch(page)
        frames: list[str] = []
        page.on("websocket", lambda ws: frames.append(ws.url))
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url) if "/api/series" in r.url else None)
        page.goto(server.page_url("#/runs/big"))

        def drawn():
            state = view_state(page)
            charts = (state or {}).get("charts", {})
            trace = charts.get("metrics:loss", {}).get("traces", {}).get("train (batch)")
            return state if trace and trace["drawn"] and state["settled"] else None

        state = wait_until(drawn, timeout=60, message="the batch loss chart")
        loss = state["charts"]["metrics:loss"]["traces"]["train (batch)"]
        assert loss["points"] < STEPS / 4  # reduced, not every line
        assert state["live"]["lastSeq"] == lines - 1
        assert state["live"]["messages"] == lines
        assert "val" in state["charts"]["metrics:loss"]["traces"]  # from the catalogue's events
        x, y = page.evaluate(f"() => [{BATCH}.x, {BATCH}.y]")
        assert max(y) == 50.0 and x[y.index(50.0)] == SPIKE_STEP  # the spike survives
        assert x[0] == 0 and x[-1] == STEPS - 1
        assert any("since=" in url for url in frames)  # live from the snapshot's seq
        # One request for the whole history (catalogue and every bulk metric), sent by
        # index.html before the modules loaded, and taken over by reduced.js.
        assert len(asked) == 1 and "bulk=1" in asked[0], asked
        # The chart draws the served history point for point (reduced.js appends a series
        # at once after its first point went through the model).
        served = page.evaluate(
            """async () => (await (await fetch(
                '/api/series?run=big&metric=loss&x=step&width=900&max_raw=3600')).json())"""
        )
        batch = next(s for s in served["series"] if s["type"] == "batch_metrics")
        assert x == batch["x"] and y == batch["y"]

        # Every redraw of the loss chart from here on: the zoom must cost one, with the
        # server's raw points (not first the held points, then the raw ones).
        page.evaluate(
            f"""() => {{
                const react = Plotly.react;
                window.lossDraws = [];
                Plotly.react = function (el, data, ...rest) {{
                    if (el === {PLOT}) window.lossDraws.push(data.map((t) => t.x.length));
                    return react.call(this, el, data, ...rest);
                }};
            }}"""
        )
        page.evaluate(
            f"() => Plotly.relayout({PLOT}, {{'xaxis.range[0]': 20000, 'xaxis.range[1]': 20299}})"
        )
        wait_until(
            lambda: page.evaluate(f"() => {BATCH}.x.length") == 302,
            timeout=20,
            message="raw points of the zoomed range",
        )
        x, y = page.evaluate(f"() => [{BATCH}.x, {BATCH}.y]")
        assert x == list(range(19_999, 20_301))
        assert y == [_loss(step) for step in x]
        draws = page.evaluate("() => window.lossDraws")
        assert len(draws) == 1 and 302 in draws[0], draws

        with open(tmp_path / "big.jsonl", "ab") as f:
            f.write(encode_message("batch_metrics", {"step": STEPS, "loss": 0.125}))
        wait_until(
            lambda: view_state(page)["live"]["lastSeq"] == lines,
            timeout=20,
            message="the live line",
        )
        page.evaluate(f"() => Plotly.relayout({PLOT}, {{'xaxis.autorange': true}})")
        wait_until(
            lambda: page.evaluate(f"() => {BATCH}.x.slice(-1)[0]") == STEPS,
            timeout=20,
            message="the live point on the chart",
        )
        console.check()
        browser.close()


# Records the width of each plot as plotly first draws it (window.firstWidths[metric]).
_FIRST_WIDTHS = "window.firstWidths = {};" + plotly_call_hook(
    """const svg = el.querySelector(".main-svg");
    if (el.dataset) window.firstWidths[el.dataset.metric] = svg ? Number(svg.getAttribute("width")) : null;"""
)


def test_every_plot_of_a_big_run_is_first_drawn_at_its_own_width(tmp_path):
    """A big run's charts arrive at once: every card is in the grid before the first plot is
    drawn, so no plot is drawn across the whole row and redrawn narrower when its neighbour
    arrives (the loss chart used to be: 1,022 px wide in a 496 px card until the resize)."""
    lines = [encode_message("status", {"status": "running", "message": "go"})]
    for step in range(STEPS):
        lines.append(
            encode_message(
                "batch_metrics", {"step": step, "loss": _loss(step), "accuracy": step / STEPS}
            )
        )
    (tmp_path / "two.jsonl").write_bytes(b"".join(lines))
    with serving(tmp_path) as server, sync_api.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        console = ConsoleWatch(page)
        page.add_init_script(_FIRST_WIDTHS)
        page.goto(server.page_url("#/runs/two"))
        wait_until(
            lambda: (
                (view_state(page) or {}).get("settled")
                and page.evaluate("() => Object.keys(window.firstWidths).length") == 2
            ),
            timeout=60,
            message="both charts drawn",
        )
        first = page.evaluate("() => window.firstWidths")
        now = page.evaluate(
            "() => Object.fromEntries([...document.querySelectorAll('.plot')]"
            ".map((el) => [el.dataset.metric, el.clientWidth]))"
        )
        assert set(first) == {"loss", "accuracy"}
        assert first == now, (first, now)
        assert now["loss"] < 1400 / 2  # two charts side by side
        # The top and bottom margins the charts start with are those plotly's automargin
        # arrives at (legend row above, tick labels and title below): their first draw
        # needs no second pass for them (a right margin pushed by a last tick label still
        # may). Asked for (margin) = drawn (_size).
        margins = page.evaluate(
            "() => [...document.querySelectorAll('.plot')].map((el) => {"
            " const f = el._fullLayout; return [f.margin.t, f._size.t, f.margin.b, f._size.b]; })"
        )
        assert margins == [[44, 44, 46, 46], [44, 44, 46, 46]], margins
        console.check()
        browser.close()
