"""RecordingStrategy's recording logic, driven by an in-process Grid (no Ray, fast)."""

from __future__ import annotations

import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Result

from recorder.flower import RecordingStrategy
from tests._flower_helpers import (
    NODE_IDS,
    InProcessGrid,
    ListRecorder,
    default_handler,
    error_reply,
    expected_round_types,
    initial_arrays,
)

ROOT = Path(__file__).resolve().parent.parent


def _fedavg(**kwargs) -> FedAvg:
    kwargs.setdefault("min_available_nodes", 3)
    kwargs.setdefault("min_train_nodes", 3)
    kwargs.setdefault("min_evaluate_nodes", 3)
    return FedAvg(**kwargs)


def _server_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
    if server_round == 1:
        return None  # a round without a server-side result records nothing
    return MetricRecord({"server_loss": 1.0 / (server_round + 1)})


def _as_plain(result: Result) -> dict:
    return {
        "arrays": [a.tolist() for a in result.arrays.to_numpy_ndarrays()],
        "train": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
        "evaluate": {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
        "server": {r: dict(m) for r, m in result.evaluate_metrics_serverapp.items()},
    }


def test_records_the_documented_sequence():
    """A 3-round run records the header, each round's sequence in order, then the end."""
    rec = ListRecorder()
    RecordingStrategy(_fedavg(), rec).start(
        grid=InProcessGrid(),
        initial_arrays=initial_arrays(),
        num_rounds=3,
        evaluate_fn=_server_eval,
    )
    types = rec.types()
    assert types[:3] == ["training_mode", "training_start", "status"]
    assert types[3] == "round_metrics"  # evaluate_fn on the initial arrays (round 0)
    expected = (
        expected_round_types(3, server_eval=False)  # round 1: evaluate_fn returned None
        + expected_round_types(3, server_eval=True)
        + expected_round_types(3, server_eval=True)
    )
    assert types[4:-2] == expected
    assert types[-2:] == ["training_end", "status"]
    assert rec.messages[0][1] == {"is_federated": True, "num_rounds": 3, "num_clients": 3}
    start = rec.messages[1][1]
    assert start["strategy"] == "FedAvg" and start["num_rounds"] == 3
    assert start["strategy_config"]["fraction_train"] == 1.0
    assert start["strategy_config"]["weighted_by_key"] == "num-examples"
    assert rec.of("status")[0]["status"] == "running"
    assert rec.of("status")[-1]["status"] == "completed"
    assert [d["round"] for d in rec.of("round_start")] == [1, 2, 3]
    assert all(d["total_rounds"] == 3 for d in rec.of("round_start") + rec.of("round_end"))
    assert [d["round"] for d in rec.of("round_metrics")] == [0, 2, 3]
    end = rec.of("training_end")[0]
    assert end["rounds_completed"] == 3 and end["num_rounds"] == 3
    assert end["final_server_metrics"] == {"server_loss": 0.25}


def test_client_messages_carry_round_and_string_node_ids():
    """client_training_start/complete name each node once per round by its id as a decimal string."""
    rec = ListRecorder()
    RecordingStrategy(_fedavg(), rec).start(
        grid=InProcessGrid(), initial_arrays=initial_arrays(), num_rounds=2
    )
    expected_ids = sorted(str(n) for n in NODE_IDS)
    for kind in ("client_training_start", "client_complete"):
        for server_round in (1, 2):
            ids = [d["client_id"] for d in rec.of(kind) if d["round"] == server_round]
            assert sorted(ids) == expected_ids
            assert all(isinstance(i, str) for i in ids)
    by_id = {d["client_id"]: d for d in rec.of("client_complete") if d["round"] == 1}
    big = by_id[str(NODE_IDS[0])]
    assert big["metrics"] == {"loss": 1.0, "accuracy": 0.1, "num-examples": 1}
    assert big["num_examples"] == 1


def test_round_end_holds_the_aggregates_the_strategy_returned():
    """round_end's fit/eval metrics are Flower's own aggregates, as in the Result."""
    rec = ListRecorder()
    result = RecordingStrategy(_fedavg(), rec).start(
        grid=InProcessGrid(), initial_arrays=initial_arrays(), num_rounds=2
    )
    for end in rec.of("round_end"):
        assert end["fit_metrics"] == dict(result.train_metrics_clientapp[end["round"]])
        assert end["eval_metrics"] == dict(result.evaluate_metrics_clientapp[end["round"]])
        # ... and that is the weighted average of what the clients reported.
        replies = [d for d in rec.of("client_complete") if d["round"] == end["round"]]
        total = sum(d["num_examples"] for d in replies)
        weighted = sum(d["metrics"]["loss"] * d["num_examples"] for d in replies) / total
        assert end["fit_metrics"]["loss"] == pytest.approx(weighted)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FedAvg(min_available_nodes=3),
        lambda: FedProx(proximal_mu=0.1, min_available_nodes=3),
        lambda: FedAdam(min_available_nodes=3),
    ],
    ids=["FedAvg", "FedProx", "FedAdam"],
)
def test_wrapped_result_equals_unwrapped(make):
    """Wrapping changes nothing the strategy computes: same arrays and metrics in the Result."""
    kwargs = dict(initial_arrays=initial_arrays(), num_rounds=3, evaluate_fn=_server_eval)
    # Same seed, same node sampling; the in-process grid answers in that order, so both
    # runs sum the replies in the same order.
    random.seed(7)
    plain = make().start(grid=InProcessGrid(), **kwargs)
    kwargs["initial_arrays"] = initial_arrays()
    random.seed(7)
    wrapped = RecordingStrategy(make(), ListRecorder()).start(grid=InProcessGrid(), **kwargs)
    assert _as_plain(wrapped) == _as_plain(plain)


