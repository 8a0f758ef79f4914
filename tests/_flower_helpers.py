"""Shared pieces of the Flower tests: an in-process Grid, a list recorder, message helpers.

The in-process grid answers every message at once by calling a Python
function, so the recording strategy's logic is tested in milliseconds; the
real Simulation Runtime (Ray) is exercised in ``test_flower_simulation.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from recorder.format import decode_line, encode_message

# Node ids as Flower makes them: unsigned 64-bit, some beyond int64 and 2**53.
NODE_IDS = (18_446_744_073_709_551_557, 9_007_199_254_740_993, 42)

Handler = Callable[[Message], Message | None]


def train_reply(message: Message, *, loss: float, num_examples: int, delta: float) -> Message:
    """A well-formed train reply: the arrays plus ``delta``, one MetricRecord."""
    arrays = message.content["arrays"]
    updated = ArrayRecord([a + delta for a in arrays.to_numpy_ndarrays()])
    metrics = MetricRecord({"loss": loss, "accuracy": loss / 10, "num-examples": num_examples})
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=message)


def evaluate_reply(message: Message, *, loss: float, num_examples: int) -> Message:
    """A well-formed evaluate reply with one MetricRecord."""
    metrics = MetricRecord({"eval_loss": loss, "num-examples": num_examples})
    return Message(RecordDict({"metrics": metrics}), reply_to=message)


def error_reply(message: Message, reason: str) -> Message:
    """A reply that carries an Error instead of content, as a failing ClientApp gives."""
    return Message(Error(code=2, reason=reason), reply_to=message)


def default_handler(message: Message) -> Message:
    """Node ``i`` of NODE_IDS trains with loss ``i + 1`` on ``i + 1`` examples."""
    index = NODE_IDS.index(message.metadata.dst_node_id)
    if message.metadata.message_type.startswith("train"):
        return train_reply(message, loss=float(index + 1), num_examples=index + 1, delta=index + 1)
    return evaluate_reply(message, loss=0.5 * (index + 1), num_examples=index + 1)


def _set_task_identity() -> None:
    """Give this process the server task identity Flower's messages are stamped with.

    The Simulation Runtime does this before it runs a ServerApp; without it,
    creating a Message raises.
    """
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    if TaskIdentity._run_id is None:
        TaskIdentity.run_id = 1
        TaskIdentity.task_id = 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID


class InProcessGrid(Grid):
    """A Grid whose nodes are a Python function; a handler returning None means no reply."""

    def __init__(self, handler: Handler = default_handler, node_ids: Iterable[int] = NODE_IDS):
        _set_task_identity()
        self.handler = handler
        self.node_ids = list(node_ids)
        self.sent: list[Message] = []

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return getattr(self, "_run", None)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            reply = self.handler(message)
            if reply is not None:
                replies.append(reply)
        return replies


class ListRecorder:
    """A recorder that keeps ``(type, data)`` pairs, each checked to encode as a line."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def record(self, type: str, data: Any = None) -> None:
        decode_line(encode_message(type, data))  # must be a valid runtail line
        self.messages.append((type, data))

    def types(self) -> list[str]:
        return [kind for kind, _ in self.messages]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self.messages if k == kind]


def initial_arrays() -> ArrayRecord:
    """Small integer-valued arrays: weighted sums with power-of-two weights stay exact."""
    return ArrayRecord([np.zeros((2, 3), dtype=np.float64), np.arange(4, dtype=np.float64)])


def expected_round_types(num_clients: int, *, server_eval: bool) -> list[str]:
    """The message types one round records, in order, when every node replies."""
    return (
        ["round_start"]
        + ["client_training_start"] * num_clients
        + ["client_complete"] * num_clients
        + ["round_end"]
        + (["round_metrics"] if server_eval else [])
    )
