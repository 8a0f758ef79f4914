"""The ServerApp: FedAvg wrapped in RecordingStrategy, with a centralised test evaluation.

:func:`make_server_app` builds the ServerApp that ``python -m
examples.flower_digits`` runs. The module-level ``app`` is the same app with
its settings read from the run config (``num-server-rounds``, ``num-clients``,
``log-dir``, ``experiment-id``, ``local-epochs``, ``lr``; defaults otherwise),
for loading by reference as Flower apps are (``examples.flower_digits.server_app:app``
with ``examples.flower_digits.client_app:app``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Result

from examples.flower_digits import task
from recorder.flower import RecordingStrategy, client_config


@dataclass
class Settings:
    """What one federated run does."""

    num_rounds: int = 5
    num_clients: int = 3
    log_dir: Path = Path("runs")
    experiment_id: str | None = None  # None: a new id such as federated-digits-20261126-...
    record: str = "all"  # "all", "server" (the strategy wrapper only) or "none" (no runtail)
    local_epochs: int = 2
    lr: float = 0.05
    batch_size: int = 32
    outcome: dict[str, Any] = field(default_factory=dict)  # filled in by the run


def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Centralised evaluation of the global model on the server's held-out digits."""
    torch.set_num_threads(1)
    model = task.DigitsMLP()
    model.load_state_dict(arrays.to_torch_state_dict())
    loss, accuracy = task.evaluate(model, task.test_set())
    return MetricRecord({"test_loss": loss, "test_acc": accuracy})


def run(grid: Grid, settings: Settings) -> Result:
    """Run ``settings.num_rounds`` rounds of FedAvg on ``grid``; record them unless told not to."""
    strategy: Any = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=settings.num_clients,
        min_evaluate_nodes=settings.num_clients,
        min_available_nodes=settings.num_clients,
    )
    train_config = ConfigRecord(
        {
            "local-epochs": settings.local_epochs,
            "lr": settings.lr,
            "batch-size": settings.batch_size,
        }
    )
    initial = ArrayRecord(task.DigitsMLP().state_dict())
    kwargs = dict(
        grid=grid,
        initial_arrays=initial,
        num_rounds=settings.num_rounds,
        train_config=train_config,
        evaluate_fn=evaluate_fn,
    )
    if settings.record not in ("all", "server", "none"):
        raise ValueError(f"record must be 'all', 'server' or 'none', not {settings.record!r}")
    if settings.record == "none":
        result = strategy.start(**kwargs)
        settings.outcome["result"] = result
        return result

    from recorder.recorder import MetricsRecorder, new_experiment_id

    experiment_id = settings.experiment_id or new_experiment_id("federated-digits")
    with MetricsRecorder(settings.log_dir, experiment_id) as recorder:
        settings.outcome["path"] = recorder.path
        recorder.record(
            "hparams",
            {
                "strategy": "FedAvg",
                "num_rounds": settings.num_rounds,
                "num_clients": settings.num_clients,
                "local_epochs": settings.local_epochs,
                "lr": settings.lr,
                "batch_size": settings.batch_size,
                "model": "MLP 64-64-10",
                "dataset": "sklearn load_digits",
            },
        )
        if settings.record == "all":
            # Tell the clients which file to record into (the same one, from their processes).
            train_config.update(client_config(recorder))
        recording = RecordingStrategy(strategy, recorder, num_clients=settings.num_clients)
        result = recording.start(**kwargs)
    settings.outcome["result"] = result
    return result


def make_server_app(settings: Settings) -> ServerApp:
    """A ServerApp that runs :func:`run` with ``settings``."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run(grid, settings)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Settings from the run config (for ``flwr run``), defaults otherwise."""
    config = context.run_config
    run(
        grid,
        Settings(
            num_rounds=int(config.get("num-server-rounds", 5)),
            num_clients=int(config.get("num-clients", 3)),
            log_dir=Path(str(config.get("log-dir", "runs"))),
            experiment_id=str(config["experiment-id"]) if "experiment-id" in config else None,
            local_epochs=int(config.get("local-epochs", 2)),
            lr=float(config.get("lr", 0.05)),
        ),
    )