def test_error_replies_are_recorded_and_the_run_goes_on():
    """A node's error reply becomes client_complete with error (no metrics); rounds continue."""
    failing = NODE_IDS[1]

    def handler(message):
        if message.metadata.dst_node_id == failing and message.metadata.message_type == "train":
            return error_reply(message, "ClientAppException: boom")
        return default_handler(message)

    rec = ListRecorder()
    result = RecordingStrategy(_fedavg(min_train_nodes=2), rec).start(
        grid=InProcessGrid(handler), initial_arrays=initial_arrays(), num_rounds=2
    )
    errors = [d for d in rec.of("client_complete") if "error" in d]
    assert [(d["round"], d["client_id"]) for d in errors] == [(1, str(failing)), (2, str(failing))]
    assert all("boom" in d["error"] and "metrics" not in d for d in errors)
    assert errors[0]["error_code"] == 2
    assert len(rec.of("client_complete")) == 6
    assert len(rec.of("round_end")) == 2 and rec.types()[-2:] == ["training_end", "status"]
    # Nodes 0 and 2: losses 1 and 3 on 1 and 3 examples.
    assert result.train_metrics_clientapp[2]["loss"] == pytest.approx((1 * 1 + 3 * 3) / 4)


def test_a_missing_reply_is_recorded():
    """A sampled node that never replies (timeout) gets a client_complete with an error."""
    silent = NODE_IDS[2]

    def handler(message):
        if message.metadata.dst_node_id == silent:
            return None
        return default_handler(message)

    rec = ListRecorder()
    RecordingStrategy(_fedavg(), rec).start(
        grid=InProcessGrid(handler), initial_arrays=initial_arrays(), num_rounds=1
    )
    missing = [d for d in rec.of("client_complete") if d["client_id"] == str(silent)]
    assert len(missing) == 1 and "timeout" in missing[0]["error"]


def test_skipped_stages_give_empty_metrics():
    """With federated evaluation off, round_end's eval_metrics is {} (and fit_metrics is set)."""
    rec = ListRecorder()
    RecordingStrategy(_fedavg(fraction_evaluate=0.0), rec).start(
        grid=InProcessGrid(), initial_arrays=initial_arrays(), num_rounds=2
    )
    ends = rec.of("round_end")
    assert [e["eval_metrics"] for e in ends] == [{}, {}]
    assert all(e["fit_metrics"] for e in ends)

    rec = ListRecorder()
    RecordingStrategy(_fedavg(fraction_train=0.0), rec).start(
        grid=InProcessGrid(), initial_arrays=initial_arrays(), num_rounds=1
    )
    assert rec.of("round_end")[0]["fit_metrics"] == {}
    assert "client_training_start" not in rec.types()


