"""The compare view and the chart options (DESIGN §8), in Chromium against a real `tailer serve`.

Traces are read back from the plotly graph elements (`.plot[data-metric=NAME]`)
and compared with the values in the files.
"""

from __future__ import annotations

import csv
import io
import json
import re
from itertools import pairwise
from pathlib import Path
from urllib.parse import unquote

import pytest

from recorder.format import encode_message
from tests._dashboard_helpers import (
    COMPARE_RUNS,
    browser_fixture,
    page_factory_fixture,
    read_messages,
    runs_state,
    screenshot,
    serving,
    ts,
    view_state,
    wait_until,
    write_lightning_run,
)

RUNS = COMPARE_RUNS

pytestmark = pytest.mark.browser
_fixtures = (browser_fixture, page_factory_fixture)

sync_api = pytest.importorskip("playwright.sync_api")
if not Path("/usr/bin/chromium").exists():  # pragma: no cover - CI image has it
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)


# ---------------------------------------------------------------- runs


def make_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, spec in COMPARE_RUNS.items():
        write_lightning_run(directory / f"{name}.jsonl", **spec)
    return directory


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    directory = make_dir(tmp_path_factory.mktemp("compare") / "runs")
    with serving(directory) as server:
        yield directory, server


def batch_losses(path: Path) -> tuple[list[int], list[float]]:
    pairs = [
        (m["data"]["step"], m["data"]["loss"])
        for m in read_messages(path)
        if m["type"] == "batch_metrics"
    ]
    return [s for s, _ in pairs], [v for _, v in pairs]


def epoch_values(path: Path, metric: str, phase: str) -> tuple[list[int], list[int], list[float]]:
    rows = [
        (m["data"]["epoch"], m["data"]["step"], m["data"]["metrics"][metric])
        for m in read_messages(path)
        if m["type"] == "epoch_end" and m["data"]["phase"] == phase
    ]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


TRACES = """(metric) => {
    const plot = document.querySelector(`.plot[data-metric="${metric}"]`);
    if (!plot || !plot.data) return null;
    return plot.data.map((t) => ({name: t.name, meta: t.meta, x: t.x, y: t.y,
        colour: t.line && t.line.color, dash: t.line && t.line.dash, opacity: t.opacity ?? 1,
        mode: t.mode}));
}"""


def traces(page, metric: str):
    return page.evaluate(TRACES, metric)


def settled(page, runs: list[str]) -> None:
    def done():
        state = view_state(page)
        return state and state["runs"] == runs and state["settled"] and state["charts"]

    wait_until(done, timeout=20, message=f"compare view of {runs} drawn")


def open_run(page, server, fragment: str, path: Path) -> None:
    """Open `#/runs/...` of the run in `path` and wait until it holds and draws every message."""
    page.goto(server.page_url(fragment))
    n = len(read_messages(path))

    def done():
        state = view_state(page) or {}
        return state.get("settled") and state["charts"] and state["live"]["messages"] == n

    wait_until(done, timeout=20, message=f"{fragment} drawn")


def open_compare(page, server, runs: list[str], options: str = "") -> None:
    page.goto(server.page_url(f"#/compare?runs={','.join(runs)}{options}"))
    settled(page, runs)


def of_run(found, run: str, line: str, smoothed: bool = False):
    """The one trace of `run`'s `line` ("train (batch)", "train", "val"): raw or smoothed."""
    matches = [
        t
        for t in found
        if t["meta"]["experiment_id"] == run
        and t["meta"]["line"] == line
        and t["meta"]["smoothed"] == smoothed
    ]
    assert len(matches) == 1, (run, line, smoothed, [t["meta"] for t in found])
    return matches[0]


# ---------------------------------------------------------------- tests


def test_ticking_runs_opens_the_compare_view(shared, page_factory):
    """Checkboxes in the list select runs; Compare opens #/compare?runs=A,B with both on every chart."""
    directory, server = shared
    page, console = page_factory()
    page.goto(server.page_url())
    wait_until(lambda: len(runs_state(page)) == len(RUNS), message="list")
    page.locator('li.run-item[data-id="alpha"] input[type=checkbox]').check()
    # The keyboard way: Tab to the checkbox, Space ticks it.
    page.locator('li.run-item[data-id="beta"] input[type=checkbox]').focus()
    page.keyboard.press("Space")
    wait_until(
        lambda: page.locator("#compare-open").inner_text() == "Compare selected (2)",
        message="two ticked",
    )
    page.locator("#compare-open").focus()
    page.keyboard.press("Enter")
    wait_until(lambda: "#/compare?runs=" in page.url, message="compare URL")
    runs = unquote(page.url.split("runs=")[1]).split(",")
    assert sorted(runs) == ["alpha", "beta"]
    settled(page, runs)
    # One chart per metric, each drawn once, whatever path logged it.
    metrics = page.evaluate(
        "() => [...document.querySelectorAll('#charts .plot')].map((p) => p.dataset.metric)"
    )
    assert sorted(metrics) == sorted(set(metrics))
    assert {"loss", "acc", "lr-Adam"} <= set(metrics)
    found = traces(page, "loss")
    for t in found:
        assert set(t["meta"]) >= {"experiment_id", "phase", "smoothed"}
    # The values are the files' values, per run.
    for run in ("alpha", "beta"):
        steps, losses = batch_losses(directory / f"{run}.jsonl")
        batch = of_run(found, run, "train (batch)")
        assert batch["x"] == steps and batch["y"] == pytest.approx(losses)
        _, vsteps, vals = epoch_values(directory / f"{run}.jsonl", "loss", "val")
        val = of_run(found, run, "val")
        assert val["x"] == vsteps and val["y"] == pytest.approx(vals)
    # One colour per run across every chart; phases as line styles.
    colours = {}
    for metric in metrics:
        for t in traces(page, metric):
            colours.setdefault(t["meta"]["experiment_id"], set()).add(t["colour"])
    assert all(len(c) == 1 for c in colours.values()), colours
    assert colours["alpha"] != colours["beta"]
    assert of_run(found, "alpha", "val")["dash"] != of_run(found, "alpha", "train")["dash"]
    console.check()


def test_options_live_in_the_url_and_restore_the_view(shared, page_factory):
    """x axis, smoothing, log-y and the metric filter change the URL; the URL restores them."""
    _, server = shared
    page, console = page_factory()
    open_compare(page, server, ["alpha", "gamma"])
    page.select_option("#opt-x", "epoch")
    page.check("#opt-logy")
    page.fill("#opt-filter", "^(loss|acc)$")
    page.locator("#opt-smooth").fill("0.6")
    wait_until(lambda: "smooth=0.6" in page.url, message="smooth in the URL")
    url = page.url
    for part in ("x=epoch", "logy=1", "smooth=0.6", "filter="):
        assert part in url, url
    fresh, console2 = page_factory()
    fresh.goto(url)
    settled(fresh, ["alpha", "gamma"])
    assert fresh.locator("#opt-x").input_value() == "epoch"
    assert fresh.locator("#opt-logy").is_checked()
    assert fresh.locator("#opt-smooth").input_value() == "0.6"
    assert fresh.locator("#opt-filter").input_value() == "^(loss|acc)$"
    shown = fresh.evaluate(
        "() => [...document.querySelectorAll('#charts .chart-card:not([hidden]) .plot')]"
        ".map((p) => p.dataset.metric)"
    )
    assert sorted(shown) == ["acc", "loss"]
    layout = fresh.evaluate(
        """() => { const p = document.querySelector('.plot[data-metric="loss"]');
            return {x: p._fullLayout.xaxis.title.text, y: p._fullLayout.yaxis.type}; }"""
    )
    assert layout == {"x": "epoch", "y": "log"}
    val = of_run(traces(fresh, "loss"), "alpha", "val")
    assert val["x"] == [0, 1, 2, 3]
    console.check()
    console2.check()


def test_smoothing_is_debiased_ema_with_the_raw_line_faint(shared, page_factory):
    """smooth=W draws TensorBoard's debiased EMA of the full series over a faint raw line."""
    directory, server = shared
    page, console = page_factory()
    w = 0.8
    open_run(page, server, f"#/runs/alpha?smooth={w}", directory / "alpha.jsonl")
    found = traces(page, "loss")
    steps, losses = batch_losses(directory / "alpha.jsonl")
    raw = of_run(found, "alpha", "train (batch)")
    smooth = of_run(found, "alpha", "train (batch)", smoothed=True)
    last, want = 0.0, []
    for k, v in enumerate(losses, start=1):
        last = w * last + (1 - w) * v
        want.append(last / (1 - w**k))
    assert raw["y"] == pytest.approx(losses) and raw["opacity"] < 0.5
    assert smooth["x"] == steps and smooth["y"] == pytest.approx(want, rel=1e-12)
    assert smooth["opacity"] == 1
    console.check()


