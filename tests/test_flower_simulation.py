"""RecordingStrategy in a real Flower simulation (Simulation Runtime on Ray, 3 supernodes).

Ray takes seconds to start on a small machine, so ONE simulation serves every
test here: its ServerApp runs four strategies one after the other on the same
grid (plain FedAvg, the same FedAvg wrapped, a wrapped run whose ClientApp
fails on one node, and a wrapped strategy that raises), each wrapped run
recording into its own file. The backend is the lightest that works
reliably: one Ray CPU, one ClientApp actor (``num_cpus`` 1 for Ray and for
each client), Ray's own logging at ERROR.
"""

from __future__ import annotations

import importlib.util
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")
if importlib.util.find_spec("ray") is None:  # found, not imported: collection stays fast
    pytest.skip("needs ray", allow_module_level=True)

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Result

from recorder.flower import RecordingStrategy
from recorder.format import decode_line
from recorder.recorder import MetricsRecorder

pytestmark = pytest.mark.slow

NUM_NODES = 3
NUM_ROUNDS = 2
# Per partition: examples 1, 1, 2 -> weights 1/4, 1/4, 1/2, exact in binary, so
# Flower's weighted sums are exact whatever order the replies arrive in.
EXAMPLES = (1, 1, 2)
BACKEND_CONFIG = {
    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    "init_args": {
        "num_cpus": 1,
        "num_gpus": 0,
        "object_store_memory": 128 * 1024 * 1024,
        "logging_level": "ERROR",
        "log_to_driver": False,
    },
}

client_app = ClientApp()


@client_app.train()
def _train(message: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    config = message.content["config"]
    if int(config.get("fail-partition", -1)) == partition:
        raise RuntimeError(f"client {partition} cannot train")
    arrays = message.content["arrays"].to_numpy_ndarrays()
    updated = ArrayRecord([a + (partition + 1) for a in arrays])
    metrics = MetricRecord(
        {
            "loss": float(partition + 1),
            "accuracy": 0.25 * partition,
            "node": float(partition),
            "num-examples": EXAMPLES[partition],
        }
    )
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=message)