class _Boom(RuntimeError):
    pass


class _FailingFedAvg(FedAvg):
    """Fails while aggregating round 2."""

    def aggregate_train(self, server_round, replies):
        if server_round == 2:
            raise _Boom("aggregation exploded")
        return super().aggregate_train(server_round, replies)


def test_a_raising_strategy_records_error_then_reraises_unchanged():
    """The strategy's exception is recorded (error + traceback, status failed) and reaches the caller."""
    rec = ListRecorder()
    strategy = _FailingFedAvg(min_available_nodes=3)
    with pytest.raises(_Boom, match="aggregation exploded") as caught:
        RecordingStrategy(strategy, rec).start(
            grid=InProcessGrid(), initial_arrays=initial_arrays(), num_rounds=3
        )
    assert caught.type is _Boom
    types = rec.types()
    assert types[-2:] == ["error", "status"]
    error = rec.of("error")[0]
    assert error["error_type"] == "_Boom" and error["error"] == "aggregation exploded"
    assert "aggregate_train" in error["traceback"] and error["round"] == 2
    assert rec.of("status")[-1]["status"] == "failed"
    assert [d["round"] for d in rec.of("round_end")] == [1]  # round 2 never ended
    assert "training_end" not in types
    # The hooks are gone: the strategy is as it was.
    assert not {"configure_train", "aggregate_train"} & set(vars(strategy))


def test_a_failing_evaluate_fn_is_recorded():
    """An exception in the server-side evaluate_fn is recorded and re-raised."""

    def evaluate_fn(server_round, arrays):
        raise ValueError("bad eval")

    rec = ListRecorder()
    with pytest.raises(ValueError, match="bad eval"):
        RecordingStrategy(_fedavg(), rec).start(
            grid=InProcessGrid(),
            initial_arrays=initial_arrays(),
            num_rounds=2,
            evaluate_fn=evaluate_fn,
        )
    assert rec.types() == ["training_mode", "training_start", "status", "error", "status"]


class _OwnLoop(FedAvg):
    """A strategy with its own start(): one train-only round, returning a marked Result."""

    def start(self, grid, initial_arrays, num_rounds=3, timeout=3600, train_config=None, **kwargs):
        messages = self.configure_train(1, initial_arrays, train_config or ConfigRecord(), grid)
        arrays, metrics = self.aggregate_train(1, grid.send_and_receive(messages))
        result = Result(arrays=arrays)
        result.train_metrics_clientapp[1] = metrics
        result.evaluate_metrics_serverapp[99] = MetricRecord({"own_loop": 1.0})
        return result


def test_the_wrapped_strategys_own_start_loop_is_used_and_recorded():
    """An overridden start() runs (its Result comes back) and its calls are still recorded."""
    rec = ListRecorder()
    result = RecordingStrategy(_OwnLoop(min_available_nodes=3), rec).start(
        grid=InProcessGrid(), initial_arrays=initial_arrays(), num_rounds=1
    )
    assert dict(result.evaluate_metrics_serverapp[99]) == {"own_loop": 1.0}
    types = rec.types()
    # No aggregate_evaluate in this loop: the round ends when start() returns.
    assert types[3:] == [*expected_round_types(3, server_eval=False), "training_end", "status"]
    assert rec.of("round_end")[0]["eval_metrics"] == {}
    assert rec.of("round_end")[0]["fit_metrics"] == dict(result.train_metrics_clientapp[1])


class _GeneratorFedAvg(FedAvg):
    def configure_train(self, server_round, arrays, config, grid):
        yield from super().configure_train(server_round, arrays, config, grid)


def test_a_generator_of_messages_is_recorded_and_still_sent():
    """configure_train may yield its messages: they are recorded and all of them still sent."""
    rec = ListRecorder()
    grid = InProcessGrid()
    RecordingStrategy(_GeneratorFedAvg(min_available_nodes=3), rec).start(
        grid=grid, initial_arrays=initial_arrays(), num_rounds=1
    )
    assert len(rec.of("client_training_start")) == 3
    assert sum(m.metadata.message_type == "train" for m in grid.sent) == 3


