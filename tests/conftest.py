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
