"""Large runs in the dashboard: reduced series (``/api/series``) against streaming every line.

Run from the repository root (prints figures, asserts nothing)::

    .venv/bin/python benchmarks/bench_large_runs.py                 # 10k, 100k and 1M lines
    .venv/bin/python benchmarks/bench_large_runs.py --sizes 10000 100000 --old-1m
    .venv/bin/python benchmarks/bench_large_runs.py --sizes 1000000 --quick   # reduced rows only

For each size a run is written to a temporary directory (``batch_metrics``
every step, ``epoch_end`` every 1,000 steps, ~125 bytes a line, its last line
stamped now: a run being trained) and measured, in one Debian chromium
(headless), in one run of this script:

* baseline: the same browser fetches the ``.jsonl`` from a static server and
  ``JSON.parse``-s every line (the least any page drawing every point does);
* ``reduced``: the dashboard with its history from ``/api/series``;
* ``old``: the dashboard streaming every line over the WebSocket (the page's
  reduced path switched off in a copy of its files).

Each path gets its own tailer; once the tailer is idle (its start-up read and,
for a run being trained, its series store built) the run is opened three
times in one fresh browser context: ``first`` (nothing cached: plotly is
fetched and compiled), a second visit that primes the browser's code cache,
and ``repeat`` (a user opening the run again), on which zoom and live are
measured.

Figures: time from navigation to the batch loss chart drawn over the whole run
(``loss``: its batch line drawn up to the run's last step, seen by Playwright's
poll, which starts after the load event and waits for a turn on the page's main
thread; ``in page``: the same check made by the page at every frame from the
start, the first frame that shows the chart) and to every chart
drawn (``all``: every line accounted for, nothing left to draw), the JS heap
then (CDP ``Runtime.getHeapUsage``), the tailer's peak RSS, a zoom to 1 % of
the x-range (time until the chart shows that range; ``raw`` when it shows
every point there), and the latency of a live line (written to the file,
until the point is on the chart; median of 3). The old path at 1M lines takes
minutes and is skipped unless ``--old-1m``.

At the largest size two more: ``policy`` — the same run as a finished run
(the tailer builds no store at start, DESIGN §9): the tailer's idle RSS and
the first open, which then waits for the store to be built; and ``compare``
— ``#/compare`` of ``--compare`` copies of the run (default 5): time to the
loss chart and to every chart drawn, heap, tailer RSS, zoom.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from tests._dashboard_helpers import CHROMIUM_ARGS  # noqa: E402

CHART = "document.querySelector('[data-chart-id=\"metrics:loss\"] .plot')"
# The batch loss line of the loss chart (the page puts every phase of a metric on one chart).
PLOT = f"{CHART}.data.find((t) => t.meta.line === 'train (batch)')"
LINE = "train (batch)"
TARGETS = {"ratio": 0.30, "heap_mb": 150, "rss_mb": 300, "zoom_ms": 200}

SERVE = """
import asyncio, os, sys
from pathlib import Path
import tailer.series_api
from tailer.server import serve_directory

if os.environ.get("BENCH_FINISHED_RUNS"):  # every run taken as finished: no store built at start
    tailer.series_api.WARM_RUNS = 0

async def main():
    async with serve_directory(sys.argv[1], port=0, static_dir=Path(sys.argv[2])) as app:
        print("ready", app.port, flush=True)
        await app.serve_forever()

