"""The tailer and replay packages' public surface, and that their lazy imports stay lazy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import replay
import tailer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", [tailer, replay], ids=["tailer", "replay"])
def test_every_name_in_all_resolves(package) -> None:
    """Each name in the package's __all__ loads from its submodule."""
    for name in package.__all__:
        assert getattr(package, name) is not None, name


@pytest.mark.parametrize("package", [tailer, replay], ids=["tailer", "replay"])
def test_unknown_attribute_raises(package) -> None:
    """A name outside __all__ raises AttributeError naming it."""
    with pytest.raises(AttributeError, match="NoSuchThing"):
        package.NoSuchThing  # noqa: B018


def _loaded_after(code: str) -> list[str]:
    probe = code + (
        "\nimport sys, json\n"
        "print(json.dumps([m for m in ('pyarrow', 'pandas', 'websockets', 'watchfiles')"
        " if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_replay_pacing_does_not_load_pyarrow() -> None:
    """The replay served by the tailer imports neither pyarrow nor pandas."""
    assert _loaded_after("import replay, replay.pacing") == []


def test_tailer_export_parser_does_not_load_the_server() -> None:
    """Building `tailer export`'s parser leaves websockets and watchfiles unimported."""
    loaded = _loaded_after("from tailer.cli import build_parser\nbuild_parser('export')")
    assert "websockets" not in loaded and "watchfiles" not in loaded


def test_tailer_serve_parser_does_not_load_pyarrow() -> None:
    """Building `tailer serve`'s parser leaves pyarrow and pandas unimported."""
    loaded = _loaded_after("from tailer.cli import build_parser\nbuild_parser('serve')")
    assert "pyarrow" not in loaded and "pandas" not in loaded
