"""RecorderCallback and JsonlLogger with real Trainer.fit runs, under both Lightning packages."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).parent))
from _recorder_helpers import (
    PACKAGES,
    ddp_module,
    import_pl,
    make_loader,
    make_module,
    make_trainer,
    read_messages,
)

from recorder import JsonlLogger, MetricsRecorder, RecorderCallback
from recorder.lightning import split_metrics

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::RuntimeWarning", "ignore:.*LeafSpec.*"
)


@pytest.fixture(params=PACKAGES)
def pl(request: pytest.FixtureRequest) -> Any:
    """The Lightning package under test: lightning.pytorch or pytorch_lightning."""
    return import_pl(request.param)


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    """Message types, with the phase of epoch messages: ``epoch_end:val``."""
    out = []
    for m in messages:
        phase = m["data"].get("phase") if m["type"] in ("epoch_end", "local_epoch") else None
        out.append(f"{m['type']}:{phase}" if phase else m["type"])
    return out


def test_classes_are_callbacks_and_loggers_of_both_packages() -> None:
    """RecorderCallback and JsonlLogger pass each package's isinstance checks."""
    for name in PACKAGES:
        pkg = import_pl(name)
        assert isinstance(RecorderCallback(experiment_id="x"), pkg.Callback)
        assert isinstance(JsonlLogger(experiment_id="x"), pkg.loggers.Logger)


def test_fit_records_three_epochs_in_order(pl: Any, tmp_path: Path) -> None:
    """A 3-epoch fit with validation writes start, train-then-val per epoch, training_end and completed."""
    callback = RecorderCallback(tmp_path, "fit")
    trainer = make_trainer(pl, callbacks=[callback])
    trainer.fit(make_module(pl), make_loader(), make_loader(seed=1))
    messages = read_messages(tmp_path / "fit.jsonl")
    assert kinds(messages) == [
        "training_start",
        "status",
        *(["epoch_start", "epoch_end:train", "epoch_end:val"] * 3),
        "training_end",
        "status",
    ]
    start = messages[0]["data"]
    assert start["model"] == "TinyClassifier"
    assert start["max_epochs"] == 3
    assert start["experiment_id"] == "fit"
    assert start["hparams"] == {"lr": 0.1}
    assert messages[1]["data"]["status"] == "running"
    epoch_starts = [m["data"] for m in messages if m["type"] == "epoch_start"]
    assert epoch_starts == [{"epoch": e, "total_epochs": 3} for e in range(3)]
    ends = [m["data"] for m in messages if m["type"] == "epoch_end"]
    assert [(d["epoch"], d["phase"]) for d in ends] == [
        (e, p) for e in range(3) for p in ("train", "val")
    ]
    for data in ends:
        assert set(data["metrics"]) == {"loss", "acc"}
        assert all(isinstance(v, float) and math.isfinite(v) for v in data["metrics"].values())
    end = messages[-2]["data"]
    assert end["run_id"] == "fit"
    assert end["epochs"] == 3
    assert end["global_step"] == 12
    assert end["stopped_early"] is False
    assert messages[-1]["data"]["status"] == "completed"
    # the val metrics of the last epoch are the ones Lightning reports
    assert ends[-1]["metrics"]["loss"] == pytest.approx(float(trainer.callback_metrics["val_loss"]))


def test_values_logged_in_the_module_epoch_hook_are_included(pl: Any, tmp_path: Path) -> None:
    """Metrics logged in LightningModule.on_train_epoch_end land in that epoch's train message."""
    callback = RecorderCallback(tmp_path, "hook")
    trainer = make_trainer(pl, callbacks=[callback], max_epochs=2)
    trainer.fit(make_module(pl, log_in_hook=True), make_loader(), make_loader())
    train = [
        m["data"]
        for m in read_messages(tmp_path / "hook.jsonl")
        if m["data"].get("phase") == "train"
    ]
    assert [d["metrics"]["hook_value"] for d in train] == [0.5, 1.5]