asyncio.run(main())
"""

BASELINE_PAGE = b"""<!doctype html><meta charset="utf-8"><script>
(async () => {
  const text = await (await fetch("run.jsonl", { cache: "no-store" })).text();
  let n = 0, i = 0, last = null;
  for (;;) {
    const j = text.indexOf("\\n", i);
    if (j < 0) break;
    last = JSON.parse(text.slice(i, j));
    n += 1;
    i = j + 1;
  }
  window.done = { lines: n, at: performance.now(), last };
})();
</script>"""


# --------------------------------------------------------------------------- the run


def write_run(path: Path, lines: int) -> tuple[int, int]:
    """``batch_metrics`` every step and ``epoch_end`` every 1,000 steps; ``(lines, last step)``."""
    out = []
    step = 0
    n = 0
    start = int(time.time()) - lines // 100  # a line every 10 ms, the last one now
    second, prefix = -1, b""
    with open(path, "wb") as f:
        while n < lines:
            t = n * 10  # ms
            if t // 1000 != second:
                second = t // 1000
                prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + second)).encode()
            stamp = b"%s.%03dZ" % (prefix, t % 1000)
            if step and step % 1000 == 0 and out and out[-1] == "b":
                line = (
                    b'{"type":"epoch_end","timestamp":"%s","data":{"epoch":%d,"phase":"val",'
                    b'"step":%d,"metrics":{"loss":%.6f,"accuracy":%.6f}}}\n'
                    % (stamp, step // 1000 - 1, step, 1 / (1 + step / 5e4), 0.5 + step / 4e6)
                )
                out.append("e")
            else:
                loss = 2.0 / (1 + step / 1e4) + 0.05 * ((step * 7919) % 101) / 101
                if step % 50_000 == 25_000:
                    loss = 9.0  # a spike: must survive any reduction
                line = (
                    b'{"type":"batch_metrics","timestamp":"%s","data":{"step":%d,"loss":%.6f,'
                    b'"accuracy":%.6f,"epoch":%d}}\n'
                    % (stamp, step, loss, ((step * 104729) % 1000) / 1000, step // 1000)
                )
                step += 1
                out.append("b")
            if len(out) > 2:
                del out[0]
            f.write(line)
            n += 1
    return n, step - 1


# --------------------------------------------------------------------------- servers


def static_copy(tmp: Path, name: str, threshold: int, source: Path | None = None) -> Path:
    """The dashboard's files with the reduced path's threshold set to ``threshold`` lines.

    Set as a page would (``window.RUNTAIL_REDUCED_FROM_LINES`` before anything loads), so
    index.html's early history request follows it too: the old path asks for no history.
    ``source``: another tree of the page's files (default: this checkout's).
    """
    target = tmp / f"static-{name}"
    shutil.copytree(source or ROOT / "tailer" / "static", target)
    index = target / "index.html"
    text, count = re.subn(
        r"<head>",
        f"<head>\n<script>window.RUNTAIL_REDUCED_FROM_LINES = {threshold};</script>",
        index.read_text(),
    )
    assert count == 1, "index.html has no <head>"
    index.write_text(text)
    return target


@contextlib.contextmanager
def tailer(directory: Path, static: Path, finished_runs: bool = False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILER_")}
    if finished_runs:
        env["BENCH_FINISHED_RUNS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(directory), str(static)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # after the initial read of every file
        if not line.startswith("ready"):
            raise RuntimeError(f"tailer did not start: {line!r}")
        yield proc, int(line.split()[1])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def static_server(directory: Path):
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class PeakRss:
    """Samples a process's RSS every 20 ms; ``peak`` in bytes."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.process.memory_info().rss)

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.peak


# --------------------------------------------------------------------------- measurements


def heap_mb(page) -> float:
    cdp = page.context.new_cdp_session(page)
    used = cdp.send("Runtime.getHeapUsage")["usedSize"]
    cdp.detach()
    return used / 2**20


def baseline(browser, port: int, lines: int) -> dict[str, float]:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{port}/baseline.html")
    page.wait_for_function("() => window.done", timeout=600_000, polling=50)
    done = page.evaluate("() => window.done")
    assert done["lines"] == lines, done["lines"]
    result = {"chart_ms": done["at"], "heap_mb": heap_mb(page)}
    context.close()
    return result


def wait_idle(pid: int, limit_s: float = 180) -> None:
    """Until the tailer has used under 5 % of a core for a second (its start-up work done)."""
    process = psutil.Process(pid)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and process.cpu_percent(interval=1.0) > 5:
        pass


def batch_lines(plot: str = CHART) -> str:
    return f"{plot}.data.filter((t) => t.meta.line === '{LINE}' && !t.meta.smoothed)"


def loss_drawn(runs: int, last_step: int) -> str:
    """A function: ``performance.now()`` once the loss chart shows every run to its last step."""
    return f"""() => {{
        const plot = {CHART};
        const lines = plot && plot.data ? {batch_lines()} : [];
        return lines.length === {runs} && lines.every((t) => t.x[t.x.length - 1] === {last_step})
            && performance.now();
    }}"""


