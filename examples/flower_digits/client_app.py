"""The ClientApp: local Lightning training on one digits shard, recorded with RecorderCallback.

Each ``train`` message carries the global model and a config: ``local-epochs``,
``lr``, ``batch-size``, ``server-round`` (FedAvg adds it) and, when the
server records, where to record (:func:`recorder.flower.client_config`). The
Trainer then gets a ``RecorderCallback`` tagged with this node's id and the
round, so its epochs land in the server's experiment file as
``local_epoch {client_id, round, local_epoch, metrics}``, written from this
process alongside the server's own messages.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from examples.flower_digits import task
from recorder.flower import CONFIG_EXPERIMENT_ID, client_callback

app = ClientApp()


def _setup(message: Message, context: Context) -> tuple[task.DigitsMLP, dict, int, int]:
    torch.set_num_threads(1)  # one core per client keeps a small machine responsive
    task.quiet_lightning()
    config = dict(message.content["config"])
    model = task.DigitsMLP(lr=float(config.get("lr", 0.05)))
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    return model, config, partition_id, num_partitions


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train the received model for ``local-epochs`` on this node's shard; reply with it."""
    model, config, partition_id, num_partitions = _setup(message, context)
    train_set, val_set = task.partition(partition_id, num_partitions)
    server_round = int(config.get("server-round", 0))
    task.pl.seed_everything(1000 * server_round + partition_id, verbose=False)

    callbacks = []
    if CONFIG_EXPERIMENT_ID in config:  # the server records: so do we, into its file
        callbacks.append(client_callback(message, context))
    trainer = task.pl.Trainer(
        max_epochs=int(config.get("local-epochs", 1)),
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    batch_size = int(config.get("batch-size", 32))
    trainer.fit(
        model,
        task.loader(train_set, batch_size, shuffle=True),
        task.loader(val_set, batch_size),
    )

    logged = trainer.callback_metrics
    metrics = MetricRecord(
        {
            "train_loss": float(logged["train_loss"]),
            "train_acc": float(logged["train_acc"]),
            "val_loss": float(logged["val_loss"]),
            "val_acc": float(logged["val_acc"]),
            "num-examples": len(train_set),
        }
    )
    arrays = ArrayRecord(model.state_dict())
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the received global model on this node's validation set."""
    model, _, partition_id, num_partitions = _setup(message, context)
    _, val_set = task.partition(partition_id, num_partitions)
    loss, accuracy = task.evaluate(model, val_set)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(val_set)})
    return Message(RecordDict({"metrics": metrics}), reply_to=message)