def test_validation_every_other_epoch_is_not_lost(pl: Any, tmp_path: Path) -> None:
    """With check_val_every_n_epoch=2 the val messages follow the train message of epochs 1 and 3."""
    callback = RecorderCallback(tmp_path, "sparse")
    trainer = make_trainer(pl, callbacks=[callback], max_epochs=4, check_val_every_n_epoch=2)
    trainer.fit(make_module(pl), make_loader(), make_loader())
    ends = [
        (m["data"]["epoch"], m["data"]["phase"])
        for m in read_messages(tmp_path / "sparse.jsonl")
        if m["type"] == "epoch_end"
    ]
    assert ends == [(0, "train"), (1, "train"), (1, "val"), (2, "train"), (3, "train"), (3, "val")]


def test_mid_epoch_validation_is_written_when_it_ends(pl: Any, tmp_path: Path) -> None:
    """With val_check_interval=0.5 the mid-epoch val comes first, the end-of-epoch val after train."""
    callback = RecorderCallback(tmp_path, "mid")
    trainer = make_trainer(pl, callbacks=[callback], max_epochs=2, val_check_interval=0.5)
    trainer.fit(make_module(pl), make_loader(), make_loader())
    messages = read_messages(tmp_path / "mid.jsonl")
    assert (
        kinds(messages)[2:-2]
        == [
            "epoch_start",
            "epoch_end:val",
            "epoch_end:train",
            "epoch_end:val",
        ]
        * 2
    )


def test_an_exception_records_error_and_failed_and_propagates(pl: Any, tmp_path: Path) -> None:
    """An exception in training_step writes error (with traceback) and status failed, then propagates."""
    callback = RecorderCallback(tmp_path, "boom")
    trainer = make_trainer(pl, callbacks=[callback])
    with pytest.raises(RuntimeError, match="boom in training_step"):
        trainer.fit(make_module(pl, fail_at_step=6), make_loader(), make_loader())
    messages = read_messages(tmp_path / "boom.jsonl")
    types = kinds(messages)
    assert types[-2:] == ["error", "status"]
    assert "training_end" not in types
    error = messages[-2]["data"]
    assert error["error"] == "boom in training_step"
    assert error["error_type"] == "RuntimeError"
    assert "training_step" in error["traceback"] and "RuntimeError: boom" in error["traceback"]
    assert messages[-1]["data"]["status"] == "failed"
    # epoch 0 completed; its train and val messages were written before the failure
    assert "epoch_end:train" in types and "epoch_end:val" in types


def test_early_stopping_is_recorded(pl: Any, tmp_path: Path) -> None:
    """An EarlyStopping of the same package that stops the run gives an early_stopping message."""
    stopper = pl.callbacks.EarlyStopping(monitor="val_loss", mode="max", patience=1, min_delta=10.0)
    callback = RecorderCallback(tmp_path, "early")
    trainer = make_trainer(pl, callbacks=[callback, stopper], max_epochs=10)
    trainer.fit(make_module(pl), make_loader(), make_loader())
    messages = read_messages(tmp_path / "early.jsonl")
    (early,) = [m["data"] for m in messages if m["type"] == "early_stopping"]
    assert early["metric_name"] == "val_loss"
    assert early["patience"] == 1
    assert early["epoch"] == stopper.stopped_epoch < 9
    assert isinstance(early["best_metric_value"], float)
    assert "val_loss" in early["reason"]
    (end,) = [m["data"] for m in messages if m["type"] == "training_end"]
    assert end["stopped_early"] is True
    assert kinds(messages)[-3:] == ["early_stopping", "training_end", "status"]


def test_no_early_stopping_message_when_the_run_was_not_stopped(pl: Any, tmp_path: Path) -> None:
    """An EarlyStopping that never triggers leaves no early_stopping message."""
    stopper = pl.callbacks.EarlyStopping(monitor="val_loss", patience=100)
    callback = RecorderCallback(tmp_path, "patient")
    make_trainer(pl, callbacks=[callback, stopper], max_epochs=2).fit(
        make_module(pl), make_loader(), make_loader()
    )
    assert "early_stopping" not in kinds(read_messages(tmp_path / "patient.jsonl"))


def test_batch_metrics_every_n_steps(pl: Any, tmp_path: Path) -> None:
    """batch_every_n_steps=2 writes batch_metrics for every second training batch with loss and accuracy."""
    callback = RecorderCallback(tmp_path, "batches", batch_every_n_steps=2)
    make_trainer(pl, callbacks=[callback], max_epochs=2).fit(
        make_module(pl), make_loader(), make_loader()
    )
    batches = [
        m["data"] for m in read_messages(tmp_path / "batches.jsonl") if m["type"] == "batch_metrics"
    ]
    assert [(b["step"], b["batch_idx"], b["epoch"]) for b in batches] == [
        (2, 1, 0),
        (4, 3, 0),
        (6, 1, 1),
        (8, 3, 1),
    ]
    for b in batches:
        assert isinstance(b["loss"], float)
        assert 0.0 <= b["accuracy"] <= 1.0
        assert b["recall"] is None and b["f1"] is None


def test_epoch_end_carries_the_global_step(pl: Any, tmp_path: Path) -> None:
    """Every epoch_end has `step`, the trainer's global step, so epoch values can be drawn against step."""
    callback = RecorderCallback(tmp_path, "steps")
    make_trainer(pl, callbacks=[callback]).fit(make_module(pl), make_loader(), make_loader(seed=1))
    ends = [m["data"] for m in read_messages(tmp_path / "steps.jsonl") if m["type"] == "epoch_end"]
    assert [(d["epoch"], d["phase"], d.get("step")) for d in ends] == [
        (e, p, 4 * (e + 1)) for e in range(3) for p in ("train", "val")
    ]


def test_batch_values_are_only_those_logged_that_step(pl: Any, tmp_path: Path) -> None:
    """A value logged with on_step=False is never written into a later batch's batch_metrics."""
    import torch

    class EpochOnlyAccuracy(type(make_module(pl))):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            logits = self.layer(x)
            acc = (logits.argmax(dim=1) == y).float().mean()
            self.log("train_acc", acc, on_step=False, on_epoch=True)
            return torch.nn.functional.cross_entropy(logits, y)

    callback = RecorderCallback(tmp_path, "stale", batch_every_n_steps=1)
    make_trainer(pl, callbacks=[callback]).fit(
        EpochOnlyAccuracy(), make_loader(), make_loader(seed=1)
    )
    messages = read_messages(tmp_path / "stale.jsonl")
    batches = [m["data"] for m in messages if m["type"] == "batch_metrics"]
    assert len(batches) == 12
    assert [b["accuracy"] for b in batches] == [None] * 12
    # The epoch value itself is in the epoch message.
    trains = [
        m["data"] for m in messages if m["type"] == "epoch_end" and m["data"]["phase"] == "train"
    ]
    assert all(0.0 <= t["metrics"]["acc"] <= 1.0 for t in trains)


def test_batch_every_n_steps_must_be_positive() -> None:
    """A zero or negative interval is refused with a ValueError naming it."""
    with pytest.raises(ValueError, match="batch_every_n_steps"):
        RecorderCallback(experiment_id="x", batch_every_n_steps=0)


def test_test_and_validate_write_their_phase(pl: Any, tmp_path: Path) -> None:
    """trainer.validate and trainer.test after fit append val and test epoch_end messages to the same file."""
    callback = RecorderCallback(tmp_path, "stages")
    trainer = make_trainer(pl, callbacks=[callback], max_epochs=1)
    model = make_module(pl)
    trainer.fit(model, make_loader(), make_loader())
    trainer.validate(model, make_loader())
    trainer.test(model, make_loader())
    messages = read_messages(tmp_path / "stages.jsonl")
    assert kinds(messages)[-2:] == ["epoch_end:val", "epoch_end:test"]
    test = messages[-1]["data"]
    assert set(test["metrics"]) == {"loss", "acc"}
    assert test["metrics"]["loss"] == pytest.approx(float(trainer.callback_metrics["test_loss"]))


def test_federated_client_messages_carry_client_and_round(pl: Any, tmp_path: Path) -> None:
    """With client_id and round every message carries them, and epochs are local_epoch messages."""
    node = 2**64 - 1  # Flower node ids are unsigned 64-bit
    callback = RecorderCallback(tmp_path, "fed", client_id=node, round=3, batch_every_n_steps=4)
    make_trainer(pl, callbacks=[callback], max_epochs=2).fit(
        make_module(pl), make_loader(), make_loader()
    )
    messages = read_messages(tmp_path / "fed.jsonl")
    for m in messages:
        assert m["data"]["client_id"] == str(node)
        assert m["data"]["round"] == 3
    assert kinds(messages) == [
        "client_progress",
        "batch_metrics",
        "local_epoch:train",
        "local_epoch:val",
        "batch_metrics",
        "local_epoch:train",
        "local_epoch:val",
        "client_progress",
    ]
    local = [m["data"] for m in messages if m["type"] == "local_epoch"]
    assert [d["local_epoch"] for d in local] == [0, 0, 1, 1]
    assert set(local[0]["metrics"]) == {"loss", "acc"}
    assert messages[1]["data"]["round_num"] == 3
    assert [messages[0]["data"]["status"], messages[-1]["data"]["status"]] == [
        "started",
        "completed",
    ]


