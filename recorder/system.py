"""System metrics: a background thread that records ``system_metrics`` at an interval.

Off by default. :class:`SystemMetricsSampler` (or
:meth:`recorder.MetricsRecorder.start_system_metrics`, or
``RecorderCallback(system_metrics=...)``) samples, every ``interval``
seconds, on its own daemon thread::

    {"type": "system_metrics", "data": {"host": "node-3", "rank": 0, "metrics": {
        "cpu_percent": 37.5, "ram_percent": 41.0, "ram_used_bytes": ..., "process_rss_bytes": ...,
        "process_cpu_percent": ..., "disk_read_bytes_per_s": ..., "disk_write_bytes_per_s": ...,
        "net_sent_bytes_per_s": ..., "net_recv_bytes_per_s": ...,
        "gpu": {"0": {"utilization_percent": 98, "memory_used_bytes": ..., "memory_total_bytes": ...,
                      "temperature_c": 61, "power_w": 312.4,
                      "torch_allocated_bytes": ..., "torch_reserved_bytes": ...}}}}}

``read_metrics`` names these ``cpu_percent``, ``gpu.0.power_w`` and so on.
Rates are per second over the last interval (absent from the first sample).

The host figures come from psutil, the GPU figures from NVML (the
``nvidia-ml-py`` package, module ``pynvml``) and, for processes that already
use CUDA through torch, torch's allocator. Both packages are optional (the
``runtail[system]`` extra): ``import recorder`` imports neither, and they are
loaded when a sampler starts. Without psutil the sampler refuses to start
(:class:`ImportError` naming the extra); without NVML, a driver or a GPU the
GPU part is left out, silently.

The training thread never waits for a sample: the sampler only takes the
recorder's lock for the one ``os.write`` of its line, like any other message.
A figure that cannot be read is left out of that sample; an error in a
sample is logged once and never stops training.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from typing import Any

__all__ = ["DEFAULT_INTERVAL", "SystemMetricsSampler"]

log = logging.getLogger("recorder")

#: Seconds between samples unless told otherwise.
DEFAULT_INTERVAL = 10.0
MESSAGE_TYPE = "system_metrics"


def require_psutil() -> Any:
    try:
        import psutil
    except ImportError:
        raise ImportError(
            "system metrics need psutil: pip install 'runtail[system]' (psutil, nvidia-ml-py)"
        ) from None
    return psutil


class _Nvml:
    """Per-GPU figures from NVML; :attr:`handles` is empty where there is no GPU or driver."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self.nvml = pynvml
        except Exception:  # no package, no library, no driver, no device: no GPU part
            self.handles = []

    def sample(self) -> dict[str, dict[str, float]]:
        nvml = self.nvml
        out: dict[str, dict[str, float]] = {}
        for index, handle in enumerate(self.handles):
            gpu: dict[str, float] = {}
            _read(
                gpu,
                "utilization_percent",
                lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h).gpu,
            )
            memory = _call(lambda h=handle: nvml.nvmlDeviceGetMemoryInfo(h))
            if memory is not None:
                gpu["memory_used_bytes"] = memory.used
                gpu["memory_total_bytes"] = memory.total
            _read(
                gpu,
                "temperature_c",
                lambda h=handle: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU),
            )
            _read(gpu, "power_w", lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0)
            out[str(index)] = gpu
        return out

    def close(self) -> None:
        if self.nvml is not None:
            _call(self.nvml.nvmlShutdown)
            self.nvml = None


def _call(read: Any) -> Any:
    try:
        return read()
    except Exception:  # one figure a device does not support (power on some boards)
        return None


def _read(into: dict[str, float], name: str, read: Any) -> None:
    value = _call(read)
    if value is not None:
        into[name] = value


def _torch_cuda() -> dict[str, dict[str, float]]:
    """torch's CUDA allocator figures, where the process already uses CUDA through torch."""
    torch = sys.modules.get("torch")  # never imported here: only if training already did
    cuda = getattr(torch, "cuda", None)
    if cuda is None or not _call(cuda.is_initialized):
        return {}
    out: dict[str, dict[str, float]] = {}
    for index in range(_call(cuda.device_count) or 0):
        figures: dict[str, float] = {}
        _read(figures, "torch_allocated_bytes", lambda i=index: cuda.memory_allocated(i))
        _read(figures, "torch_reserved_bytes", lambda i=index: cuda.memory_reserved(i))
        out[str(index)] = figures
    return out


