"""recorder.system: opt-in ``system_metrics`` sampled on a background thread (DESIGN §10)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from recorder import MetricsRecorder
from recorder.system import SystemMetricsSampler
from replay import read_metrics
from tests._recorder_helpers import read_messages
from tests._replay_helpers import ROOT

THREAD = "runtail-system-metrics"


def wait_for_lines(path: Path, kind: str, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in read_messages(path) if m["type"] == kind] if path.exists() else []
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD]


def fake_nvml(power_fails_on: int | None = None, init_error: bool = False) -> types.ModuleType:
    """A stand-in for nvidia-ml-py's ``pynvml`` with two GPUs (this machine has none)."""
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init() -> None:
        if init_error:
            raise NVMLError("NVML Shared Library Not Found")

    def power(handle: int) -> int:
        if handle == power_fails_on:
            raise NVMLError("Not Supported")
        return 250_500 + handle  # milliwatts

    nvml.NVMLError = NVMLError  # type: ignore[attr-defined]
    nvml.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    nvml.nvmlInit = init  # type: ignore[attr-defined]
    nvml.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=90 + h, memory=5)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        used=(h + 1) * 2**30, total=80 * 2**30, free=0
    )
    nvml.nvmlDeviceGetTemperature = lambda h, sensor: 60 + h  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetPowerUsage = power  # type: ignore[attr-defined]
    return nvml


def test_recorder_samples_until_close(tmp_path: Path) -> None:
    """start_system_metrics writes system_metrics {host, rank, metrics} on a thread; close() stops it."""
    recorder = MetricsRecorder(tmp_path, "sys", rank=0)
    sampler = recorder.start_system_metrics(interval=0.05, gpu=False)
    assert sampler.running and len(sampler_threads()) >= 1
    lines = wait_for_lines(recorder.path, "system_metrics", 3)
    recorder.close()
    assert not sampler.running  # stopped and joined by close()
    assert recorder.lost == 0
    count = len(wait_for_lines(recorder.path, "system_metrics", 0))
    time.sleep(0.2)
    assert len(wait_for_lines(recorder.path, "system_metrics", 0)) == count  # nothing after close
    assert len(lines) >= 3
    data = lines[0]["data"]
    assert set(data) == {"host", "rank", "metrics"} and data["rank"] == 0 and data["host"]
    metrics = data["metrics"]
    for name in ("cpu_percent", "ram_percent", "ram_used_bytes", "process_rss_bytes"):
        assert isinstance(metrics[name], (int, float)), name
    assert metrics["process_rss_bytes"] > 10 * 2**20  # this Python process, pandas loaded
    assert 0 <= metrics["cpu_percent"] <= 100
    assert "net_sent_bytes_per_s" in metrics and metrics["net_sent_bytes_per_s"] >= 0
    assert "gpu" not in metrics  # gpu=False

    table = read_metrics(recorder.path)
    names = set(table["metric"])
    assert {"cpu_percent", "ram_percent", "process_rss_bytes"} <= names
    assert "rank" not in names  # an index, not a value