def test_a_given_recorder_is_shared_and_left_open(pl: Any, tmp_path: Path) -> None:
    """recorder= writes through an existing MetricsRecorder, which the callback does not close."""
    with MetricsRecorder(tmp_path, "shared") as rec:
        rec.send_training_mode(False, 0, 1)
        callback = RecorderCallback(recorder=rec)
        assert callback.experiment_id == "shared"
        make_trainer(pl, callbacks=[callback], max_epochs=1, logger=JsonlLogger(recorder=rec)).fit(
            make_module(pl), make_loader(), make_loader()
        )
        assert not rec.closed
        rec.send_status("completed", "after fit")
    types = kinds(read_messages(tmp_path / "shared.jsonl"))
    assert types[0] == "training_mode"
    assert "hparams" in types and "metrics" in types and "training_end" in types
    assert types[-1] == "status"


def test_only_global_rank_zero_writes(tmp_path: Path) -> None:
    """A callback set up on a rank other than 0 opens no file and writes nothing."""
    callback = RecorderCallback(tmp_path / "runs", "ddp")
    trainer = SimpleNamespace(is_global_zero=False, global_rank=1)
    callback.setup(trainer, None, "fit")
    assert callback.recorder is None
    callback._emit("status", {"status": "running"})
    assert not (tmp_path / "runs").exists()


def test_jsonl_logger_records_logged_values_and_hyperparameters(pl: Any, tmp_path: Path) -> None:
    """self.log values become metrics {step, epoch, metrics} lines and save_hyperparameters an hparams line."""
    logger = JsonlLogger(tmp_path, "logged")
    trainer = make_trainer(pl, logger=logger, max_epochs=2, log_every_n_steps=1)
    trainer.fit(make_module(pl), make_loader(), make_loader())
    messages = read_messages(tmp_path / "logged.jsonl")
    assert messages[0] == {**messages[0], "type": "hparams", "data": {"lr": 0.1}}
    metrics = [m["data"] for m in messages if m["type"] == "metrics"]
    steps = [d for d in metrics if "train_loss_step" in d["metrics"]]
    assert [d["step"] for d in steps] == list(range(8))
    assert all(d["epoch"] in (0, 1) for d in steps)
    epochs = [d for d in metrics if "train_loss_epoch" in d["metrics"]]
    assert [d["epoch"] for d in epochs] == [0, 1]
    vals = [d for d in metrics if "val_loss" in d["metrics"]]
    assert len(vals) == 2 and isinstance(vals[0]["metrics"]["val_acc"], float)
    assert logger.version == "logged" and logger.name == ""
    assert logger.log_dir == str(tmp_path) and logger.save_dir == str(tmp_path)


def test_jsonl_logger_puts_checkpoints_beside_the_run(pl: Any, tmp_path: Path) -> None:
    """With checkpointing on, Lightning writes checkpoints to <log_dir>/<experiment_id>/checkpoints."""
    logger = JsonlLogger(tmp_path, "ckpt", prefix="p")
    trainer = make_trainer(pl, logger=logger, max_epochs=1, enable_checkpointing=True)
    trainer.fit(make_module(pl), make_loader(), make_loader())
    assert list((tmp_path / "ckpt" / "checkpoints").glob("*.ckpt"))
    metrics = [
        m["data"]["metrics"]
        for m in read_messages(tmp_path / "ckpt.jsonl")
        if m["type"] == "metrics"
    ]
    assert all(name.startswith("p-") for d in metrics for name in d)


def test_jsonl_logger_finalize_without_use_creates_nothing(tmp_path: Path) -> None:
    """finalize on a logger that never logged is a no-op: no directory, no file."""
    logger = JsonlLogger(tmp_path / "runs", "idle")
    logger.finalize("success")
    logger.save()
    assert not (tmp_path / "runs").exists()


