"""Where a first visit's time goes: a Chromium trace of the dashboard opening a 1M-line run.

Run from the repository root (prints figures, asserts nothing)::

    .venv/bin/python benchmarks/profile_first_visit.py                 # the dashboard, 3 rounds
    .venv/bin/python benchmarks/profile_first_visit.py --floor         # + a bare plotly page
    .venv/bin/python benchmarks/profile_first_visit.py --untraced --rounds 8 \
        --static /tmp/tree-a --static /tmp/tree-b                     # alternate two page trees
    .venv/bin/python benchmarks/profile_first_visit.py --cpu-profile \
        --static /tmp/tree --modules-of /tmp/tree/vendor/plotly-basic.min.js  # unminified plotly

The run is ``bench_large_runs.py``'s (``--lines``, default 1,000,000); one tailer per
static tree (``--static``, default tailer/static), idle before the page opens. Each round
opens the run in a fresh browser context (empty caches: plotly fetched and compiled) in
every tree in turn, while Chromium records a trace (not with ``--untraced``), and prints:
the renderer main thread's self time by activity (compile, script, style, layout, ...)
and by script; when things happened from navigation (requests, answers, scripts run);
each ``Plotly.newPlot``/``react`` (start, duration); Resource Timing of plotly, the
history request and a few modules; ``plotlyOnload`` (plotly run) and ``lossInPage``
(the first frame whose loss chart holds the whole run, checked by the page at every
frame). ``--cpu-profile`` adds sampled self time by function (slows the page; with
``--modules-of`` an unminified plotly bundle's samples are named by source module).
``--floor``: a page that only loads plotly's basic bundle (``--bundle`` for others under
static/vendor) and draws one scatter of the loss chart's ~3,600 points — the least a
first visit can take with that bundle. Traced times run slower than untraced ones:
compare within one run, alternating trees; the summary prints the load average beside
each figure.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import itertools
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_large_runs import (  # noqa: E402
    BASELINE_PAGE,
    CHART,
    baseline,
    batch_lines,
    static_copy,
    static_server,
    tailer,
    wait_idle,
    write_run,
)
from playwright.sync_api import sync_playwright  # noqa: E402

from tests._dashboard_helpers import CHROMIUM_ARGS, plotly_call_hook  # noqa: E402

CATEGORIES = [
    "devtools.timeline",
    "disabled-by-default-devtools.timeline",
    "v8",
    "v8.execute",
    "disabled-by-default-v8.compile",
    "blink.user_timing",
    "loading",
    "netlog",
    "blink",
    "toplevel",
]
CPU_PROFILE = "disabled-by-default-v8.cpu_profiler"
UNHINTED = "plotly-basic-unhinted.min.js"  # --unhinted: the bundle as npm ships it

# Records each Plotly.newPlot / react: when, which chart, how long (window.__draws).
DRAW_LOG = (
    "window.__draws = [];"
    + plotly_call_hook(
        """const metric = el && el.dataset ? el.dataset.metric : String(el);
    window.__draws.push([name, metric, started, performance.now() - started]);""",
        methods=("newPlot", "react"),
        on_define="window.__plotlyAt = performance.now();",
    )
    + """