def test_methods_used_directly_also_record():
    """A custom server loop calling the wrapper's methods records rounds too."""
    rec = ListRecorder()
    strategy = RecordingStrategy(_fedavg(), rec)
    grid = InProcessGrid()
    messages = strategy.configure_train(1, initial_arrays(), ConfigRecord(), grid)
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    evaluation = strategy.configure_evaluate(1, arrays, ConfigRecord(), grid)
    strategy.aggregate_evaluate(1, grid.send_and_receive(evaluation))
    assert rec.types() == expected_round_types(3, server_eval=False)
    assert rec.of("round_end")[0]["total_rounds"] is None


def test_a_failing_recorder_never_reaches_the_server():
    """A recorder that raises costs one warning; the run and its Result are unaffected."""

    class Broken:
        def record(self, type, data):
            raise OSError("disk full")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = RecordingStrategy(_fedavg(), Broken()).start(
            grid=InProcessGrid(), initial_arrays=initial_arrays(), num_rounds=2
        )
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    assert len([w for w in caught if "disk full" in str(w.message)]) == 1


def test_reads_unknown_attributes_from_the_wrapped_strategy():
    """The wrapper is a Strategy and exposes the wrapped strategy's settings."""
    from flwr.serverapp.strategy import Strategy

    inner = _fedavg(fraction_train=0.5)
    wrapper = RecordingStrategy(inner, ListRecorder())
    assert isinstance(wrapper, Strategy)
    assert wrapper.fraction_train == 0.5 and wrapper.weighted_by_key == "num-examples"
    with pytest.raises(AttributeError):
        _ = wrapper.no_such_setting


def test_num_clients_can_be_given():
    """An explicit num_clients goes into training_mode as is."""
    rec = ListRecorder()
    RecordingStrategy(_fedavg(), rec, num_clients=10).start(
        grid=InProcessGrid(), initial_arrays=initial_arrays(), num_rounds=1
    )
    assert rec.of("training_mode")[0]["num_clients"] == 10


def test_bad_arguments_are_refused():
    """Wrapping something that is not a message-API strategy, or a non-recorder, is a TypeError."""
    with pytest.raises(TypeError, match="Strategy"):
        RecordingStrategy(object(), ListRecorder())
    with pytest.raises(TypeError, match="record"):
        RecordingStrategy(_fedavg(), object())
    with pytest.raises(ValueError, match="num_clients"):
        RecordingStrategy(_fedavg(), ListRecorder(), num_clients=-1)


def test_import_recorder_does_not_import_flwr():
    """``import recorder`` (and its format module) leaves flwr unloaded."""
    code = "import sys, recorder, recorder.format; print('flwr' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_arrays_stay_numerically_identical_through_the_wrapper():
    """Bit-for-bit: the wrapper neither copies nor converts the arrays it passes on."""
    random.seed(3)
    plain = _fedavg().start(grid=InProcessGrid(), initial_arrays=initial_arrays(), num_rounds=2)
    random.seed(3)
    wrapped = RecordingStrategy(_fedavg(), ListRecorder()).start(
        grid=InProcessGrid(), initial_arrays=initial_arrays(), num_rounds=2
    )
    for a, b in zip(
        plain.arrays.to_numpy_ndarrays(), wrapped.arrays.to_numpy_ndarrays(), strict=True
    ):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_num_clients_counts_nodes_still_connecting():
    """With nodes still connecting at start(), training_mode counts the strategy's minimum."""

    class ConnectingGrid(InProcessGrid):
        calls = 0

        def get_node_ids(self):
            self.calls += 1
            return list(self.node_ids) if self.calls > 1 else list(self.node_ids[:1])

    rec = ListRecorder()
    RecordingStrategy(_fedavg(), rec).start(
        grid=ConnectingGrid(), initial_arrays=initial_arrays(), num_rounds=1
    )
    assert rec.of("training_mode")[0]["num_clients"] == 3
