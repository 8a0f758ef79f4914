"""Helpers for the dashboard's browser tests: a real `tailer serve`, Chromium, fixture runs."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from recorder.format import INDEX_KEYS, encode_message

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_runs"
ARTIFACTS = ROOT / "test-artifacts"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = ""):
    """Call `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s: {message} (last value: {last!r})")


def serve_command() -> list[str]:
    """The command a person runs: `python -m tailer serve`."""
    return [sys.executable, "-m", "tailer", "serve"]


class Server:
    """`python -m tailer serve DIR --port P` as a subprocess; restartable on the same port."""

    def __init__(self, directory: Path, token: str | None = None, port: int | None = None):
        self.directory = directory
        self.token = token
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log = ARTIFACTS / f"serve-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def page_url(self, fragment: str = "") -> str:
        query = f"?token={self.token}" if self.token else ""
        return f"{self.url}{query}{fragment}"

    def start(self) -> Server:
        ARTIFACTS.mkdir(exist_ok=True)
        cmd = [*self.command(), "--port", str(self.port)]
        if self.token:
            cmd += ["--token", self.token]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("TAILER_TOKEN", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        wait_until(
            self._healthy, timeout=20, message=f"tailer serve on port {self.port} (log {self.log})"
        )
        return self

    def command(self) -> list[str]:
        return [*serve_command(), str(self.directory)]

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"tailer serve exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
            )
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s,
        ):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
        return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def kill(self) -> None:
        """Stop the server abruptly, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None


class ReplayServer(Server):
    """`python -m tailer replay FILE --speed S --port P` as a subprocess."""

    def __init__(self, path: Path, speed: float, token: str | None = None):
        super().__init__(path, token=token)
        self.speed = speed

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tailer",
            "replay",
            str(self.directory),
            "--speed",
            str(self.speed),
        ]


@contextlib.contextmanager
def serving(directory: Path, token: str | None = None) -> Iterator[Server]:
    server = Server(directory, token=token).start()
    try:
        yield server
    finally:
        server.stop()


class ConsoleWatch:
    """Collect console errors and uncaught page errors of a Playwright page."""

    def __init__(self, page, allowed: tuple[str, ...] = ()):
        self.errors: list[str] = []
        self.allowed = allowed
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, msg) -> None:
        if msg.type == "error" and not any(re.search(p, msg.text) for p in self.allowed):
            self.errors.append(f"console.error: {msg.text}")

    def check(self) -> None:
        assert not self.errors, "browser errors:\n" + "\n".join(self.errors)


@pytest.fixture(scope="module", name="browser")
def browser_fixture():
    """One headless Chromium (Debian's) for a test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture(name="page_factory")
def page_factory_fixture(browser):
    """make(width=, height=, scheme=, allowed=) -> (page, ConsoleWatch), each in its own context."""
    contexts = []

    def make(*, width=1280, height=900, scheme="light", allowed=()):
        context = browser.new_context(
            viewport={"width": width, "height": height}, color_scheme=scheme, accept_downloads=True
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15000)
        return page, ConsoleWatch(page, allowed)

    yield make
    for context in contexts:
        context.close()


def launch(playwright):
    return playwright.chromium.launch(
        executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
    )


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# ---------------------------------------------------------------- page state


def view_state(page):
    return page.evaluate("() => window.__runtail && window.__runtail.view()")


def runs_state(page):
    return page.evaluate("() => window.__runtail ? window.__runtail.runs() : []")


def chart_points(page) -> dict[str, dict[str, tuple[int, int]]]:
    """{chart id: {trace: (points in the model, points in the Plotly figure)}}."""
    state = view_state(page)
    if not state:
        return {}
    return {
        cid: {name: (t["points"], t["drawn"]) for name, t in chart["traces"].items()}
        for cid, chart in state["charts"].items()
    }


# ---------------------------------------------------------------- expected data from files


PHASES = ["train", "training", "val", "valid", "validation", "test", "predict"]
ALIASES = {"training": "train", "valid": "val", "validation": "val"}


def read_messages(path: Path) -> list[dict]:
    out = []
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and isinstance(msg.get("type"), str):
            out.append(msg)
    return out


def _numeric(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or value in (
        "NaN",
        "Infinity",
        "-Infinity",
    )


def _split_phase(name: str, known: str | None = None) -> tuple[str | None, str]:
    for phase in ([known] if known else []) + PHASES:
        for sep in "_/.":
            if len(name) > len(phase) + 1 and name.startswith(phase + sep):
                return ALIASES.get(phase, phase), name[len(phase) + 1 :]
            if len(name) > len(phase) + 1 and name.endswith(sep + phase):
                return ALIASES.get(phase, phase), name[: -(len(phase) + 1)]
    return None, name


OPTIMIZER_NAME = re.compile(
    r"(^|[-_/.])(lr|learning[-_]?rate|momentum|weight[-_]?decay|betas?\d?)($|[-_/.])", re.I
)


def _phase(phase: str | None) -> str:
    p = str(phase or "").lower()
    return ALIASES.get(p, p) or "train"


def _line_name(phase: str | None, granularity: str, client: str | None) -> str:
    name = phase or "value"
    if granularity == "step" and phase is not None and phase not in ("val", "test"):
        name = f"{phase} (batch)"
    if granularity == "step" and phase is None:
        name = "batch"
    return f"client {client} {name}" if client else name


class _Charts:
    """{chart id: {line: points}} as the page builds them, each line fed by one message type."""

    def __init__(self) -> None:
        self.charts: dict[str, dict[str, int]] = {}
        self.sources: dict[tuple[str, str], str] = {}

    def point(self, chart: str, line: str, source: str | None = None) -> None:
        if source is not None:
            first = self.sources.setdefault((chart, line), source)
            if first != source:
                return
        traces = self.charts.setdefault(chart, {})
        traces[line] = traces.get(line, 0) + 1

    def metric(self, raw: str, known: str | None, granularity: str, client, source) -> None:
        if OPTIMIZER_NAME.search(raw):
            self.point(f"optim:{raw}", f"client {client}" if client else raw, source)
            return
        phase, base = _split_phase(raw, known)
        phase = _phase(phase) if phase else (_phase(known) if known else None)
        if phase is None and granularity == "step":
            phase = "train"
        self.point(f"metrics:{base}", _line_name(phase, granularity, client), source)


def expected_charts(path: Path, sections: tuple[str, ...] = ("metrics", "optim")) -> dict:
    """{"<section>:<metric>": {line: points}}: one chart per metric whatever path logged it."""
    out = _Charts()
    for msg in read_messages(path):
        kind = msg["type"]
        data = msg.get("data") or {}
        if not isinstance(data, dict):
            continue
        client = str(data["client_id"]) if data.get("client_id") is not None else None
        if kind == "epoch_end":
            known = _phase(data.get("phase"))
            for name, value in (data.get("metrics") or {}).items():
                if name not in INDEX_KEYS and _numeric(value):
                    out.metric(name, known, "epoch", None, "epoch_end")
        elif kind == "metrics":
            for name, value in (data.get("metrics") or {}).items():
                if name in INDEX_KEYS or not _numeric(value):
                    continue
                base, granularity = name, None
                if name.endswith("_epoch") and len(name) > 6:
                    base, granularity = name[:-6], "epoch"
                elif name.endswith("_step") and len(name) > 5:
                    base, granularity = name[:-5], "step"
                if granularity is None:
                    phase, _ = _split_phase(base)
                    granularity = "epoch" if phase and _phase(phase) != "train" else "step"
                out.metric(base, None, granularity, client, "metrics")
        elif kind == "batch_metrics":
            for name, value in data.items():
                if name not in INDEX_KEYS and _numeric(value):
                    out.metric(name, "train", "step", client, "batch_metrics")
        elif kind == "lr_update" and _numeric(data.get("current_lr")):
            sched = data.get("scheduler_type")
            out.point("optim:lr", f"lr ({sched})" if sched else "lr")
        elif kind == "gradient_stats":
            for key in ("total_norm", "max_norm", "min_norm"):
                if _numeric(data.get(key)):
                    out.point("optim:grad_norm", key)
    return {k: v for k, v in out.charts.items() if k.split(":")[0] in sections}


def expected_round_charts(path: Path) -> dict[str, dict[str, int]]:
    """{"round:<metric>": {stage line: points}} for round_end and round_metrics messages."""
    charts: dict[str, dict[str, int]] = {}
    for msg in read_messages(path):
        data = msg.get("data") or {}
        if msg["type"] == "round_end":
            groups = [("fit", data.get("fit_metrics")), ("eval", data.get("eval_metrics"))]
        elif msg["type"] == "round_metrics":
            groups = [("server", data.get("metrics"))]
        else:
            continue
        if not isinstance(data.get("round"), (int, float)):
            continue
        for stage, metrics in groups:
            for name, value in (metrics or {}).items():
                if name in INDEX_KEYS or name == "num-examples" or not _numeric(value):
                    continue
                phase, base = _split_phase(name, "eval" if stage == "eval" else None)
                trace = stage if not phase or phase == stage else f"{stage} {phase}"
                traces = charts.setdefault(f"round:{base}", {})
                traces[trace] = traces.get(trace, 0) + 1
    return charts


def copy_samples(dest: Path) -> list[Path]:
    """Copy sample_runs/*.jsonl into `dest`; returns the copies."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sorted(SAMPLES.glob("*.jsonl")):
        target = dest / src.name
        shutil.copyfile(src, target)
        out.append(target)
    return out


# ---------------------------------------------------------------- fixture runs


def ts(i: int) -> str:
    return f"2025-10-22T11:{10 + i // 60:02d}:{i % 60:02d}.000000Z"


def write_centralized(path: Path, epochs: int = 4, batches_per_epoch: int = 5) -> None:
    i = 0
    lines = [
        encode_message(
            "training_mode",
            {"is_federated": False, "num_rounds": 0, "num_clients": 0},
            timestamp=ts(i),
        ),
        encode_message(
            "training_start", {"run_id": path.stem, "max_epochs": epochs}, timestamp=ts(i)
        ),
        encode_message("status", {"status": "running", "message": "training"}, timestamp=ts(i)),
    ]
    step = 0
    for epoch in range(epochs):
        i += 1
        lines.append(
            encode_message("epoch_start", {"epoch": epoch, "total_epochs": epochs}, timestamp=ts(i))
        )
        for b in range(batches_per_epoch):
            step += 1
            lines.append(
                encode_message(
                    "batch_metrics",
                    {
                        "step": step,
                        "batch_idx": b,
                        "loss": 2.0 / step,
                        "accuracy": step / 100,
                        "epoch": epoch,
                    },
                    timestamp=ts(i),
                )
            )
        for phase in ("train", "val"):
            lines.append(
                encode_message(
                    "epoch_end",
                    {
                        "epoch": epoch,
                        "phase": phase,
                        "metrics": {
                            f"{phase}_loss": 1.0 / (epoch + 1),
                            f"{phase}_acc": 0.5 + epoch / 10,
                        },
                    },
                    timestamp=ts(i),
                )
            )
    lines.append(
        encode_message(
            "training_end", {"run_id": path.stem, "best_val_acc": 0.8}, timestamp=ts(i + 1)
        )
    )
    lines.append(
        encode_message("status", {"status": "completed", "message": "done"}, timestamp=ts(i + 1))
    )
    path.write_bytes(b"".join(lines))


def write_failed(path: Path) -> None:
    lines = [
        encode_message("training_start", {}, timestamp=ts(0)),
        encode_message(
            "epoch_end", {"epoch": 0, "phase": "train", "metrics": {"loss": "NaN"}}, timestamp=ts(1)
        ),
        encode_message(
            "error",
            {
                "error": "loss became NaN",
                "error_type": "FloatingPointError",
                "traceback": "Traceback (most recent call last):\n  File x\nFloatingPointError: loss became NaN",
            },
            timestamp=ts(2),
        ),
        encode_message(
            "status", {"status": "failed", "message": "loss became NaN"}, timestamp=ts(2)
        ),
    ]
    path.write_bytes(b"".join(lines))


def write_running(path: Path, epochs: int = 2) -> None:
    lines = [encode_message("training_start", {}, timestamp=ts(0))]
    for epoch in range(epochs):
        lines.append(
            encode_message(
                "epoch_end",
                {"epoch": epoch, "phase": "train", "metrics": {"loss": 1.0 / (epoch + 1)}},
                timestamp=ts(epoch + 1),
            )
        )
    path.write_bytes(b"".join(lines))


def write_federated(path: Path, rounds: int = 3, clients: int = 2) -> None:
    lines = [
        encode_message(
            "training_mode",
            {"is_federated": True, "num_rounds": rounds, "num_clients": clients},
            timestamp=ts(0),
        ),
        encode_message("training_start", {}, timestamp=ts(0)),
    ]
    for r in range(1, rounds + 1):
        lines.append(
            encode_message("round_start", {"round": r, "total_rounds": rounds}, timestamp=ts(r))
        )
        for c in range(clients):
            cid = str(18446744073709551000 + c)
            lines.append(
                encode_message(
                    "local_epoch",
                    {
                        "client_id": cid,
                        "round": r,
                        "local_epoch": 0,
                        "metrics": {"loss": 1 / r + c / 10},
                    },
                    timestamp=ts(r),
                )
            )
            lines.append(
                encode_message(
                    "client_complete",
                    {
                        "round": r,
                        "client_id": cid,
                        "metrics": {"train_loss": 1 / r + c / 10},
                        "num_examples": 100,
                    },
                    timestamp=ts(r),
                )
            )
        lines.append(
            encode_message(
                "round_end",
                {
                    "round": r,
                    "total_rounds": rounds,
                    "fit_metrics": {"loss": 1 / r},
                    "eval_metrics": {"loss": 1.1 / r, "accuracy": r / 4},
                },
                timestamp=ts(r),
            )
        )
        lines.append(
            encode_message(
                "round_metrics",
                {"round": r, "total_rounds": rounds, "metrics": {"accuracy": r / 5}},
                timestamp=ts(r),
            )
        )
    lines.append(encode_message("training_end", {}, timestamp=ts(rounds + 1)))
    lines.append(
        encode_message("status", {"status": "completed", "message": ""}, timestamp=ts(rounds + 1))
    )
    path.write_bytes(b"".join(lines))


def write_lightning_run(
    path: Path, *, lr: float, hidden: int, epochs: int, batches: int, scale: float = 1.0
):
    """A Lightning-like run: hparams, noisy batch losses, a constant lr-Adam, train/val epoch values with step."""
    lines = [
        encode_message(
            "training_start",
            {
                "experiment_id": path.stem,
                "max_epochs": epochs,
                "hparams": {"lr": lr, "hidden": hidden},
            },
            timestamp=ts(0),
        ),
        encode_message("status", {"status": "running"}, timestamp=ts(0)),
    ]
    step = 0
    for epoch in range(epochs):
        lines.append(
            encode_message(
                "epoch_start", {"epoch": epoch, "total_epochs": epochs}, timestamp=ts(step)
            )
        )
        for b in range(batches):
            step += 1
            loss = scale * (2.0 / math.sqrt(step) + 0.15 * math.sin(step * 2.7) ** 2)
            lines.append(
                encode_message(
                    "batch_metrics",
                    {"step": step, "batch_idx": b, "loss": loss, "epoch": epoch},
                    timestamp=ts(step),
                )
            )
            lines.append(
                encode_message(
                    "metrics", {"step": step, "metrics": {"lr-Adam": 0.001}}, timestamp=ts(step)
                )
            )
        for phase in ("train", "val"):
            lines.append(
                encode_message(
                    "epoch_end",
                    {
                        "epoch": epoch,
                        "phase": phase,
                        "step": step,
                        "metrics": {
                            "loss": scale / (epoch + 1) + (0.1 if phase == "val" else 0),
                            "acc": 0.5 + epoch / 20,
                        },
                    },
                    timestamp=ts(step),
                )
            )
    lines.append(encode_message("training_end", {}, timestamp=ts(step + 1)))
    lines.append(encode_message("status", {"status": "completed"}, timestamp=ts(step + 1)))
    path.write_bytes(b"".join(lines))


COMPARE_RUNS = {
    "alpha": {"lr": 0.01, "hidden": 64, "epochs": 4, "batches": 30, "scale": 1.0},
    "beta": {"lr": 0.1, "hidden": 64, "epochs": 3, "batches": 36, "scale": 0.5},
    "gamma": {"lr": 0.03, "hidden": 64, "epochs": 4, "batches": 24, "scale": 0.8},
    "delta": {"lr": 0.01, "hidden": 128, "epochs": 2, "batches": 30, "scale": 1.2},
    "epsilon": {"lr": 0.3, "hidden": 32, "epochs": 3, "batches": 18, "scale": 0.3},
}


def plotly_call_hook(
    after: str, methods: tuple[str, ...] = ("newPlot",), on_define: str = ""
) -> str:
    """An init script that wraps ``Plotly.<method>`` for each of ``methods`` as soon as plotly
    defines ``window.Plotly``: after every call, ``after`` (JavaScript statements seeing
    ``name``, ``el`` and ``started``, the call's ``performance.now()``) runs; ``on_define``
    runs once, when plotly is defined."""
    script = """
let plotly;
Object.defineProperty(window, "Plotly", {
  configurable: true,
  get() { return plotly; },
  set(value) {
    plotly = value;
    if (!value || value.__runtailHooked) return;
    for (const name of __METHODS__) {
      const original = value[name];
      value[name] = function (el, ...rest) {
        const started = performance.now();
        const out = original.call(this, el, ...rest);
        __AFTER__
        return out;
      };
    }
    value.__runtailHooked = true;
    __ON_DEFINE__
  },
});
"""
    return (
        script.replace("__METHODS__", json.dumps(list(methods)))
        .replace("__AFTER__", after)
        .replace("__ON_DEFINE__", on_define)
    )
