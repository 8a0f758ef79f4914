"""``python -m examples.flower_digits``: the federated digits run in Flower's local simulation.

One process runs the ServerApp (in a thread) and Ray runs the ClientApps in
worker processes; the server's RecordingStrategy and every client's
RecorderCallback append to the same ``<log-dir>/<experiment-id>.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Before flwr and ray load: no telemetry (nothing may reach the network), quiet Ray.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.flower_digits",
        description="Federated training of a small MLP on sklearn's digits with Flower and "
        "PyTorch Lightning, recorded by runtail.",
    )
    parser.add_argument("--rounds", type=_positive, default=5, help="federated rounds (5)")
    parser.add_argument("--clients", type=_positive, default=3, help="simulated clients (3)")
    parser.add_argument("--log-dir", type=Path, default=Path("runs"), help="run files (runs/)")
    parser.add_argument(
        "--experiment-id",
        default=None,
        help="the run's id and file stem (default: federated-digits-<time>-<random>)",
    )
    parser.add_argument("--local-epochs", type=_positive, default=2, help="epochs per round (2)")
    parser.add_argument("--lr", type=float, default=0.05, help="client SGD learning rate (0.05)")
    parser.add_argument(
        "--parallel",
        type=_positive,
        default=1,
        help="clients training at once, one CPU each (1: gentlest on a small machine)",
    )
    parser.add_argument(
        "--record",
        choices=("all", "server", "none"),
        default="all",
        help="what records: server and clients (all), the strategy wrapper only (server), "
        "or nothing (none, a timing baseline)",
    )
    parser.add_argument("--quiet", action="store_true", help="only Flower's warnings and errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.experiment_id is not None:
        from recorder.format import is_valid_experiment_id

        if not is_valid_experiment_id(args.experiment_id):
            print(f"error: invalid experiment id {args.experiment_id!r}", file=sys.stderr)
            return 2
        existing = args.log_dir / f"{args.experiment_id}.jsonl"
        if args.record != "none" and existing.exists():
            # Run files are append-only: a second run would land in the first one's file.
            print(
                f"error: {existing} already exists; choose another --experiment-id or remove it",
                file=sys.stderr,
            )
            return 2

    import logging

    import flwr.supercore.telemetry
    from flwr.simulation import run_simulation

    from examples.flower_digits.client_app import app as client_app
    from examples.flower_digits.server_app import Settings, make_server_app

    flwr.supercore.telemetry.FLWR_TELEMETRY_ENABLED = "0"
    flwr_logger = logging.getLogger("flwr")
    # run_simulation is the one-command, in-process way to simulate; its notice that
    # `flwr run` is the newer way says nothing about this run.
    flwr_logger.addFilter(
        lambda record: "run_simulation` function is deprecated" not in record.getMessage()
    )
    if args.quiet:
        flwr_logger.setLevel(logging.WARNING)

    settings = Settings(
        num_rounds=args.rounds,
        num_clients=args.clients,
        log_dir=args.log_dir,
        experiment_id=args.experiment_id,
        record=args.record,
        local_epochs=args.local_epochs,
        lr=args.lr,
    )
    started = time.perf_counter()
    run_simulation(
        server_app=make_server_app(settings),
        client_app=client_app,
        num_supernodes=args.clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": args.parallel,
                "num_gpus": 0,
                # Models here are kilobytes: a small object store spares /dev/shm and RAM.
                "object_store_memory": 128 * 1024 * 1024,
                "logging_level": "ERROR",
                "log_to_driver": False,
            },
        },
    )
    seconds = time.perf_counter() - started
    result = settings.outcome.get("result")
    if result is None:
        print("error: the federated run did not finish (see the log above)", file=sys.stderr)
        return 1
    final = result.evaluate_metrics_serverapp.get(args.rounds)
    summary = f"{args.rounds} rounds, {args.clients} clients in {seconds:.1f} s"
    if final is not None:
        summary += f"; global test accuracy {final['test_acc']:.3f}"
    print(summary)
    if "path" in settings.outcome:
        print(f"recorded: {settings.outcome['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
