"""What the unmodified React client receives across drops and restarts (DESIGN §11).

Run from the repository root::

    .venv/bin/python benchmarks/bench_unmodified_client.py
    .venv/bin/python benchmarks/bench_unmodified_client.py --client path/to/bundle.js

A real ``tailer serve`` subprocess, a writer appending 50 lines/s, and in
headless Chromium the stand-in of the unmodified client
(``tests/js/legacy_client.js``: base URL, no ``since``, reconnect 3 s after
any close, 10 tries) connected through a relay. Each scenario is run with
the browser's session cookie kept (this release) and with the cookies
cleared just before the interruption (a browser without the cookie: what
every client got before sessions). Prints lines written, received, missing
and repeated per scenario.

``--client FILE`` runs the same with a bundle of the real client instead: an
IIFE that sets ``window.createTrainingProgressWebSocket``, its ``getEnv()``
stubbed to return ``{VITE_WS_BASE_URL: window.__WS_URL}`` (not shipped: build
it from the app's ``src/services/websocket.ts`` with esbuild).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright import sync_api  # noqa: E402

from tests._client_helpers import _AppHandler, app_server, measure_legacy  # noqa: E402
from tests._dashboard_helpers import launch  # noqa: E402

SCENARIOS = [("drop", 1.0), ("drop", 10.0), ("restart", 1.0)]

# Wraps the real client so measure_legacy sees the stand-in's fields: the
# original hands listeners message.data only, so seq is read back from the
# writer's `step`, which equals it (one writer, every line valid).
_REAL = """async url => {
  window.__WS_URL = url;  // read by the bundle's stubbed getEnv() when it loads
  await new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = "/real_client.js";
    script.onload = resolve;
    script.onerror = reject;
    document.head.appendChild(script);
  });
  const ws = window.createTrainingProgressWebSocket("run");
  const client = { messages: [], opens: 0, closes: [] };
  ws.on("connected", () => { client.opens += 1; });
  ws.on("disconnected", () => client.closes.push(0));
  ws.on("batch_metrics", (d) => client.messages.push({ type: "batch_metrics", seq: d.step }));
  window.client = client;
  ws.connect();
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--client", type=Path, help="an IIFE bundle of the real websocket.ts")
    args = parser.parse_args()
    start = None
    if args.client is not None:
        _AppHandler.files["/real_client.js"] = (args.client.resolve(), "text/javascript")
        start = _REAL
    name = args.client.name if args.client else "tests/js/legacy_client.js"
    print(f"client: {name}; writer: 50 lines/s; figures: lines after the first one received")
    print(
        f"{'scenario':<14} {'cookie':<7} {'written':>8} {'received':>9} {'missing':>8} {'repeated':>9}"
    )
    with sync_api.sync_playwright() as p, app_server() as origin:
        browser = launch(p)
        for interrupt, seconds in SCENARIOS:
            for keep in (True, False):
                context = browser.new_context()
                with tempfile.TemporaryDirectory() as runs:
                    figures = measure_legacy(
                        context,
                        origin,
                        Path(runs),
                        interrupt,
                        seconds,
                        keep_cookie=keep,
                        start=start,
                    )
                context.close()
                print(
                    f"{interrupt + f' {seconds:g} s':<14} {'kept' if keep else 'none':<7} "
                    f"{figures['written'] - figures['first']:>8} {figures['received']:>9} "
                    f"{figures['missing']:>8} {figures['duplicates']:>9}",
                    flush=True,
                )
        browser.close()


if __name__ == "__main__":
    main()
