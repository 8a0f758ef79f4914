"""Dashboard figures (prints numbers, asserts nothing): .venv/bin/python tests/_dashboard_bench.py [N]

1. Loading a run of N batch_metrics lines (2 metrics each) into the page, against
   the baseline of a bare browser WebSocket receiving the same N frames (no
   parsing, no charts) from the same `tailer serve`, in the same run.
2. A live run growing at several hundred lines a second over ~8 charts: how
   long the page takes to answer a trivial evaluate, and its frame rate.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playwright.sync_api import sync_playwright

from recorder.format import encode_message
from tests._dashboard_helpers import (
    chart_points,
    copy_samples,
    launch,
    serving,
    view_state,
    wait_until,
)

FPS = """() => new Promise((resolve) => {
    let frames = 0; const t0 = performance.now();
    const tick = () => { frames++; if (performance.now() - t0 < 3000) requestAnimationFrame(tick); else resolve(frames / 3); };
    requestAnimationFrame(tick);
})"""


def load(n: int) -> None:
    directory = Path(tempfile.mkdtemp()) / "runs"
    directory.mkdir(parents=True)
    with open(directory / "long.jsonl", "wb") as f:
        for k in range(n):
            f.write(
                b'{"type":"batch_metrics","timestamp":"2025-10-22T11:00:01.000Z",'
                b'"data":{"step":%d,"loss":%f,"accuracy":%f}}\n' % (k, 1 / (1 + k), k / n)
            )
    with sync_playwright() as p, serving(directory) as server:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server.url + "healthz")
        bare = page.evaluate(
            """([url, n]) => new Promise((resolve) => {
                const t0 = performance.now(); let count = 0; const ws = new WebSocket(url);
                ws.onmessage = () => { if (++count === n) { ws.close(); resolve(performance.now() - t0); } };
            })""",
            [f"ws://127.0.0.1:{server.port}/experiments/long", n],
        )
        started = time.perf_counter()
        page.goto(server.page_url("#/runs/long"))
        # Every line in (a run this long comes reduced from /api/series, DESIGN §9), all drawn.
        wait_until(
            lambda: (
                (state := view_state(page))
                and state["live"]["lastSeq"] == n - 1
                and state["settled"]
                and chart_points(page).get("metrics:accuracy", {}).get("train (batch)", (0, 0))[1]
            ),
            timeout=600,
            interval=0.2,
        )
        loaded = time.perf_counter() - started
        print(
            f"load {n:,} lines: bare browser WebSocket {bare / 1000:.1f} s, "
            f"dashboard (history and charts) {loaded:.1f} s, ratio {loaded / (bare / 1000):.2f}"
        )
        print(f"  idle frame rate with {n:,} points per line: {page.evaluate(FPS):.0f} fps")
        browser.close()


def live() -> None:
    directory = Path(tempfile.mkdtemp()) / "runs"
    copy_samples(directory)
    run = directory / "running-digits.jsonl"
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        step = 100_000
        while not stop.is_set():
            lines = []
            for _ in range(20):
                step += 1
                lines.append(
                    encode_message(
                        "batch_metrics",
                        {"step": step, "loss": 1 / step, "accuracy": 0.5, "recall": 0.4, "f1": 0.3},
                    )
                )
                lines.append(
                    encode_message(
                        "metrics",
                        {
                            "step": step,
                            "metrics": {
                                "train_loss_step": 1 / step,
                                "train_accuracy_step": 0.5,
                                "train_recall_step": 0.4,
                                "train_f1_step": 0.3,
                            },
                        },
                    )
                )
            with open(run, "ab") as f:
                f.write(b"".join(lines))
            written[0] += len(lines)
            time.sleep(0.05)

    with sync_playwright() as p, serving(directory) as server:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server.page_url("#/runs/running-digits"))
        time.sleep(3)
        thread = threading.Thread(target=writer)
        started = time.perf_counter()
        thread.start()
        time.sleep(1)
        latencies = []
        for _ in range(30):
            t0 = time.perf_counter()
            page.evaluate("() => 1")
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.1)
        fps = page.evaluate(FPS)
        stop.set()
        thread.join()
        rate = written[0] / (time.perf_counter() - started)
        latencies.sort()
        print(
            f"live run at {rate:.0f} lines/s over 8 charts: evaluate round trip median "
            f"{latencies[len(latencies) // 2] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms; {fps:.0f} fps"
        )
        browser.close()


if __name__ == "__main__":
    load(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
    live()