def test_x_axis_time_and_wall(shared, page_factory):
    """x=time is seconds since the run's first message; x=wall its timestamps on a date axis."""
    directory, server = shared
    page, console = page_factory()
    open_run(page, server, "#/runs/alpha?x=time", directory / "alpha.jsonl")
    messages = read_messages(directory / "alpha.jsonl")
    from datetime import datetime

    def seconds(t):
        return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()

    start = seconds(messages[0]["timestamp"])
    want = [seconds(m["timestamp"]) - start for m in messages if m["type"] == "batch_metrics"]
    assert of_run(traces(page, "loss"), "alpha", "train (batch)")["x"] == pytest.approx(want)
    page.select_option("#opt-x", "wall")
    wait_until(
        lambda: (
            page.evaluate(
                "() => document.querySelector('.plot[data-metric=\"loss\"]')._fullLayout.xaxis.type"
            )
            == "date"
        ),
        message="date axis",
    )
    xs = of_run(traces(page, "loss"), "alpha", "train (batch)")["x"]
    assert [x / 1000 for x in xs] == pytest.approx([w + start for w in want])
    console.check()


def test_per_step_values_on_the_epoch_axis_are_never_joined_back(shared, page_factory):
    """x=epoch: a run's many batch values share each epoch's x, so they are drawn as points, never as a
    line that zigzags down at every epoch and back (only lines whose x never goes back are joined)."""
    directory, server = shared
    page, console = page_factory()
    open_run(page, server, "#/runs/alpha?x=epoch", directory / "alpha.jsonl")
    found = traces(page, "loss")
    batch = of_run(found, "alpha", "train (batch)")
    assert len(batch["x"]) == len(batch_losses(directory / "alpha.jsonl")[1])
    for trace in found:
        if "lines" in (trace["mode"] or "lines"):
            xs = [x for x in trace["x"] if x is not None]
            assert all(a < b for a, b in pairwise(xs)), (trace["meta"], xs[:10])
    console.check()


def test_learning_rate_is_an_optimizer_value_on_an_honest_axis(shared, page_factory):
    """lr-Adam has its own section, no phase; its constant 0.001 gets a y range around 0.001."""
    _, server = shared
    page, console = page_factory()
    open_run(page, server, "#/runs/alpha", shared[0] / "alpha.jsonl")
    plot = page.locator('.plot[data-metric="lr-Adam"]')
    assert plot.get_attribute("data-section") == "optim"
    section = page.evaluate(
        "() => document.querySelector('.plot[data-metric=\"lr-Adam\"]').closest('section').dataset.section"
    )
    assert section == "optim"
    (trace,) = traces(page, "lr-Adam")
    assert trace["meta"]["phase"] is None and set(trace["y"]) == {0.001}
    lo, hi = page.evaluate(
        "() => document.querySelector('.plot[data-metric=\"lr-Adam\"]')._fullLayout.yaxis.range"
    )
    assert lo < 0.001 < hi and lo > 0 and hi - lo < 0.001
    console.check()


def test_each_chart_downloads_its_data_as_csv(shared, page_factory):
    """A chart's CSV button saves every value of every line drawn on it, as in the files."""
    directory, server = shared
    page, console = page_factory()
    open_compare(page, server, ["alpha", "beta"])
    with page.expect_download() as info:
        page.locator('[data-chart-id="metrics:loss"] .chart-csv').click()
    download = info.value
    assert download.suggested_filename == "loss.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    for run in ("alpha", "beta"):
        steps, losses = batch_losses(directory / f"{run}.jsonl")
        mine = [r for r in rows if r["experiment_id"] == run and r["line"] == "train (batch)"]
        assert [int(r["step"]) for r in mine] == steps
        assert [float(r["value"]) for r in mine] == losses
    console.check()


def test_nothing_can_send_data_off_the_machine(shared, page_factory):
    """No cloud/share controls in the mode bar, and every request goes to this tailer."""
    _, server = shared
    page, console = page_factory()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    open_compare(page, server, ["alpha", "beta"])
    page.hover('.plot[data-metric="loss"]')
    titles = page.evaluate(
        "() => [...document.querySelectorAll('.modebar-btn')].map((b) => b.getAttribute('data-title') || '')"
    )
    assert titles, "no mode bar"
    assert not [t for t in titles if re.search(r"cloud|chart studio|plotly|edit", t, re.I)], titles
    assert all(u.startswith((server.url, "data:", "blob:")) for u in requests), requests
    console.check()