def in_page_timer(runs: int, last_step: int) -> str:
    """An init script: the page itself checks for the drawn loss chart at every frame from
    the start and keeps the first time it holds (``window.__lossDrawnAt``).

    Playwright's own poll starts only once ``goto`` returned (after the load event) and
    then waits for a turn on the page's main thread, which may be a chart later: its time
    is the "loss chart" column, this one the "in page" column.
    """
    return f"""(() => {{
        const drawn = {loss_drawn(runs, last_step)};
        const poll = () => {{
            const at = drawn();
            if (at) window.__lossDrawnAt = at;
            else requestAnimationFrame(poll);
        }};
        requestAnimationFrame(poll);
    }})();"""


def open_run(
    page, fragment: str, port: int, runs: int, lines: int, last_step: int, timeout_s: float
) -> dict[str, object]:
    """Navigate to ``fragment``; times to the loss chart over the whole run, and to every chart."""
    page.goto(f"http://127.0.0.1:{port}/{fragment}")
    loss = loss_drawn(runs, last_step)
    every = f"""() => {{
        const v = window.__runtail && window.__runtail.view();
        return v && v.live.messages === {runs * lines} && v.settled && performance.now();
    }}"""
    loss_ms = page.wait_for_function(loss, timeout=timeout_s * 1000, polling="raf").json_value()
    all_ms = page.wait_for_function(every, timeout=timeout_s * 1000, polling="raf").json_value()
    return {
        "loss_ms": loss_ms,
        "in_page_ms": page.evaluate("() => window.__lossDrawnAt || null"),
        "all_ms": all_ms,
        "heap_mb": heap_mb(page),
        "drawn_points": page.evaluate(f"() => {PLOT}.x.length"),
        # The run spikes at step 25,000 and every 50,000 after.
        "spike": page.evaluate(f"() => Math.max(...{PLOT}.y)") == 9.0
        if last_step > 25_000
        else None,
    }