window.__marks = {};
addEventListener("runtail:plotly", () => { window.__marks.plotlyOnload = performance.now(); });
// The first frame at which the loss chart holds the whole run (polled from the start, each frame).
(function poll() {
  const plot = document.querySelector('[data-chart-id="metrics:loss"] .plot');
  const line = plot && plot.data && plot.data.find((t) => t.meta && t.meta.line === "train (batch)");
  if (line && line.x.length > 1000) { window.__marks.lossInPage = performance.now(); return; }
  requestAnimationFrame(poll);
})();
"""
)

FLOOR_PAGE = """<!doctype html><meta charset="utf-8">
<script>
// plotly asked for first, the points beside it; drawn once both are in.
const points = fetch("/static/points.json").then((r) => r.json());
const s = document.createElement("script");
s.src = "/static/vendor/%s";
s.fetchPriority = "high";
s.onload = async () => {
  window.plotlyAt = performance.now();
  const data = await points;
  Plotly.newPlot("p", [{x: data.x, y: data.y, type: "scatter", mode: "lines"}],
    {margin: {t: 10}, height: 250}, {responsive: true, displaylogo: false});
  window.done = performance.now();
};
document.head.appendChild(s);
</script>
<div id="p" style="width:480px;height:250px"></div>"""


def _self_times(events: list[dict]) -> list[tuple[dict, float]]:
    """(event, self µs) for complete events of one thread (nesting by time)."""
    events = sorted(events, key=lambda e: (e["ts"], -e.get("dur", 0)))
    out = []
    stack: list[list] = []  # [event, end, child time]
    for e in events:
        end = e["ts"] + e.get("dur", 0)
        while stack and stack[-1][1] <= e["ts"]:
            ev, _, child = stack.pop()
            out.append((ev, ev.get("dur", 0) - child))
        if stack:
            stack[-1][2] += e.get("dur", 0)
        stack.append([e, end, 0])
    while stack:
        ev, _, child = stack.pop()
        out.append((ev, ev.get("dur", 0) - child))
    return out


def _url_of(event: dict) -> str | None:
    args = event.get("args", {})
    data = args.get("data", {}) if isinstance(args.get("data"), dict) else {}
    for key in ("url", "fileName"):
        if data.get(key):
            return data[key]
        if args.get(key):
            return args[key]
    return None


def _cpu_profile(events: list[dict], pid: int, tid: int, t0: float, end: float):
    """Self time by (function, script) from the trace's sampled CPU profile of one thread."""
    nodes: dict[int, dict] = {}
    samples: list[tuple[float, int]] = []
    ids = {
        e["id"]
        for e in events
        if e.get("name") == "Profile" and e.get("pid") == pid and e.get("tid") == tid
    }
    for e in events:
        if e.get("name") != "ProfileChunk" or e.get("pid") != pid or e.get("id") not in ids:
            continue
        data = e["args"]["data"]
        profile = data.get("cpuProfile", {})
        for node in profile.get("nodes", []):
            nodes[node["id"]] = node
        t = samples[-1][0] if samples else _profile_start(events, pid, tid)
        for sample, delta in zip(
            profile.get("samples", []), data.get("timeDeltas", []), strict=False
        ):
            t += delta
            samples.append((t, sample))
    by_fn: collections.Counter = collections.Counter()
    for (t, node), (t_next, _) in itertools.pairwise(samples):
        if not (t0 <= t <= end) or node not in nodes:
            continue
        frame = nodes[node]["callFrame"]
        url = frame.get("url", "").rsplit("/", 1)[-1][:28]
        name = frame.get("functionName") or "(anon)"
        if SOURCE_MAP and "plotly" in url:  # an unminified bundle: the module of the line
            name = (
                f"{name} @{_module_at(frame.get('lineNumber', 0))}:{frame.get('lineNumber', 0) + 1}"
            )
        by_fn[(name, url)] += t_next - t
    return by_fn


SOURCE_MAP: list[tuple[int, str]] = []  # (first line, module) of an unminified plotly bundle


def _module_at(line: int) -> str:
    i = bisect.bisect_right([a for a, _ in SOURCE_MAP], line + 1) - 1
    return SOURCE_MAP[i][1][-48:] if i >= 0 else "?"


def _profile_start(events: list[dict], pid: int, tid: int) -> float:
    for e in events:
        if e.get("name") == "Profile" and e.get("pid") == pid and e.get("tid") == tid:
            return e["args"]["data"]["startTime"]
    return 0.0