def test_hyperparameters_table_and_parallel_coordinates(shared, page_factory):
    """A row per run, differing columns first and marked, sortable by a final metric; a parcoords chart."""
    directory, server = shared
    page, console = page_factory()
    runs = ["alpha", "beta", "gamma"]
    open_compare(page, server, runs)
    table = page.locator("table[data-hparams]")
    wait_until(lambda: table.locator("tbody tr").count() == 3, message="a row per run")

    def headers():
        return table.locator("thead th").evaluate_all(
            "(ths) => ths.map((th) => [th.dataset.key || '', th.dataset.differs === 'true'])"
        )

    # Once every run is in: lr and max_epochs differ, hidden (64 in all three) does not.
    wait_until(
        lambda: sorted(k for k, d in headers() if d) == ["lr", "max_epochs"], message="differing"
    )
    headers = headers()
    keys = [k for k, _ in headers if k and k != "__final__"]
    differing = [k for k, d in headers if d]
    assert differing == ["lr", "max_epochs"] or differing == ["max_epochs", "lr"], headers
    assert keys[: len(differing)] == differing  # differing columns first
    assert "hidden" in keys[len(differing) :]
    # Sorted by the final value of the chosen metric (val loss).
    page.select_option("#hparams-metric", "metrics:loss")

    def order():
        return table.locator("tbody tr").evaluate_all("(trs) => trs.map((tr) => tr.dataset.run)")

    finals = {r: epoch_values(directory / f"{r}.jsonl", "loss", "val")[2][-1] for r in runs}
    wait_until(lambda: order() == sorted(runs, key=finals.get), message="sorted by final loss")
    table.locator('th[data-key="__final__"] button').click()
    wait_until(
        lambda: order() == sorted(runs, key=finals.get, reverse=True), message="sorted descending"
    )

    def parallel_chart():
        return page.evaluate(
            """() => { const p = document.querySelector('[data-metric="_parallel"]');
                const t = p.data && p.data[0];
                return t && {type: t.type, dims: t.dimensions.map((d) => [d.label, d.values]),
                             colour: t.line.color}; }"""
        )

    # Parallel coordinates need plotly's full bundle, loaded on demand: drawn once it is in.
    wait_until(lambda: parallel_chart() is not None, 30, message="parallel coordinates drawn")
    parallel = parallel_chart()
    assert parallel["type"] == "parcoords"
    dims = dict((label, values) for label, values in parallel["dims"])
    assert sorted(dims["lr"]) == sorted(RUNS[r]["lr"] for r in runs)
    assert sorted(dims["final loss"]) == pytest.approx(sorted(finals.values()))
    console.check()


def test_runs_list_filter_and_sort(shared, page_factory):
    """The filter matches ids, statuses and key=value hyperparameters; sort by name or a metric."""
    _, server = shared
    page, console = page_factory()
    page.goto(server.page_url())
    wait_until(lambda: len(runs_state(page)) == len(RUNS), message="list")

    def listed():
        return page.locator("#runs li.run-item").evaluate_all(
            "(lis) => lis.map((li) => li.dataset.id)"
        )

    page.fill("#runs-filter", "lr=0.01")
    wait_until(lambda: sorted(listed()) == ["alpha", "delta"], message="lr=0.01")
    page.fill("#runs-filter", "hidden=64 lr=0.1")
    wait_until(lambda: listed() == ["beta"], message="two hyperparameters")
    page.fill("#runs-filter", "completed")
    wait_until(lambda: len(listed()) == len(RUNS), message="status")
    page.fill("#runs-filter", "ta")
    wait_until(lambda: sorted(listed()) == ["beta", "delta"], message="id")
    page.fill("#runs-filter", "")
    page.select_option("#runs-sort", "name")
    wait_until(lambda: listed() == sorted(RUNS), message="by name")
    page.select_option("#runs-sort", "metric")
    page.fill("#runs-sort-metric", "loss")
    page.locator("#runs-sort-metric").press("Enter")
    page.locator("#runs-sort-metric").blur()
    last = {}
    for name in RUNS:
        rows = [m for m in read_messages(shared[0] / f"{name}.jsonl") if m["type"] == "epoch_end"]
        last[name] = rows[-1]["data"]["metrics"]["loss"]  # the file's last `loss` row
    wait_until(lambda: listed() == sorted(RUNS, key=last.get), message="by last loss")
    console.check()