def zoom(page, last_step: int) -> dict[str, object]:
    """Zoom the loss chart to 1 % of the x-range: time until it shows that range (raw or not)."""
    result: dict[str, object] = {}
    a = (last_step // 2) - (last_step // 200)
    b = a + last_step // 100
    started = page.evaluate(
        f"() => {{ const t = performance.now(); "
        f"Plotly.relayout({CHART}, {{'xaxis.range[0]': {a}, 'xaxis.range[1]': {b}}}); return t; }}"
    )
    zoomed = f"""() => {batch_lines()}.every((t) => t.x.length && t.x[0] >= {a - 1}
        && t.x[t.x.length - 1] <= {b + 1}) && performance.now()"""
    handle = page.wait_for_function(zoomed, timeout=60_000, polling="raf")
    inside = f"(t) => t.x.filter((v) => v >= {a} && v <= {b}).length === {b - a + 1}"
    settle = f"() => {batch_lines()}.every({inside}) && performance.now()"
    try:  # raw points: every step of the range on every line
        handle = page.wait_for_function(settle, timeout=10_000, polling="raf")
        result["zoom_raw"] = True
    except Exception:
        result["zoom_raw"] = False
    result["zoom_ms"] = handle.json_value() - started
    page.evaluate(f"() => Plotly.relayout({CHART}, {{'xaxis.autorange': true}})")
    time.sleep(0.5)
    return result


def live(page, path: Path, lines: int, last_step: int) -> dict[str, object]:
    """Latency of a line written to the run until its point is on the chart (median of 3)."""
    latencies = []
    for k in range(3):
        step = last_step + 1 + k
        seq = lines + k
        line = (
            b'{"type":"batch_metrics","timestamp":"2025-10-23T00:00:00.000Z",'
            b'"data":{"step":%d,"loss":0.5,"accuracy":0.5,"epoch":0}}\n' % step
        )
        sent = time.time() * 1000
        with open(path, "ab") as f:
            f.write(line)
        seen = f"""() => window.__runtail.view().live.lastSeq === {seq}
            && {PLOT}.x.includes({step}) && Date.now()"""
        handle = page.wait_for_function(seen, timeout=30_000, polling="raf")
        latencies.append(handle.json_value() - sent)
        time.sleep(0.3)
    return {"live_ms": statistics.median(latencies)}


def dashboard(
    browser,
    name: str,
    static: Path,
    runs: Path,
    lines: int,
    last_step: int,
    timeout_s: float,
    *,
    ids: tuple[str, ...] = ("run",),
    finished: bool = False,
    visits: tuple[str, ...] = ("first", "second", "repeat"),
) -> dict[str, dict]:
    """One tailer serving the runs ``ids``, opened in one fresh browser context once it is idle.

    ``first``: nothing in the browser's caches; the second visit primes its code cache;
    ``repeat``, the third, is a user opening the run again: zoom and live are measured
    on it (live for a single run only).
    """
    fragment = f"#/runs/{ids[0]}" if len(ids) == 1 else f"#/compare?runs={','.join(ids)}"
    out: dict[str, dict] = {}
    with tailer(runs, static, finished_runs=finished) as (proc, port):
        wait_idle(proc.pid)
        idle_rss = psutil.Process(proc.pid).memory_info().rss / 2**20
        rss = PeakRss(proc.pid)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.add_init_script(in_page_timer(len(ids), last_step))
        try:
            for visit in visits:
                result: dict[str, object] = {"load": os.getloadavg()[0], "idle_rss_mb": idle_rss}
                try:
                    page.goto("about:blank")
                    result.update(
                        open_run(page, fragment, port, len(ids), lines, last_step, timeout_s)
                    )
                    if visit == "repeat":
                        result.update(zoom(page, last_step))
                        if len(ids) == 1:
                            result.update(live(page, runs / f"{ids[0]}.jsonl", lines, last_step))
                except Exception as exc:  # a path that cannot finish is reported, not fatal
                    result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
                if visit != "second":
                    out[f"{name} {visit}"] = result
        finally:
            context.close()
        peak = rss.close() / 2**20
        for result in out.values():
            result["rss_mb"] = peak
    if len(ids) == 1:  # lines appended by the live check go: the next path starts alike
        path = runs / f"{ids[0]}.jsonl"
        with open(path, "r+b") as f:
            f.truncate(_size_of_lines(path, lines))
    return out


def _size_of_lines(path: Path, lines: int) -> int:
    with open(path, "rb") as f:
        size = 0
        for n, line in enumerate(f):
            if n == lines:
                break
            size += len(line)
    return size


# --------------------------------------------------------------------------- report


def fmt(value, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,.{digits}f}{unit}"


def report(size: int, megabytes: float, base: dict, paths: dict[str, dict | None]) -> None:
    print(f"\n== {size:,} lines ({megabytes:.0f} MB) ==")
    print(
        f"  baseline (fetch + JSON.parse every line): {fmt(base['chart_ms'], ' ms')}, "
        f"heap {fmt(base['heap_mb'], ' MB', 1)}, load {base['load']:.1f}"
    )
    print(
        f"  {'path':<25} {'loss chart':>10} {'× base':>7} {'in page':>8} {'× base':>7} "
        f"{'all charts':>10} {'heap':>9} "
        f"{'RSS peak':>9} {'RSS idle':>9} {'points':>7} {'spike':>6} {'zoom 1%':>9} "
        f"{'raw':>4} {'live':>8} {'load':>5}"
    )
    for name, r in paths.items():
        if r is None:
            print(f"  {name:<25} not run (--old-1m; never with --quick)")
            continue
        ratio = r["loss_ms"] / base["chart_ms"] if r.get("loss_ms") else None
        in_page = r["in_page_ms"] / base["chart_ms"] if r.get("in_page_ms") else None
        print(
            f"  {name:<25} {fmt(r.get('loss_ms'), ' ms'):>10} {fmt(ratio, '', 2):>7} "
            f"{fmt(r.get('in_page_ms'), ' ms'):>8} {fmt(in_page, '', 2):>7} "
            f"{fmt(r.get('all_ms'), ' ms'):>10} "
            f"{fmt(r.get('heap_mb'), ' MB', 1):>9} {fmt(r.get('rss_mb'), ' MB'):>9} "
            f"{fmt(r.get('idle_rss_mb'), ' MB'):>9} "
            f"{fmt(r.get('drawn_points')):>7} {fmt(r.get('spike')):>6} "
            f"{fmt(r.get('zoom_ms'), ' ms'):>9} {fmt(r.get('zoom_raw')):>4} "
            f"{fmt(r.get('live_ms'), ' ms'):>8} {fmt(r.get('load'), '', 1):>5}"
            + (f"  ({r['error']})" if "error" in r else "")
        )


def verdict(size: int, base: dict, r: dict, first: dict) -> None:
    if first and "loss_ms" in first:
        ratios = [first["loss_ms"] / base["chart_ms"]]
        if first.get("in_page_ms"):
            ratios.append(first["in_page_ms"] / base["chart_ms"])
        print(
            f"  first visit at {size:,} lines: loss chart ≤ 0.30× baseline: "
            + " / ".join("met" if x <= TARGETS["ratio"] else "MISSED" for x in ratios)
            + " (loss chart / in page)"
        )
    if not r or "loss_ms" not in r:
        print(f"  targets at {size:,} lines: not measured")
        return
    checks = [
        ("loss chart ≤ 0.30× baseline", r["loss_ms"] / base["chart_ms"] <= TARGETS["ratio"]),
        ("heap ≤ 150 MB", r["heap_mb"] <= TARGETS["heap_mb"]),
        ("tailer RSS ≤ 300 MB", r["rss_mb"] <= TARGETS["rss_mb"]),
        ("zoom 1 % raw ≤ 200 ms", bool(r.get("zoom_raw")) and r["zoom_ms"] <= TARGETS["zoom_ms"]),
    ]
    print(
        f"  targets at {size:,} lines (reduced path, repeat visit): "
        + ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in checks)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--old-1m", action="store_true", help="also stream 1M lines the old way")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a path may take")
    parser.add_argument(
        "--compare", type=int, default=5, help="runs compared at the largest size (0: none)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only the reduced path's first and repeat visits (no old path, policy, compare)",
    )
    args = parser.parse_args()
    if args.quick:
        args.compare = 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-large-"))
    try:
        statics = {
            "reduced": static_copy(tmp, "reduced", 0),
            "old": static_copy(tmp, "old", 10**15),  # if_over = 128e15 bytes: 204 for any run
        }
        print(
            f"cores: {os.cpu_count()}, load: {os.getloadavg()[0]:.1f} (figures from one run; "
            "compare ratios)"
        )
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
            )
            for size in args.sizes:
                runs = tmp / f"runs-{size}"
                runs.mkdir()
                path = runs / "run.jsonl"
                lines, last_step = write_run(path, size)
                (runs / "baseline.html").write_bytes(BASELINE_PAGE)
                with static_server(runs) as port:
                    base = baseline(browser, port, lines)
                base["load"] = os.getloadavg()[0]
                # The baseline page is no run; the tailer ignores non-.jsonl files anyway.
                results: dict[str, dict | None] = {}
                for name in ("reduced", "old"):
                    if name == "old" and (args.quick or (size >= 1_000_000 and not args.old_1m)):
                        results["old"] = None
                        continue
                    results.update(
                        dashboard(
                            browser, name, statics[name], runs, lines, last_step, args.timeout
                        )
                    )
                if size == max(args.sizes) and not args.quick:
                    results.update(
                        dashboard(
                            browser,
                            "policy: finished run",
                            statics["reduced"],
                            runs,
                            lines,
                            last_step,
                            args.timeout,
                            finished=True,
                            visits=("first",),
                        )
                    )
                report(size, path.stat().st_size / 1e6, base, results)
                verdict(
                    size,
                    base,
                    results.get("reduced repeat") or {},
                    results.get("reduced first") or {},
                )
                if size == max(args.sizes) and args.compare > 1:
                    many = tmp / "compare"
                    many.mkdir()
                    ids = tuple(f"run{k}" for k in range(1, args.compare + 1))
                    for run in ids:
                        os.link(path, many / f"{run}.jsonl")
                    compared = dashboard(
                        browser,
                        f"compare {len(ids)}",
                        statics["reduced"],
                        many,
                        lines,
                        last_step,
                        args.timeout,
                        ids=ids,
                    )
                    report(size, path.stat().st_size / 1e6 * len(ids), base, compared)
                    shutil.rmtree(many)
                shutil.rmtree(runs)
            browser.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