def test_jsonl_logger_reopens_after_finalize(tmp_path: Path) -> None:
    """A log call after finalize (trainer.test after fit) appends to the same file."""
    logger = JsonlLogger(tmp_path, "again")
    logger.log_metrics({"a": 1.0}, step=0)
    logger.finalize("success")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logger.log_metrics({"a": 2.0}, step=1)
        logger.log_hyperparams(SimpleNamespace(lr=0.5).__dict__)
    logger.finalize("success")
    messages = read_messages(tmp_path / "again.jsonl")
    assert [m["data"] for m in messages] == [
        {"step": 0, "metrics": {"a": 1.0}},
        {"step": 1, "metrics": {"a": 2.0}},
        {"lr": 0.5},
    ]


def test_both_write_one_file_when_they_share_an_id(pl: Any, tmp_path: Path) -> None:
    """RecorderCallback and JsonlLogger with the same id interleave whole lines in one file."""
    trainer = make_trainer(
        pl,
        callbacks=[RecorderCallback(tmp_path, "both")],
        logger=JsonlLogger(tmp_path, "both"),
        max_epochs=2,
    )
    trainer.fit(make_module(pl), make_loader(), make_loader())
    types = set(kinds(read_messages(tmp_path / "both.jsonl")))
    assert {
        "training_start",
        "hparams",
        "metrics",
        "epoch_end:train",
        "epoch_end:val",
        "training_end",
    } <= types


def test_a_rerun_under_a_used_id_gets_its_own_file_for_both(pl: Any, tmp_path: Path) -> None:
    """Callback and logger asking for an id that holds a run both write <id>-2, test() too."""
    earlier = tmp_path / "rerun.jsonl"
    earlier.write_bytes(b'{"type":"status","timestamp":"2026-01-01T00:00:00Z","data":{}}\n')
    callback, logger = RecorderCallback(tmp_path, "rerun"), JsonlLogger(tmp_path, "rerun")
    trainer = make_trainer(
        pl, callbacks=[callback], logger=logger, max_epochs=1, enable_checkpointing=True
    )
    module = make_module(pl)
    trainer.fit(module, make_loader(), make_loader())
    trainer.test(module, make_loader())
    assert callback.experiment_id == logger.version == logger.experiment_id == "rerun-2"
    assert callback.path == logger.path == str(tmp_path / "rerun-2.jsonl")
    assert len(read_messages(earlier)) == 1
    messages = read_messages(tmp_path / "rerun-2.jsonl")
    types = kinds(messages)
    assert {"training_start", "hparams", "metrics", "training_end", "epoch_end:test"} <= set(types)
    assert messages[types.index("training_start")]["data"]["experiment_id"] == "rerun-2"
    assert messages[types.index("training_end")]["data"]["run_id"] == "rerun-2"
    assert list((tmp_path / "rerun-2" / "checkpoints").glob("*.ckpt"))
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["rerun-2.jsonl", "rerun.jsonl"]


def test_resume_appends_to_the_run_for_both(pl: Any, tmp_path: Path) -> None:
    """resume=True: callback and logger append to <id>.jsonl after the lines already there."""
    earlier = tmp_path / "resumed.jsonl"
    earlier.write_bytes(b'{"type":"status","timestamp":"2026-01-01T00:00:00Z","data":{}}\n')
    trainer = make_trainer(
        pl,
        callbacks=[RecorderCallback(tmp_path, "resumed", resume=True)],
        logger=JsonlLogger(tmp_path, "resumed", resume=True),
        max_epochs=1,
    )
    trainer.fit(make_module(pl), make_loader(), make_loader())
    types = kinds(read_messages(earlier))
    assert types[0] == "status" and {"training_start", "metrics", "training_end"} <= set(types)
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["resumed.jsonl"]