def test_live_lines_reach_the_compare_view(tmp_path, page_factory):
    """Lines appended to a compared run are pushed to its traces."""
    directory = make_dir(tmp_path / "runs")
    page, console = page_factory()
    requests: list[str] = []
    with serving(directory) as server:
        open_compare(page, server, ["alpha", "beta"])
        page.on("request", lambda r: requests.append(r.url))
        before = len(of_run(traces(page, "loss"), "beta", "train (batch)")["x"])
        with open(directory / "beta.jsonl", "ab") as f:
            for k in range(3):
                f.write(
                    encode_message("batch_metrics", {"step": 1000 + k, "loss": 0.01, "epoch": 9})
                )
        wait_until(
            lambda: len(of_run(traces(page, "loss"), "beta", "train (batch)")["x"]) == before + 3,
            message="live points",
        )
        assert of_run(traces(page, "loss"), "beta", "train (batch)")["x"][-3:] == [1000, 1001, 1002]
        assert not [u for u in requests if "/api/metrics" in u]
    console.check()


def test_compare_view_of_big_runs_uses_the_reduced_path(tmp_path, page_factory):
    """Runs over the page's threshold (lowered here) come reduced in the compare view too: one
    request each for their history, every spike kept, a zoom redraws once with each run's raw
    points, live lines arrive."""
    directory = tmp_path / "runs"
    directory.mkdir()
    steps = 5000  # more than the 3,600 points a history may hold raw
    spikes = {"ra": 1234, "rb": 2345, "rc": 3456}
    for run, spike in spikes.items():
        lines = [encode_message("status", {"status": "running", "message": "go"})]
        for step in range(steps):
            loss = 40.0 if step == spike else 1.0 / (1 + step / 500)
            lines.append(encode_message("batch_metrics", {"step": step, "loss": loss}))
        (directory / f"{run}.jsonl").write_bytes(b"".join(lines))
    page, console = page_factory()
    page.add_init_script("window.RUNTAIL_REDUCED_FROM_LINES = 100;")
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/series" in r.url else None)
    runs = list(spikes)
    plot = "document.querySelector('.plot[data-metric=\"loss\"]')"
    with serving(directory) as server:
        open_compare(page, server, runs)

        def every_history():
            found = traces(page, "loss") or []
            lines = [t for t in found if t["meta"]["line"] == "train (batch)"]
            return len(lines) == 3 and all(t["x"][-1] == steps - 1 for t in lines) and found

        found = wait_until(every_history, timeout=20, message="each run's history drawn")
        assert view_state(page)["live"]["messages"] == 3 * (steps + 1)
        for run, spike in spikes.items():
            line = of_run(found, run, "train (batch)")
            assert len(line["x"]) < steps  # reduced, not every line
            assert max(line["y"]) == 40.0 and line["x"][line["y"].index(40.0)] == spike
            assert line["x"][0] == 0 and line["x"][-1] == steps - 1
            history = [u for u in asked if f"run={run}&" in u and "metric=" not in u]
            assert len(history) == 1 and "bulk=1" in history[0], asked
        page.evaluate(
            f"""() => {{
                const react = Plotly.react;
                window.draws = 0;
                Plotly.react = function (el, ...rest) {{
                    if (el === {plot}) window.draws += 1;
                    return react.call(this, el, ...rest);
                }};
                Plotly.relayout({plot}, {{'xaxis.range[0]': 2000, 'xaxis.range[1]': 2099}});
            }}"""
        )

        def zoomed():
            lines = [of_run(traces(page, "loss"), run, "train (batch)") for run in runs]
            return all(line["x"] == list(range(1999, 2101)) for line in lines)

        wait_until(zoomed, timeout=20, message="raw points of every run in the zoomed range")
        assert page.evaluate("() => window.draws") == 1
        with open(directory / "rb.jsonl", "ab") as f:
            f.write(encode_message("batch_metrics", {"step": steps, "loss": 0.125}))
        page.evaluate(f"() => Plotly.relayout({plot}, {{'xaxis.autorange': true}})")
        wait_until(
            lambda: of_run(traces(page, "loss"), "rb", "train (batch)")["x"][-1] == steps,
            timeout=20,
            message="the live point of rb",
        )
    console.check()


