"""Test-wide settings."""

from __future__ import annotations

import os
import tempfile

import pytest


@pytest.fixture(autouse=True, scope="session")
def _state_home():
    """Every `tailer serve` the tests start keeps its session state in a temporary
    XDG_STATE_HOME (subprocesses inherit it), never in the developer's ~/.local/state."""
    with tempfile.TemporaryDirectory(prefix="runtail-state-") as state:
        previous = os.environ.get("XDG_STATE_HOME")
        os.environ["XDG_STATE_HOME"] = state
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("XDG_STATE_HOME", None)
            else:
                os.environ["XDG_STATE_HOME"] = previous


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright (one per test module)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests._dashboard_helpers import launch

    with sync_api.sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()
