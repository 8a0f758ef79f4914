"""Federated clients recording with Lightning: client_callback's tagging, several writer processes.

Two client processes (spawned, as Ray's workers are separate processes) each
train a tiny Lightning model for two rounds with
:func:`recorder.flower.client_callback`, while this process records server
messages into the same file. Every line must come out whole and every client
message must carry its own node id and round.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("flwr")
if importlib.util.find_spec("lightning") is None:  # found, not imported: collection stays fast
    pytest.skip("needs lightning", allow_module_level=True)

from recorder.format import decode_line

# Node ids beyond int64 and beyond 2**53, as Flower hands them out.
CLIENTS = (18_446_744_073_709_551_557, 9_007_199_254_740_993)
ROUNDS = (1, 2)
EPOCHS = 2


def _message(log_dir: Path, experiment_id: str, server_round: int) -> Any:
    """A train message as FedAvg sends it: config with server-round and the runtail keys."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from recorder.flower import CONFIG_EXPERIMENT_ID, CONFIG_LOG_DIR

    if TaskIdentity._run_id is None:
        TaskIdentity.run_id, TaskIdentity.task_id = 1, 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID
    config = ConfigRecord(
        {
            "server-round": server_round,
            CONFIG_EXPERIMENT_ID: experiment_id,
            CONFIG_LOG_DIR: str(log_dir),
        }
    )
    return Message(RecordDict({"config": config}), 1, "train")


def _client_process(node_id: int, log_dir: str, experiment_id: str) -> None:
    """One federated client: two rounds of a tiny Lightning fit, recorded via client_callback."""
    import logging

    import lightning.pytorch as pl
    import torch
    from flwr.app import Context, RecordDict

    from recorder.flower import client_callback

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.layer(x), y)
            self.log("train_loss", loss, on_epoch=True, on_step=False)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.layer(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    context = Context(run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={})
    for server_round in ROUNDS:
        message = _message(Path(log_dir), experiment_id, server_round)
        trainer = pl.Trainer(
            max_epochs=EPOCHS,
            callbacks=[client_callback(message, context)],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            accelerator="cpu",
            devices=1,
        )
        loader = torch.utils.data.DataLoader(data, batch_size=4)
        trainer.fit(Tiny(), loader, loader)


@pytest.mark.slow
def test_two_client_processes_and_the_server_share_one_file(tmp_path):
    """Clients in two processes tag every message with their node id and round; no line tears."""
    from recorder.recorder import MetricsRecorder

    experiment_id = "federated-shared"
    spawn = multiprocessing.get_context("spawn")
    workers = [
        spawn.Process(target=_client_process, args=(node, str(tmp_path), experiment_id))
        for node in CLIENTS
    ]
    server_lines = 0
    with MetricsRecorder(tmp_path, experiment_id) as rec:  # the server starts the run
        for worker in workers:
            worker.start()  # the clients append to it (client_callback passes resume=True)
        try:
            # The server keeps writing while the clients train.
            while any(w.is_alive() for w in workers):
                rec.record("round_metrics", {"round": 1, "total_rounds": 2, "metrics": {"x": 1.0}})
                server_lines += 1
                for worker in workers:
                    worker.join(timeout=0.01)
        finally:
            for worker in workers:
                worker.join(timeout=120)
                if worker.is_alive():
                    worker.kill()
    assert [w.exitcode for w in workers] == [0, 0]

    raw = (tmp_path / f"{experiment_id}.jsonl").read_bytes()
    messages = [decode_line(line) for line in raw.splitlines()]  # every line whole
    assert sum(m["type"] == "round_metrics" for m in messages) == server_lines
    client_messages = [m for m in messages if m["type"] != "round_metrics"]
    assert all(m["data"]["client_id"] in {str(c) for c in CLIENTS} for m in client_messages)
    assert all(isinstance(m["data"]["round"], int) for m in client_messages)
    # No run-level status from the clients: only the server decides the run's status.
    assert not {"training_start", "training_end", "status"} & {m["type"] for m in client_messages}
    for client in CLIENTS:
        for server_round in ROUNDS:
            epochs = [
                m["data"]
                for m in client_messages
                if m["type"] == "local_epoch"
                and m["data"]["client_id"] == str(client)
                and m["data"]["round"] == server_round
            ]
            assert sorted((e["local_epoch"], e["phase"]) for e in epochs) == [
                (epoch, phase) for epoch in range(EPOCHS) for phase in ("train", "val")
            ]
            assert all("loss" in e["metrics"] for e in epochs)


def test_client_callback_reads_round_and_destination_from_the_message(tmp_path):
    """client_callback takes node id, round, log dir and experiment id from message and context."""
    pytest.importorskip("torch")
    from flwr.app import Context, RecordDict

    from recorder.flower import client_callback

    message = _message(tmp_path, "exp-from-server", 3)
    context = Context(
        run_id=1, node_id=CLIENTS[0], node_config={}, state=RecordDict(), run_config={}
    )
    callback = client_callback(message, context)
    assert callback.client_id == str(CLIENTS[0])
    assert callback.round == 3
    assert callback.experiment_id == "exp-from-server"
    assert Path(callback.path) == tmp_path / "exp-from-server.jsonl"
    # The server's run already holds lines: the client appends to it, not to a new -2.
    (tmp_path / "exp-from-server.jsonl").write_bytes(b'{"type":"x","timestamp":"","data":{}}\n')
    callback.setup(SimpleNamespace(is_global_zero=True, global_rank=0), None, "fit")
    assert callback.recorder.path == tmp_path / "exp-from-server.jsonl"
    callback.teardown(SimpleNamespace(callback_metrics={}), None, "fit")
    # Explicit arguments win over what the server sent.
    other = client_callback(message, context, log_dir=tmp_path / "own", experiment_id="mine")
    assert Path(other.path) == tmp_path / "own" / "mine.jsonl"


def test_client_config_names_the_recorders_file(tmp_path):
    """client_config gives the experiment id and the absolute log dir of a MetricsRecorder."""
    from recorder.flower import CONFIG_EXPERIMENT_ID, CONFIG_LOG_DIR, client_config
    from recorder.recorder import MetricsRecorder

    with MetricsRecorder(tmp_path / "runs", "exp-1") as rec:
        config = client_config(rec)
    assert config == {
        CONFIG_EXPERIMENT_ID: "exp-1",
        CONFIG_LOG_DIR: str((tmp_path / "runs").resolve()),
    }
    with pytest.raises(TypeError, match="path"):
        client_config(object())