def test_resumed_run_never_draws_back_into_the_previous_attempt(tmp_path, page_factory):
    """A later training_start in the same file breaks the line (a gap), never joins the attempts."""
    directory = tmp_path / "runs"
    directory.mkdir()
    lines = [encode_message("training_start", {}, timestamp=ts(0))]
    for epoch in range(4):
        lines.append(
            encode_message(
                "epoch_end",
                {
                    "epoch": epoch,
                    "phase": "train",
                    "step": 10 * (epoch + 1),
                    "metrics": {"loss": 1 / (epoch + 1)},
                },
                timestamp=ts(epoch + 1),
            )
        )
    lines.append(encode_message("training_start", {}, timestamp=ts(10)))
    for epoch in (2, 3, 4):
        lines.append(
            encode_message(
                "epoch_end",
                {
                    "epoch": epoch,
                    "phase": "train",
                    "step": 10 * (epoch + 1),
                    "metrics": {"loss": 0.2},
                },
                timestamp=ts(10 + epoch),
            )
        )
    (directory / "resumed.jsonl").write_bytes(b"".join(lines))
    page, console = page_factory()
    with serving(directory) as server:
        open_run(page, server, "#/runs/resumed", directory / "resumed.jsonl")
        (trace,) = traces(page, "loss")
        assert trace["x"] == [10, 20, 30, 40, 30, 30, 40, 50]
        assert trace["y"][4] is None  # the break between the attempts
        assert trace["y"][:4] == pytest.approx([1, 0.5, 1 / 3, 0.25])
        assert "attempt 2" in page.locator("#run-meta").inner_text()
    console.check()


def test_epoch_counter_follows_a_run_counting_from_one(tmp_path, page_factory):
    """A run whose epochs count from 1 shows 'epoch 5/5' at its last epoch, never 6/5."""
    directory = tmp_path / "runs"
    directory.mkdir()
    lines = [
        encode_message("epoch_start", {"epoch": e, "total_epochs": 5}, timestamp=ts(e))
        for e in range(1, 6)
    ]
    (directory / "one-based.jsonl").write_bytes(b"".join(lines))
    page, console = page_factory()
    with serving(directory) as server:
        page.goto(server.page_url("#/runs/one-based"))
        wait_until(lambda: "epoch 5/5" in page.locator("#run-meta").inner_text(), message="5/5")
    console.check()


def test_system_metrics_section(tmp_path, page_factory):
    """system_metrics get their own section with a line per host/rank/device."""
    directory = tmp_path / "runs"
    directory.mkdir()
    lines = []
    for i in range(4):
        for host, rank in (("node-a", 0), ("node-b", 1)):
            lines.append(
                encode_message(
                    "system_metrics",
                    {
                        "host": host,
                        "rank": rank,
                        "metrics": {"cpu_percent": 10.0 + i + rank, "gpu": {"0": {"util": 50 + i}}},
                    },
                    timestamp=ts(i),
                )
            )
    (directory / "sys.jsonl").write_bytes(b"".join(lines))
    page, console = page_factory()
    with serving(directory) as server:
        open_run(page, server, "#/runs/sys", directory / "sys.jsonl")
        assert page.locator('.plot[data-metric="cpu_percent"]').get_attribute("data-section") == (
            "system"
        )
        cpu = {t["name"]: t["y"] for t in traces(page, "cpu_percent")}
        assert cpu == {"node-a rank 0": [10, 11, 12, 13], "node-b rank 1": [11, 12, 13, 14]}
        assert sorted(t["name"] for t in traces(page, "gpu.util")) == [
            "node-a rank 0 gpu0",
            "node-b rank 1 gpu0",
        ]
    console.check()


def test_invalid_id_says_so(shared, page_factory):
    """A page for an id that is not a valid experiment id says the id is invalid."""
    _, server = shared
    page, console = page_factory()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(server.page_url("#/runs/..%2Fetc%2Fpasswd"))
    wait_until(
        lambda: "not a valid run id" in page.locator("#no-charts").inner_text(),
        message="invalid id notice",
    )
    assert not [u for u in sockets if "/experiments/" in u]  # nothing asked for it
    console.check()