@client_app.evaluate()
def _evaluate(message: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    metrics = MetricRecord(
        {"eval_loss": 0.5 * (partition + 1), "num-examples": EXAMPLES[partition]}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=message)


def _server_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    total = float(sum(a.sum() for a in arrays.to_numpy_ndarrays()))
    return MetricRecord({"weights_sum": total, "round_seen": float(server_round)})


def _initial_arrays() -> ArrayRecord:
    return ArrayRecord([np.zeros((3, 2)), np.arange(5, dtype=np.float64)])


def _fedavg(**kwargs: Any) -> FedAvg:
    return FedAvg(min_available_nodes=NUM_NODES, min_train_nodes=NUM_NODES, **kwargs)


class _StrategyBoom(RuntimeError):
    pass


class _FailsInRound2(FedAvg):
    def aggregate_train(self, server_round, replies):
        if server_round == 2:
            raise _StrategyBoom("cannot aggregate round 2")
        return super().aggregate_train(server_round, replies)


def _run_everything(grid: Grid, log_dir: Path, out: dict[str, Any]) -> None:
    """The ServerApp body: four strategy runs on one grid, results into ``out``."""
    kwargs = dict(num_rounds=NUM_ROUNDS, timeout=120, evaluate_fn=_server_eval)
    # The ServerApp starts while the runtime still registers its nodes; FedAvg sizes its
    # sample from the nodes connected at that moment, so wait for all of them first.
    deadline = time.monotonic() + 60
    while len(list(grid.get_node_ids())) < NUM_NODES and time.monotonic() < deadline:
        time.sleep(0.05)

    random.seed(2024)
    out["plain"] = _fedavg().start(grid=grid, initial_arrays=_initial_arrays(), **kwargs)

    random.seed(2024)
    with MetricsRecorder(log_dir, "wrapped") as rec:
        out["wrapped"] = RecordingStrategy(_fedavg(), rec).start(
            grid=grid, initial_arrays=_initial_arrays(), **kwargs
        )

    with MetricsRecorder(log_dir, "client-fails") as rec:
        out["client_fails"] = RecordingStrategy(_fedavg(fraction_evaluate=0.0), rec).start(
            grid=grid,
            initial_arrays=_initial_arrays(),
            train_config=ConfigRecord({"fail-partition": 1}),
            **kwargs,
        )

    with MetricsRecorder(log_dir, "strategy-fails") as rec:
        try:
            strategy = _FailsInRound2(min_available_nodes=NUM_NODES, min_train_nodes=NUM_NODES)
            RecordingStrategy(strategy, rec).start(
                grid=grid, initial_arrays=_initial_arrays(), **kwargs
            )
        except _StrategyBoom as exc:
            out["raised"] = exc
    out["node_ids"] = sorted(grid.get_node_ids())


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the shared simulation once; return its results and the recorded files."""
    from flwr.simulation import run_simulation

    log_dir = tmp_path_factory.mktemp("flower-runs")
    out: dict[str, Any] = {"log_dir": log_dir}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        _run_everything(grid, log_dir, out)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLWR_TELEMETRY_ENABLED", "0")  # never try to reach the network
        patch.setattr("flwr.supercore.telemetry.FLWR_TELEMETRY_ENABLED", "0")
        patch.setenv("RAY_DEDUP_LOGS", "0")
        patch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=NUM_NODES,
            backend_config=BACKEND_CONFIG,
        )
    return out


def _read(log_dir: Path, experiment_id: str) -> list[dict[str, Any]]:
    raw = (log_dir / f"{experiment_id}.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    return [decode_line(line) for line in raw.splitlines()]


def _of(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m["data"] for m in messages if m["type"] == kind]


def _plain(result: Result) -> dict[str, Any]:
    return {
        "arrays": [(a.dtype.str, a.shape, a.tobytes()) for a in result.arrays.to_numpy_ndarrays()],
        "train": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
        "evaluate": {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
        "server": {r: dict(m) for r, m in result.evaluate_metrics_serverapp.items()},
    }


def test_recorded_sequence_per_round(sim):
    """The wrapped run's file holds the header, each round's sequence in order, then the end."""
    messages = _read(sim["log_dir"], "wrapped")
    types = [m["type"] for m in messages]
    per_round = (
        ["round_start"]
        + ["client_training_start"] * NUM_NODES
        + ["client_complete"] * NUM_NODES
        + ["round_end", "round_metrics"]
    )
    assert types == [
        "training_mode",
        "training_start",
        "status",
        "round_metrics",  # evaluate_fn on the initial arrays, round 0
        *(per_round * NUM_ROUNDS),
        "training_end",
        "status",
    ]
    assert messages[0]["data"] == {
        "is_federated": True,
        "num_rounds": NUM_ROUNDS,
        "num_clients": NUM_NODES,
    }
    rounds = [m["data"]["round"] for m in messages if "round" in m["data"]]
    assert rounds == sorted(rounds) and rounds[0] == 0 and rounds[-1] == NUM_ROUNDS
    assert _of(messages, "status")[-1]["status"] == "completed"
    assert all(m["timestamp"].endswith("Z") for m in messages)


def test_client_complete_once_per_node_per_round(sim):
    """Every node trains and completes exactly once per round, named by its node id string."""
    messages = _read(sim["log_dir"], "wrapped")
    node_ids = [str(n) for n in sim["node_ids"]]
    assert len(node_ids) == NUM_NODES
    for kind in ("client_training_start", "client_complete"):
        for server_round in range(1, NUM_ROUNDS + 1):
            ids = [d["client_id"] for d in _of(messages, kind) if d["round"] == server_round]
            assert sorted(ids) == sorted(node_ids)
    for done in _of(messages, "client_complete"):
        partition = int(done["metrics"]["node"])
        assert done["num_examples"] == EXAMPLES[partition]
        assert done["metrics"]["loss"] == float(partition + 1)


def test_round_end_metrics_are_flowers_aggregates(sim):
    """round_end carries exactly the aggregates in Flower's Result, the weighted client average."""
    messages = _read(sim["log_dir"], "wrapped")
    result: Result = sim["wrapped"]
    ends = _of(messages, "round_end")
    assert [e["round"] for e in ends] == list(range(1, NUM_ROUNDS + 1))
    for end in ends:
        server_round = end["round"]
        assert end["total_rounds"] == NUM_ROUNDS
        assert end["fit_metrics"] == dict(result.train_metrics_clientapp[server_round])
        assert end["eval_metrics"] == dict(result.evaluate_metrics_clientapp[server_round])
        replies = [d for d in _of(messages, "client_complete") if d["round"] == server_round]
        total = sum(d["num_examples"] for d in replies)
        for name in ("loss", "accuracy"):
            weighted = sum(d["metrics"][name] * d["num_examples"] for d in replies) / total
            assert end["fit_metrics"][name] == pytest.approx(weighted)
    server = {d["round"]: d["metrics"] for d in _of(messages, "round_metrics")}
    assert server == {r: dict(m) for r, m in result.evaluate_metrics_serverapp.items()}


def test_wrapped_result_equals_unwrapped(sim):
    """The wrapped run returns the same Result as the plain one: same arrays, same metrics."""
    assert _plain(sim["wrapped"]) == _plain(sim["plain"])
    assert len(sim["plain"].train_metrics_clientapp) == NUM_ROUNDS


def test_failing_client_is_recorded_and_the_run_goes_on(sim):
    """A ClientApp that raises gives recorded error replies each round; the run completes."""
    messages = _read(sim["log_dir"], "client-fails")
    done = _of(messages, "client_complete")
    errors = [d for d in done if "error" in d]
    assert len(done) == NUM_NODES * NUM_ROUNDS
    assert [d["round"] for d in errors] == list(range(1, NUM_ROUNDS + 1))
    assert len({d["client_id"] for d in errors}) == 1
    assert all("cannot train" in d["error"] and "metrics" not in d for d in errors)
    ends = _of(messages, "round_end")
    assert [e["eval_metrics"] for e in ends] == [{}] * NUM_ROUNDS  # evaluation was off
    # The two healthy partitions (0 and 2): losses 1 and 3 on 1 and 2 examples.
    assert all(e["fit_metrics"]["loss"] == pytest.approx((1 * 1 + 3 * 2) / 3) for e in ends)
    assert [m["type"] for m in messages][-2:] == ["training_end", "status"]
    assert _of(messages, "status")[-1]["status"] == "completed"


def test_raising_strategy_records_failure_and_reraises(sim):
    """A strategy that raises: error with traceback and status failed recorded, exception re-raised."""
    assert isinstance(sim.get("raised"), _StrategyBoom)
    messages = _read(sim["log_dir"], "strategy-fails")
    assert [m["type"] for m in messages][-2:] == ["error", "status"]
    error = _of(messages, "error")[0]
    assert error["error_type"] == "_StrategyBoom"
    assert error["error"] == "cannot aggregate round 2"
    assert "Traceback" in error["traceback"] and "aggregate_train" in error["traceback"]
    assert _of(messages, "status")[-1]["status"] == "failed"
    assert [e["round"] for e in _of(messages, "round_end")] == [1]


def test_replay_gives_the_per_client_table(sim):
    """replay.read_metrics pivots client losses into a round x client_id table."""
    replay = pytest.importorskip("replay")
    if not hasattr(replay, "read_metrics"):
        from replay import tables as replay  # the module, until the package re-exports it
    df = replay.read_metrics(sim["log_dir"] / "wrapped.jsonl")
    table = df[df.metric == "loss"].pivot_table(index="round", columns="client_id", values="value")
    messages = _read(sim["log_dir"], "wrapped")
    expected = {
        (d["round"], d["client_id"]): d["metrics"]["loss"] for d in _of(messages, "client_complete")
    }
    assert list(table.index) == list(range(1, NUM_ROUNDS + 1))
    assert sorted(table.columns) == sorted(str(n) for n in sim["node_ids"])
    for (server_round, client_id), loss in expected.items():
        assert table.loc[server_round, client_id] == loss