class SystemMetricsSampler:
    """Record ``system_metrics`` through ``recorder`` every ``interval`` seconds, on a thread.

    Args:
        recorder: The :class:`recorder.MetricsRecorder` to write through. On a
            rank that does not write (``recorder.enabled`` false) nothing is
            sampled.
        interval: Seconds between samples (at least 0.01).
        gpu: Include NVML's per-GPU figures and torch's CUDA memory.

    Use :meth:`start` and :meth:`stop` (or ``with``). Closing the recorder
    stops a sampler started with :meth:`recorder.MetricsRecorder.start_system_metrics`.
    """

    def __init__(
        self, recorder: Any, interval: float = DEFAULT_INTERVAL, *, gpu: bool = True
    ) -> None:
        interval = float(interval)
        if not interval >= 0.01:
            raise ValueError(f"interval must be at least 0.01 s, not {interval!r}")
        self.recorder = recorder
        self.interval = interval
        self.gpu = gpu
        self.host = socket.gethostname()
        self.samples = 0
        self._psutil = require_psutil()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: _Nvml | None = None
        self._process: Any = None
        self._last: tuple[float, Any, Any] | None = None
        self._warned = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> SystemMetricsSampler:
        """Start sampling (idempotent); returns ``self``."""
        if self._thread is not None or not getattr(self.recorder, "enabled", True):
            return self
        self._thread = threading.Thread(
            target=self._run, name="runtail-system-metrics", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sampling and wait (up to ``timeout`` s) for the thread to end. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    close = stop

    def __enter__(self) -> SystemMetricsSampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        try:
            self._prime()
            while not self._stop.wait(self.interval):
                if getattr(self.recorder, "closed", False):
                    break
                self.sample_once()
        except Exception as exc:  # never into training; one line in the log
            log.warning("runtail: system metrics stopped: %r", exc, exc_info=True)
        finally:
            if self._nvml is not None:
                self._nvml.close()

    def _prime(self) -> None:
        """The first readings, so that CPU percentages and rates cover the first interval."""
        psutil = self._psutil
        self._process = psutil.Process()
        psutil.cpu_percent(None)
        self._process.cpu_percent(None)
        self._last = (
            time.monotonic(),
            _call(psutil.disk_io_counters),
            _call(psutil.net_io_counters),
        )
        if self.gpu:
            self._nvml = _Nvml()

    def collect(self) -> dict[str, Any]:
        """One sample's ``metrics`` (the sampler must have started, or :meth:`sample_once` run)."""
        if self._process is None:
            self._prime()
        psutil = self._psutil
        metrics: dict[str, Any] = {"cpu_percent": psutil.cpu_percent(None)}
        memory = _call(psutil.virtual_memory)
        if memory is not None:
            metrics["ram_percent"] = memory.percent
            metrics["ram_used_bytes"] = memory.total - memory.available
            metrics["ram_total_bytes"] = memory.total
        info = _call(self._process.memory_info)
        if info is not None:
            metrics["process_rss_bytes"] = info.rss
        _read(metrics, "process_cpu_percent", lambda: self._process.cpu_percent(None))
        now, disk, net = (
            time.monotonic(),
            _call(psutil.disk_io_counters),
            _call(psutil.net_io_counters),
        )
        if self._last is not None:
            then, disk0, net0 = self._last
            seconds = now - then
            if seconds > 0:
                if disk is not None and disk0 is not None:
                    metrics["disk_read_bytes_per_s"] = (
                        disk.read_bytes - disk0.read_bytes
                    ) / seconds
                    metrics["disk_write_bytes_per_s"] = (
                        disk.write_bytes - disk0.write_bytes
                    ) / seconds
                if net is not None and net0 is not None:
                    metrics["net_sent_bytes_per_s"] = (net.bytes_sent - net0.bytes_sent) / seconds
                    metrics["net_recv_bytes_per_s"] = (net.bytes_recv - net0.bytes_recv) / seconds
        self._last = (now, disk, net)
        if self.gpu:
            gpus = self._nvml.sample() if self._nvml is not None else {}
            for index, figures in _torch_cuda().items():
                gpus.setdefault(index, {}).update(figures)
            if gpus:
                metrics["gpu"] = gpus
        return metrics

    def sample_once(self) -> bool:
        """Take one sample now and record it; returns whether it was written."""
        try:
            metrics = self.collect()
        except Exception as exc:
            if not self._warned:
                self._warned = True
                log.warning("runtail: a system metrics sample failed: %r", exc)
            return False
        self.samples += 1
        data = {"host": self.host, "rank": getattr(self.recorder, "rank", 0), "metrics": metrics}
        return bool(self.recorder.record(MESSAGE_TYPE, data))
