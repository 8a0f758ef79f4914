"""Run files for the replay and export tests, written with the recorder's own encoder."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from recorder.format import encode_message, format_timestamp

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_RUNS = ROOT / "sample_runs"
START = 1_761_131_416.0  # 2025-10-22T11:10:16Z


def line(
    kind: str, data: Any = None, *, at: float = 0.0, extra: dict[str, Any] | None = None
) -> bytes:
    """One encoded message, ``at`` seconds after :data:`START`."""
    return encode_message(kind, data, timestamp=format_timestamp(START + at), extra=extra)


def write_run(path: Path, lines: Iterable[bytes]) -> Path:
    """Write ``lines`` (already encoded, or raw bytes for malformed ones) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return path


def mixed_run(path: Path, *, epochs: int = 3, rounds: int = 2) -> Path:
    """A run with every kind of message the naming rules care about."""
    lines = [
        line("training_start", {"model": "mlp"}, at=0),
        line("status", {"status": "running", "message": "Training started"}, at=0.01),
    ]
    at = 0.0
    for epoch in range(epochs):
        for step in range(2):
            at += 0.05
            lines.append(
                line(
                    "batch_metrics",
                    {
                        "step": epoch * 2 + step,
                        "batch_idx": step,
                        "loss": 1.0 / (epoch + step + 1),
                        "accuracy": 0.5,
                        "recall": None,
                        "f1": None,
                        "epoch": epoch,
                    },
                    at=at,
                )
            )
        for phase in ("train", "val"):
            at += 0.05
            lines.append(
                line(
                    "epoch_end",
                    {
                        "epoch": epoch,
                        "phase": phase,
                        "metrics": {"loss": 0.5 / (epoch + 1), "accuracy": 0.8},
                    },
                    at=at,
                )
            )
    for round_ in range(1, rounds + 1):
        at += 0.05
        lines.append(
            line(
                "round_end",
                {
                    "round": round_,
                    "total_rounds": rounds,
                    "fit_metrics": {"loss": 0.3},
                    "eval_metrics": {"loss": 0.4, "accuracy": 0.9},
                },
                at=at,
            )
        )
    lines.append(line("training_end", {"run_id": "r1", "best_loss": 0.1}, at=at + 0.05))
    lines.append(line("status", {"status": "completed", "message": ""}, at=at + 0.06))
    return write_run(path, lines)


def fresh_python(code: str, *args: object) -> str:
    """Run ``code`` in a new interpreter from the repository root; return its stdout."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout
