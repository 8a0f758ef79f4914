"""Make docs/dashboard.png: the dashboard on sample_runs/, served by a real `tailer serve`.

Run from the repository root: .venv/bin/python docs/make_screenshot.py [RUN_ID]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests._dashboard_helpers import copy_samples, launch, serving, view_state, wait_until  # noqa: E402


def main() -> int:
    run_id = sys.argv[1] if len(sys.argv) > 1 else "centralized-digits"
    out = ROOT / "docs" / "dashboard.png"
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        copy_samples(runs)
        with sync_playwright() as p, serving(runs) as server:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1280, "height": 800}, color_scheme="light")
            page.goto(server.page_url(f"#/runs/{run_id}"))
            wait_until(lambda: (view_state(page) or {}).get("charts"), message="charts")
            page.wait_for_function("() => document.querySelectorAll('.plot .main-svg').length > 3")
            time.sleep(1.0)  # let the last frames and resizes settle
            page.screenshot(path=str(out))
            browser.close()
    print(f"{out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
