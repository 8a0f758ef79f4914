"""Make docs/dashboard.png and docs/compare-*.png: the compare view, served by a real `tailer serve`.

The runs are the Lightning-like fixture runs of the dashboard tests
(tests/_dashboard_helpers.py: COMPARE_RUNS). Run from the repository root:

    .venv/bin/python docs/make_screenshot.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests._dashboard_helpers import (  # noqa: E402
    COMPARE_RUNS,
    launch,
    serving,
    view_state,
    wait_until,
    write_lightning_run,
)

# (file, runs, width, colour scheme, full page)
SHOTS = [
    ("dashboard.png", 3, 1280, "light", False),
    ("compare-2-light.png", 2, 1280, "light", True),
    ("compare-2-dark.png", 2, 1280, "dark", True),
    ("compare-5-light.png", 5, 1280, "light", True),
    ("compare-5-dark.png", 5, 1280, "dark", True),
    ("compare-2-phone-light.png", 2, 390, "light", True),
    ("compare-5-phone-dark.png", 5, 390, "dark", True),
]


def shoot(browser, server, name: str, n: int, width: int, scheme: str, full: bool) -> Path:
    runs = list(COMPARE_RUNS)[:n]
    page = browser.new_page(viewport={"width": width, "height": 900}, color_scheme=scheme)
    page.goto(server.page_url(f"#/compare?runs={','.join(runs)}&smooth=0.6"))
    wait_until(
        lambda: (view_state(page) or {}).get("settled") and view_state(page)["charts"],
        message="charts",
    )
    page.wait_for_function(
        "(n) => { const p = document.querySelector('[data-metric=\"_parallel\"]');"
        " return p.data && p.data[0].dimensions[0].values.length === n; }",
        arg=n,
    )
    time.sleep(1.0)  # let the last frames and resizes settle
    out = ROOT / "docs" / name
    page.screenshot(path=str(out), full_page=full)
    page.close()
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        runs.mkdir()
        for name, spec in COMPARE_RUNS.items():
            write_lightning_run(runs / f"{name}.jsonl", **spec)
        with sync_playwright() as p, serving(runs) as server:
            browser = launch(p)
            for shot in SHOTS:
                out = shoot(browser, server, *shot)
                print(f"{out} ({out.stat().st_size // 1024} KiB)")
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