def summarise(trace_path: Path, done_ms: float, window: tuple[float, float] | None = None) -> None:
    trace = json.loads(trace_path.read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            names[(e["pid"], e["tid"])] = e["args"]["name"]
    nav = [e for e in events if e.get("name") == "navigationStart"]
    # The page's renderer: the one whose main thread ran our scripts.
    mains: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and names.get((e.get("pid"), e.get("tid"))) == "CrRendererMain":
            mains[(e["pid"], e["tid"])] += e.get("dur", 0)
    if not mains:
        print("   no renderer main thread found")
        return
    pid, tid = mains.most_common(1)[0][0]
    nav = [
        e
        for e in nav
        if e["pid"] == pid
        and e["args"].get("data", {}).get("documentLoaderURL", "").startswith("http")
    ]
    t0 = nav[-1]["ts"] if nav else min(e["ts"] for e in events if e["pid"] == pid and "ts" in e)
    end = t0 + done_ms * 1000
    main = [
        e
        for e in events
        if e["pid"] == pid and e["tid"] == tid and e.get("ph") == "X" and t0 <= e["ts"] <= end
    ]
    by_name: collections.Counter = collections.Counter()
    by_url: collections.Counter = collections.Counter()
    for ev, self_us in _self_times(main):
        by_name[ev["name"]] += self_us
    # Per script: the whole duration of each top-level script event.
    for ev in main:
        if ev["name"] in (
            "EvaluateScript",
            "v8.evaluateModule",
            "FunctionCall",
            "v8.compile",
            "v8.compileModule",
            "v8.produceCache",
            "V8.CompileCode",
        ):
            url = _url_of(ev) or "?"
            by_url[(ev["name"], url.rsplit("/", 1)[-1][:40])] += ev.get("dur", 0)
    busy = sum(us for _, us in _self_times(main))
    print(f"   main thread: busy {busy / 1000:.0f} ms of {done_ms:.0f} ms")
    print("   self time by activity (≥ 3 ms):")
    for name, us in by_name.most_common():
        if us < 3000:
            break
        print(f"     {us / 1000:7.1f} ms  {name}")
    print("   script events (total duration, ≥ 3 ms; nested ones counted in each):")
    for (name, url), us in by_url.most_common():
        if us < 3000:
            break
        print(f"     {us / 1000:7.1f} ms  {name:<20} {url}")
    spans = [("", t0, end)]
    if window:
        spans.append(
            (
                f" in {window[0]:.0f}–{window[1]:.0f} ms",
                t0 + window[0] * 1000,
                t0 + window[1] * 1000,
            )
        )
    for label, a, b in spans:
        by_fn = _cpu_profile(events, pid, tid, a, b)
        if by_fn:
            print(f"   sampled self time by function{label} (≥ 2 ms):")
            for (fn, url), us in by_fn.most_common(50):
                if us < 2000:
                    break
                print(f"     {us / 1000:7.1f} ms  {fn:<32} {url}")
    # Moments.
    print("   moments (ms from navigation):")
    moments = []
    urls: dict = {}
    for e in sorted((e for e in events if "ts" in e), key=lambda e: e["ts"]):
        if e.get("pid") != pid or "ts" not in e or not (t0 <= e["ts"] <= end):
            continue
        name = e.get("name")
        if name in ("ResourceSendRequest", "ResourceReceiveResponse", "ResourceFinish"):
            data = e.get("args", {}).get("data", {})
            url = data.get("url") or urls.get(data.get("requestId"))
            if url is None:
                continue
            urls[data.get("requestId")] = url
            moments.append((e["ts"], f"{name[8:]} {url.split('/', 3)[-1][:60]}"))
        elif name in ("EvaluateScript", "v8.evaluateModule") and e.get("tid") == tid:
            url = _url_of(e) or "?"
            moments.append(
                (e["ts"], f"{name} {url.rsplit('/', 1)[-1][:40]} ({e.get('dur', 0) / 1000:.0f} ms)")
            )
    requests = {}
    for ts, text in sorted(moments):
        key = text.split(" ", 1)[-1]
        if text.startswith("SendRequest"):
            requests[key] = ts
        print(f"     {(ts - t0) / 1000:7.1f}  {text}")
    print(f"     {done_ms:7.1f}  chart drawn (the end of the span above)")


def run_dashboard(
    browser, port: int, trace_dir: Path, label: str, last_step: int, traced: bool
) -> float:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto("about:blank")
    trace = trace_dir / f"{label}.json"
    page.add_init_script(DRAW_LOG)
    if traced:
        browser.start_tracing(page=page, path=str(trace), categories=CATEGORIES)
    page.goto(f"http://127.0.0.1:{port}/#/runs/run")
    loss = f"""() => {{
        const plot = {CHART};
        const lines = plot && plot.data ? {batch_lines()} : [];
        return lines.length === 1 && lines.every((t) => t.x[t.x.length - 1] === {last_step})
            && performance.now();
    }}"""
    done = page.wait_for_function(loss, timeout=120_000, polling="raf").json_value()
    draws = page.evaluate("() => window.__draws")
    marks = page.evaluate("""() => ({ ...window.__marks, plotlySet: window.__plotlyAt,
        resources: performance.getEntriesByType("resource").map((r) => [r.name.split("/").pop()
            .slice(0, 24), r.startTime, r.responseStart, r.responseEnd]) })""")
    if traced:
        browser.stop_tracing()
    context.close()
    if traced:
        first = next((d for d in draws if d[1] == "loss"), None)
        summarise(trace, done, (first[2], first[2] + first[3]) if first else None)
    print(
        "   draws (start ms, duration):",
        ", ".join(
            f"{name} {metric} {t:.0f}+{d:.0f}" for name, metric, t, d in draws if t <= done + 50
        ),
    )
    print(
        "   resources (start / first byte / end):",
        "; ".join(
            f"{n} {a:.0f}/{b:.0f}/{c:.0f}"
            for n, a, b, c in marks.pop("resources")
            if "plotly" in n or "series" in n or n in ("app.js", "charts.js", "schema")
        ),
    )
    print("   marks:", ", ".join(f"{k} {v:.0f}" for k, v in marks.items() if v))
    return done, marks


def run_floor(browser, port: int, trace_dir: Path, label: str, bundle: str, traced: bool) -> float:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto("about:blank")
    trace = trace_dir / f"{label}.json"
    if traced:
        browser.start_tracing(page=page, path=str(trace), categories=CATEGORIES)
    page.goto(f"http://127.0.0.1:{port}/static/floor-{bundle}.html")
    done = page.wait_for_function("() => window.done", timeout=60_000, polling="raf").json_value()
    print(
        f"   floor {bundle}: plotly run {page.evaluate('window.plotlyAt'):.0f} ms, drawn {done:.0f}"
    )
    if traced:
        browser.stop_tracing()
    context.close()
    if traced:
        summarise(trace, done)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--static",
        action="append",
        type=Path,
        help="a static tree to serve (repeatable; default tailer/static)",
    )
    parser.add_argument("--floor", action="store_true", help="also a bare plotly page")
    parser.add_argument(
        "--bundle",
        action="append",
        help="bundle(s) under static/vendor for --floor (default plotly-basic.min.js)",
    )
    parser.add_argument("--untraced", action="store_true", help="time only, no trace")
    parser.add_argument(
        "--modules-of",
        type=Path,
        help="with --cpu-profile: name plotly samples by module of this unminified bundle",
    )
    parser.add_argument(
        "--unhinted",
        action="store_true",
        help="with --floor: also the vendored bundle without its compile hint (first line)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="each round also the baseline (fetch + JSON.parse of the run): ratios printed",
    )
    parser.add_argument(
        "--cpu-profile",
        action="store_true",
        help="sample the CPU too (self time by function; slows the page)",
    )
    args = parser.parse_args()
    if args.cpu_profile:
        CATEGORIES.append(CPU_PROFILE)
    if args.modules_of:  # an unminified bundle (esbuild's "  // path" module comments)
        for n, line in enumerate(args.modules_of.read_text().splitlines(), 1):
            m = re.match(r"  // ((?:src|node_modules|build|lib)/\S+)$", line)
            if m:
                SOURCE_MAP.append((n, m.group(1)))
    statics = args.static or [ROOT / "tailer" / "static"]
    bundles = args.bundle or ["plotly-basic.min.js"]
    if args.unhinted:
        bundles.append(UNHINTED)
    tmp = Path(tempfile.mkdtemp(prefix="profile-first-"))
    runs = tmp / "runs"
    runs.mkdir()
    lines, last_step = write_run(runs / "run.jsonl", args.lines)
    (runs / "baseline.html").write_bytes(BASELINE_PAGE)
    copies = []
    for k, static in enumerate(statics):
        copy = static_copy(tmp, f"s{k}", 0, source=static)
        copies.append(copy)
        vendored = (copy / "vendor" / "plotly-basic.min.js").read_bytes()
        (copy / "vendor" / UNHINTED).write_bytes(vendored.split(b"\n", 1)[1])
        for bundle in bundles:
            (copy / f"floor-{bundle}.html").write_text(FLOOR_PAGE % bundle)
    print(f"cores {os.cpu_count()}, {lines:,} lines, trees: {[str(s) for s in statics]}")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        servers = []
        with contextlib.ExitStack() as stack:
            base_port = stack.enter_context(static_server(runs)) if args.baseline else None
            for k, copy in enumerate(copies):
                proc, port = stack.enter_context(tailer(runs, copy))
                servers.append((k, proc, port, copy))
            for _, proc, _, _ in servers:
                wait_idle(proc.pid)
            # The floor page's points: what the loss chart draws, from the tailer itself.
            port0 = servers[0][2]
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port0}/api/series?run=run&metric=loss&x=step&width=900"
                "&max_raw=3600"
            ) as r:
                answer = json.loads(r.read())
            series = next(s for s in answer["series"] if s["type"] == "batch_metrics")
            for _, _, _, copy in servers:
                (copy / "points.json").write_text(json.dumps({"x": series["x"], "y": series["y"]}))
            results = collections.defaultdict(list)
            for rnd in range(args.rounds):
                if base_port is not None:
                    base = baseline(browser, base_port, lines)["chart_ms"]
                    results["baseline"].append((base, os.getloadavg()[0]))
                    print(f"\n== round {rnd + 1}: baseline {base:.0f} ms")
                for k, _proc, port, _copy in servers:
                    load = os.getloadavg()[0]
                    label = f"r{rnd}-s{k}"
                    print(f"\n== round {rnd + 1}, tree {k} ({statics[k]}), load {load:.1f}")
                    done, marks = run_dashboard(
                        browser, port, tmp, label, last_step, not args.untraced
                    )
                    results[f"dashboard tree {k}"].append((done, load))
                    for mark in ("lossInPage", "plotlyOnload"):
                        if marks.get(mark):
                            results[f"  {mark} tree {k}"].append((marks[mark], load))
                    print(f"   -> loss chart {done:.0f} ms")
                    if args.floor:
                        for bundle in bundles:
                            done = run_floor(
                                browser,
                                port,
                                tmp,
                                f"{label}-floor-{bundle}",
                                bundle,
                                not args.untraced,
                            )
                            results[f"floor {bundle} tree {k}"].append((done, os.getloadavg()[0]))
                            print(f"   -> floor ({bundle}) {done:.0f} ms")
                    time.sleep(0.5)
        browser.close()
    print("\n== summary (ms from navigation; load average beside each)")
    medians = {}
    for name, values in results.items():
        medians[name] = statistics.median(d for d, _ in values)
        print(
            f"  {name:<40} "
            + "  ".join(f"{d:6.0f} ({ld:.1f})" for d, ld in values)
            + f"   median {medians[name]:.0f}"
        )
    if "baseline" in medians:
        print(
            "  medians × the baseline's median: "
            + ", ".join(
                f"{name.strip()} {value / medians['baseline']:.2f}"
                for name, value in medians.items()
                if name != "baseline"
            )
        )
    if not os.environ.get("PROFILE_KEEP"):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print("kept", tmp)


if __name__ == "__main__":
    main()
