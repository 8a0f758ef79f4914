"""The recorder package's public surface, and that importing it stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import recorder
import recorder.format

ROOT = Path(__file__).resolve().parents[1]


def test_every_name_in_recorder_all_resolves() -> None:
    """Each name in recorder.__all__ is importable from the package (lazy ones included)."""
    for name in recorder.__all__:
        assert getattr(recorder, name) is not None, name


def test_every_name_in_format_all_resolves() -> None:
    """Each name in recorder.format.__all__ exists in the module."""
    for name in recorder.format.__all__:
        assert hasattr(recorder.format, name), name


def test_lazy_exports_come_from_their_modules() -> None:
    """MetricsRecorder, RecorderCallback and JsonlLogger are the classes of their submodules."""
    from recorder.lightning import JsonlLogger, RecorderCallback
    from recorder.recorder import MetricsRecorder

    assert recorder.MetricsRecorder is MetricsRecorder
    assert recorder.RecorderCallback is RecorderCallback
    assert recorder.JsonlLogger is JsonlLogger


def test_unknown_attributes_raise_attribute_error() -> None:
    """A missing name raises AttributeError naming it."""
    try:
        recorder.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_recorder_loads_no_torch_lightning_or_flower() -> None:
    """`import recorder` and recording a message leave torch, lightning and flwr unimported."""
    code = (
        "import sys, json, tempfile\n"
        "import recorder\n"
        "from recorder import MetricsRecorder\n"
        "with MetricsRecorder(tempfile.mkdtemp(), 'light') as rec:\n"
        "    rec.send_epoch_end(0, 'train', {'loss': 0.5})\n"
        "heavy = ['torch', 'lightning', 'pytorch_lightning', 'flwr', 'numpy']\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_submodule_all_names_resolve() -> None:
    """recorder.recorder.__all__ and recorder.lightning.__all__ name what the modules define."""
    import recorder.lightning
    import recorder.recorder

    for module in (recorder.recorder, recorder.lightning):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