def _patch_experiments(page, patch) -> None:
    """Serve /api/experiments from the real server with `patch(entries)` applied."""

    def handle(route):
        response = route.fetch()
        entries = response.json()
        route.fulfill(response=response, body=json.dumps(patch(entries)))

    page.route("**/api/experiments*", handle)


def test_a_silent_running_run_says_how_long_it_has_been_silent(tmp_path, page_factory):
    """A run with no terminal status whose entry says `stale` shows 'no update for 3 h', not 'running'."""
    directory = tmp_path / "runs"
    directory.mkdir()
    (directory / "quiet.jsonl").write_bytes(
        encode_message("training_start", {}, timestamp=ts(0))
        + encode_message("status", {"status": "running"}, timestamp=ts(0))
    )
    page, console = page_factory()
    _patch_experiments(page, lambda entries: [{**e, "stale": 3 * 3600} for e in entries])
    with serving(directory) as server:
        page.goto(server.page_url())
        badge = page.locator('li.run-item[data-id="quiet"] .badge')
        wait_until(lambda: badge.inner_text() == "no update for 3 h", message="stale badge")

        page.goto(server.page_url("#/runs/quiet"))
        wait_until(
            lambda: page.locator("#run-status").inner_text() == "no update for 3 h",
            message="stale in the run header",
        )
    console.check()


def test_per_rank_files_are_one_run_with_a_line_per_rank(tmp_path, page_factory):
    """<id>.rank<N>.jsonl files (/api/experiments gives their run and rank) are one run, a line per rank."""
    directory = tmp_path / "runs"
    directory.mkdir()
    for rank in (0, 1):
        (directory / f"ddp.rank{rank}.jsonl").write_bytes(
            b"".join(
                encode_message("batch_metrics", {"step": s, "loss": rank + s / 10}, timestamp=ts(s))
                for s in range(5)
            )
        )

    page, console = page_factory()
    with serving(directory) as server:
        page.goto(server.page_url())
        wait_until(
            lambda: (
                page.locator("#runs li.run-item").evaluate_all(
                    "(lis) => lis.map((li) => li.dataset.id)"
                )
                == ["ddp"]
            ),
            message="one run in the list",
        )
        page.goto(server.page_url("#/runs/ddp"))

        def per_rank():
            found = traces(page, "loss") or []
            return {t["meta"]["rank"]: t["y"] for t in found}

        wait_until(lambda: len(per_rank()) == 2, message="a line per rank")
        assert per_rank() == {
            0: pytest.approx([s / 10 for s in range(5)]),
            1: pytest.approx([1 + s / 10 for s in range(5)]),
        }
    console.check()


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("n", [2, 5])
def test_compare_screenshots(shared, page_factory, n, width, scheme):
    """The compare view of 2 and 5 runs, light and dark, desktop and phone: fits, no console errors."""
    _, server = shared
    page, console = page_factory(width=width, scheme=scheme)
    runs = list(RUNS)[:n]
    open_compare(page, server, runs, "&smooth=0.6")
    page.wait_for_function(
        "(n) => { const p = document.querySelector('[data-metric=\"_parallel\"]');"
        " return p.data && p.data[0].dimensions[0].values.length === n"
        " && document.querySelectorAll('table[data-hparams] thead th[data-differs]').length >= 2; }",
        arg=n,
        timeout=30000,
    )
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"page scrolls sideways by {overflow}px"
    screenshot(page, f"compare-{n}-{scheme}-{width}")
    console.check()


def test_the_landing_summary_counts_a_silent_run_as_silent(tmp_path, page_factory):
    """The landing view's sum-up agrees with the list: a silent 'running' run is not counted as running."""
    directory = tmp_path / "runs"
    directory.mkdir()
    (directory / "quiet.jsonl").write_bytes(
        encode_message("training_start", {}, timestamp=ts(0))
        + encode_message("status", {"status": "running"}, timestamp=ts(0))
    )
    (directory / "done.jsonl").write_bytes(
        encode_message("status", {"status": "completed"}, timestamp=ts(0))
    )
    page, console = page_factory()
    _patch_experiments(page, lambda entries: [{**e, "stale": 3 * 3600} for e in entries])
    with serving(directory) as server:
        page.goto(server.page_url())
        summary = page.locator("#summary")
        wait_until(lambda: summary.inner_text().startswith("2 runs"), message="summary")
        assert summary.inner_text() == "2 runs: 1 silent, 1 completed"
    console.check()