@pytest.mark.parametrize(
    ("metrics", "default", "want"),
    [
        (
            {"train_loss": 1.0, "val_loss": 2.0, "test_loss": 3.0},
            "train",
            {"train": {"loss": 1.0}, "val": {"loss": 2.0}, "test": {"loss": 3.0}},
        ),
        (
            {"train/acc": 0.5, "val/acc": 0.6, "validation_f1": 0.7},
            "train",
            {"train": {"acc": 0.5}, "val": {"acc": 0.6, "f1": 0.7}, "test": {}},
        ),
        (
            {"train_loss": 0.9, "train_loss_step": 0.8, "train_loss_epoch": 0.9},
            "train",
            {"train": {"loss": 0.9}, "val": {}, "test": {}},
        ),
        (
            {"loss": 1.5, "lr_step": 0.1},
            "test",
            {"train": {}, "val": {}, "test": {"loss": 1.5, "lr_step": 0.1}},
        ),
        (
            {"trainer_thing": 1.0, "val_": 2.0},
            "train",
            {"train": {"trainer_thing": 1.0, "val_": 2.0}, "val": {}, "test": {}},
        ),
    ],
)
def test_split_metrics_rule(metrics: dict[str, float], default: str, want: dict[str, Any]) -> None:
    """Prefixes train/val/test (with _ or /) pick the phase and are dropped; _epoch/_step twins merge."""
    assert split_metrics(metrics, default) == want


def test_split_metrics_turns_tensors_into_floats() -> None:
    """Tensor values come out as Python floats."""
    import torch

    out = split_metrics({"val_loss": torch.tensor(0.25)})
    assert out["val"] == {"loss": 0.25}
    assert type(out["val"]["loss"]) is float


@pytest.mark.slow
def test_under_ddp_only_rank_zero_writes_unless_per_rank(tmp_path: Path) -> None:
    """A 2-process DDP (spawn, gloo, CPU) fit writes one set of messages, or one file per rank with per_rank."""
    pl = import_pl("lightning.pytorch")
    single = RecorderCallback(tmp_path, "single")
    per_rank = RecorderCallback(tmp_path, "ranked", per_rank=True)
    trainer = make_trainer(
        pl,
        callbacks=[single, per_rank],
        logger=JsonlLogger(tmp_path, "single"),
        strategy="ddp_spawn",
        devices=2,
        max_epochs=2,
    )
    trainer.fit(ddp_module("lightning.pytorch"), make_loader(), make_loader())
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == [
        "ranked.rank0.jsonl",
        "ranked.rank1.jsonl",
        "single.jsonl",
    ]
    types = kinds(read_messages(tmp_path / "single.jsonl"))
    assert types.count("training_start") == 1
    assert types.count("hparams") == 1
    assert types.count("epoch_end:train") == 2 and types.count("epoch_end:val") == 2
    assert types[-2:] == ["training_end", "status"]
    for rank in (0, 1):
        ranked = kinds(read_messages(tmp_path / f"ranked.rank{rank}.jsonl"))
        assert ranked[0] == "training_start" and ranked[-2:] == ["training_end", "status"]
        assert ranked.count("epoch_end:train") == 2


def test_a_pickled_callback_and_logger_keep_their_claimed_run(tmp_path: Path) -> None:
    """Pickled after claiming <id>-2 (DDP spawn), callback and logger reopen <id>-2, not -3."""
    import pickle
    import subprocess

    (tmp_path / "sent.jsonl").write_bytes(b'{"type":"x","timestamp":"","data":{}}\n')
    callback, logger = RecorderCallback(tmp_path, "sent"), JsonlLogger(tmp_path, "sent")
    trainer = SimpleNamespace(is_global_zero=True, global_rank=0, callback_metrics={})
    callback.setup(trainer, None, "fit")
    logger.log_metrics({"a": 1.0}, step=0)
    assert callback.experiment_id == logger.version == "sent-2"
    callback.teardown(trainer, None, "fit")
    logger.finalize("success")
    state = pickle.dumps((callback, logger))
    child = (
        "import pickle, sys; from types import SimpleNamespace as N; "
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
        "callback, logger = pickle.loads(sys.stdin.buffer.read()); "
        "t = N(is_global_zero=True, global_rank=0, callback_metrics={}); "
        "callback.setup(t, None, 'test'); callback._emit('epoch_end', {'phase': 'test'}); "
        "callback.teardown(t, None, 'test'); logger.log_metrics({'a': 2.0}, step=1); "
        "logger.finalize('success'); print(callback.path, logger.path)"
    )
    out = subprocess.run(
        [sys.executable, "-c", child], input=state, capture_output=True, timeout=120, check=True
    )
    assert out.stdout.decode().split() == [str(tmp_path / "sent-2.jsonl")] * 2
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["sent-2.jsonl", "sent.jsonl"]
    types = [m["type"] for m in read_messages(tmp_path / "sent-2.jsonl")]
    assert types == ["metrics", "epoch_end", "metrics"]