def test_per_gpu_figures_from_nvml_and_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each GPU: utilisation, memory, temperature, power (W); a figure a board lacks is left out;
    torch's allocator figures join where CUDA is already in use."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(power_fails_on=1))
    cuda = types.SimpleNamespace(
        is_initialized=lambda: True,
        device_count=lambda: 2,
        memory_allocated=lambda i: 1000 + i,
        memory_reserved=lambda i: 2000 + i,
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    recorded: list[tuple[str, Any]] = []
    target = types.SimpleNamespace(rank=3, record=lambda t, d: recorded.append((t, d)) or True)
    sampler = SystemMetricsSampler(target, 1.0)
    assert sampler.sample_once()
    kind, data = recorded[0]
    assert kind == "system_metrics" and data["rank"] == 3
    gpus = data["metrics"]["gpu"]
    assert gpus["0"] == {
        "utilization_percent": 90,
        "memory_used_bytes": 2**30,
        "memory_total_bytes": 80 * 2**30,
        "temperature_c": 60,
        "power_w": 250.5,
        "torch_allocated_bytes": 1000,
        "torch_reserved_bytes": 2000,
    }
    assert "power_w" not in gpus["1"] and gpus["1"]["temperature_c"] == 61


def test_no_gpu_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an NVML library (or package), and without CUDA in use, samples have no gpu part."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(init_error=True))
    monkeypatch.setitem(sys.modules, "torch", None)
    recorded: list[Any] = []
    sampler = SystemMetricsSampler(
        types.SimpleNamespace(rank=0, record=lambda t, d: recorded.append(d)), 1
    )
    sampler.sample_once()
    assert "gpu" not in recorded[0]["metrics"] and "cpu_percent" in recorded[0]["metrics"]
    monkeypatch.setitem(sys.modules, "pynvml", None)  # package not installed
    SystemMetricsSampler(
        types.SimpleNamespace(rank=0, record=lambda t, d: recorded.append(d)), 1
    ).sample_once()
    assert "gpu" not in recorded[1]["metrics"]


def test_a_rank_that_does_not_write_samples_nothing(tmp_path: Path) -> None:
    """On rank 1 without per_rank the recorder writes nothing, and the sampler never starts."""
    with MetricsRecorder(tmp_path, "quiet", rank=1) as recorder:
        sampler = recorder.start_system_metrics(interval=0.01)
        assert not sampler.running
    assert list(tmp_path.iterdir()) == []


def test_errors_in_a_sample_never_reach_training(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing figure source: the sample is dropped, logged once, and the thread keeps going."""
    recorder = MetricsRecorder(tmp_path, "flaky")
    sampler = SystemMetricsSampler(recorder, 0.02, gpu=False)

    class Broken:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("psutil exploded")

    sampler.start()
    wait_for_lines(recorder.path, "system_metrics", 1)
    with caplog.at_level(logging.WARNING, logger="recorder"):
        sampler._psutil = Broken()
        time.sleep(0.2)
        assert sampler.running
    sampler.stop()
    recorder.close()
    assert sum("system metrics sample failed" in r.message for r in caplog.records) == 1


def test_interval_is_checked_and_psutil_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad interval is a ValueError; without psutil an ImportError names the extra."""
    target = types.SimpleNamespace(rank=0, record=lambda t, d: True)
    with pytest.raises(ValueError, match="interval"):
        SystemMetricsSampler(target, 0)
    monkeypatch.setitem(sys.modules, "psutil", None)
    with pytest.raises(ImportError, match=r"runtail\[system\]"):
        SystemMetricsSampler(target, 1)


def test_import_recorder_loads_neither_psutil_nor_nvml() -> None:
    """psutil and NVML load only when a sampler starts."""
    code = (
        "import sys, recorder, tempfile\n"
        "r = recorder.MetricsRecorder(tempfile.mkdtemp(), 'x'); r.send_status('running'); r.close()\n"
        "print(sorted(m for m in ('psutil', 'pynvml', 'torch') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*")
def test_recorder_callback_samples_during_fit(tmp_path: Path) -> None:
    """RecorderCallback(system_metrics=S) samples from setup to teardown, then stops."""
    pytest.importorskip("torch")
    from recorder import RecorderCallback
    from tests._recorder_helpers import import_pl, make_loader, make_module, make_trainer

    pl = import_pl("lightning.pytorch")
    callback = RecorderCallback(tmp_path, "fit", system_metrics=0.01)
    trainer = make_trainer(pl, callbacks=[callback])
    before = len(sampler_threads())
    trainer.fit(make_module(pl), make_loader(n=256), make_loader(seed=1))
    assert len(sampler_threads()) == before  # stopped at teardown
    kinds = [m["type"] for m in read_messages(tmp_path / "fit.jsonl")]
    assert "system_metrics" in kinds and kinds[0] == "training_start"
    assert kinds.index("system_metrics") < kinds.index("training_end")
    with pytest.raises(ValueError, match="interval"):
        RecorderCallback(tmp_path, "bad", system_metrics=-1)
