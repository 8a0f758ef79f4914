"""Record a Flower federated run: a strategy wrapper for the server, a callback for clients.

This module imports :mod:`flwr`; ``import recorder`` never loads it. Import it
explicitly where Flower is installed (``pip install runtail[flower]``)::

    from recorder import MetricsRecorder
    from recorder.flower import RecordingStrategy

    with MetricsRecorder("runs", "federated-digits") as rec:
        strategy = RecordingStrategy(FedAvg(fraction_train=1.0), rec)
        result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=5)

:class:`RecordingStrategy` is itself a :class:`flwr.serverapp.strategy.Strategy`
of Flower's message API. It hands every call to the strategy it wraps and
returns exactly what that strategy returns, while the run's file gets (DESIGN
§6)::

    training_mode {is_federated: true, num_rounds, num_clients}
    training_start {strategy, num_rounds, num_clients, strategy_config}
    status {status: "running"}
    round_metrics {round: 0, ...}                  # evaluate_fn on the initial arrays
    per round r = 1..num_rounds:
      round_start {round, total_rounds}
      client_training_start {round, client_id}    # one per sampled node
      client_complete {round, client_id, metrics, num_examples}  # one per train reply
                                                  # (error instead of metrics for an error
                                                  # reply, or no reply before the timeout)
      round_end {round, total_rounds, fit_metrics, eval_metrics}
      round_metrics {round, total_rounds, metrics}  # each evaluate_fn result
    training_end {run_id, ...}, status {status: "completed"}
    (on an exception: error {error, error_type, traceback, round}, status {status: "failed"};
     the round it interrupted gets no round_end, and the exception goes on unchanged)

``client_id`` is Flower's node id as a decimal string: node ids are unsigned
64-bit integers, beyond int64 and beyond JavaScript's exact integers.

On the client side, :func:`client_callback` builds a
:class:`recorder.lightning.RecorderCallback` tagged with the node id and the
server round, so that a ClientApp's Lightning epochs land in the same
experiment file as ``local_epoch`` messages (one ``O_APPEND`` write per
message keeps the lines of several processes whole).
"""

from __future__ import annotations

import logging
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

if TYPE_CHECKING:
    from recorder.lightning import RecorderCallback

__all__ = [
    "CONFIG_EXPERIMENT_ID",
    "CONFIG_LOG_DIR",
    "RecordingStrategy",
    "client_callback",
    "client_config",
]

logger = logging.getLogger(__name__)

#: ConfigRecord keys through which a server tells its clients where to record.
CONFIG_EXPERIMENT_ID = "runtail-experiment-id"
CONFIG_LOG_DIR = "runtail-log-dir"

# The Strategy methods the server loop calls and the wrapper records around.
_HOOKED = ("configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate")
_MISSING = object()


def _metrics_dict(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """A plain dict of a MetricRecord's values (``{}`` for ``None``)."""
    if record is None:
        return {}
    return {str(key): value for key, value in record.items()}


def _settings_of(strategy: Strategy) -> dict[str, Any]:
    """A strategy's plain public settings (fractions, minimum nodes, keys, learning rates)."""
    try:
        items = vars(strategy).items()
    except TypeError:
        return {}
    return {
        name: value
        for name, value in items
        if not name.startswith("_") and isinstance(value, (bool, int, float, str))
    }


def _node_id(value: object) -> str:
    """A node id as the decimal string runtail records."""
    return str(value)


class RecordingStrategy(Strategy):
    """A Flower strategy that records the federated run while another strategy runs it.

    Args:
        strategy: any strategy of Flower's message API (``FedAvg``,
            ``FedProx``, ``FedAdam``, a subclass of your own, ...). Every
            call is delegated to it and its results are returned unchanged.
        recorder: where the messages go: a
            :class:`recorder.recorder.MetricsRecorder`, or any object with a
            ``record(type, data)`` method.
        num_clients: the ``num_clients`` of the ``training_mode`` message.
            By default the number of nodes connected when :meth:`start`
            begins, or the strategy's ``min_available_nodes`` if that is
            more (the strategy waits for that many; nodes may still be
            connecting). Pass it when you know how many nodes take part.

    Raises:
        TypeError: ``strategy`` is not a Flower message-API strategy, or
            ``recorder`` has no ``record`` method.

    Recording never raises into the server: a recorder that fails costs a
    warning. Use the wrapper as the outermost strategy; attributes it does
    not define (``fraction_train``, ``weighted_by_key``, ...) are read from
    the wrapped strategy.
    """

    def __init__(
        self, strategy: Strategy, recorder: Any, *, num_clients: int | None = None
    ) -> None:
        if not isinstance(strategy, Strategy):
            raise TypeError(
                "RecordingStrategy wraps a flwr.serverapp.strategy.Strategy (Flower's message "
                f"API), not {type(strategy).__module__}.{type(strategy).__qualname__}"
            )
        if not callable(getattr(recorder, "record", None)):
            raise TypeError(
                f"recorder must have a record(type, data) method (a MetricsRecorder), not {recorder!r}"
            )
        if num_clients is not None and (
            not isinstance(num_clients, int) or isinstance(num_clients, bool) or num_clients < 0
        ):
            raise ValueError(f"num_clients must be a non-negative int, not {num_clients!r}")
        self.strategy = strategy
        self.recorder = recorder
        self.num_clients = num_clients
        self._originals: dict[str, Callable[..., Any]] = {}
        self._total_rounds: int | None = None
        self._round: int | None = None  # the round begun by configure_train and not yet ended
        self._fit_metrics: dict[str, Any] = {}
        self._eval_metrics: dict[str, Any] = {}
        self._sampled: dict[str, None] = {}  # node ids sent a train message this round
        self._rounds_completed = 0
        self._last_fit: dict[str, Any] = {}
        self._last_eval: dict[str, Any] = {}
        self._last_server: dict[str, Any] = {}
        self._warned = False

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found normally: read them from the wrapped strategy.
        strategy = self.__dict__.get("strategy")
        if strategy is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(strategy, name)

    def __repr__(self) -> str:
        return f"RecordingStrategy({self.strategy!r})"

    # ------------------------------------------------------------------ Strategy API

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's train messages; records the round's start and its nodes."""
        return self._configure_train(
            self._inner("configure_train"), server_round, arrays, config, grid
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The wrapped strategy's aggregation; records every reply and the aggregated metrics."""
        return self._aggregate_train(self._inner("aggregate_train"), server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluate messages."""
        return self._configure_evaluate(
            self._inner("configure_evaluate"), server_round, arrays, config, grid
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The wrapped strategy's evaluation metrics; records the round's end."""
        return self._aggregate_evaluate(self._inner("aggregate_evaluate"), server_round, replies)

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        **kwargs: Any,
    ) -> Result:
        """Run the wrapped strategy's own ``start`` loop and record it; return its :class:`Result`.

        The wrapped strategy's methods are hooked for the duration of the
        call (on the instance, restored afterwards), so its own loop, even an
        overridden one, drives the recording. ``evaluate_fn`` is wrapped to
        record each of its results as ``round_metrics``. An exception is
        recorded (``error`` with traceback, ``status`` failed) and re-raised
        unchanged.
        """
        self._reset(num_rounds)
        started = time.monotonic()
        self._record_start(grid, num_rounds)
        wrapped_fn = None if evaluate_fn is None else self._wrap_evaluate_fn(evaluate_fn)
        try:
            with self._hooks() as hooked:
                target = self.strategy.start if hooked else self._start_here
                result = target(
                    grid=grid,
                    initial_arrays=initial_arrays,
                    num_rounds=num_rounds,
                    timeout=timeout,
                    train_config=train_config,
                    evaluate_config=evaluate_config,
                    evaluate_fn=wrapped_fn,
                    **kwargs,
                )
        except BaseException as exc:
            self._record_failure(exc)
            raise
        self._close_round()
        self._record_end(num_rounds, time.monotonic() - started)
        return result

    # ------------------------------------------------------------------ hooks

    def _inner(self, name: str) -> Callable[..., Any]:
        """The wrapped strategy's own method ``name`` (never one of our hooks)."""
        original = self._originals.get(name)
        return original if original is not None else getattr(self.strategy, name)

    @contextmanager
    def _hooks(self) -> Iterator[bool]:
        """Route the wrapped strategy's four methods through the recording, on the instance.

        Yields whether that worked; a strategy whose instance takes no
        attributes (``__slots__``) is run by the base loop over this
        wrapper's methods instead.
        """
        strategy = self.strategy
        saved: dict[str, Any] = {}
        hooked_all = True
        hooks = {
            "configure_train": self._configure_train,
            "aggregate_train": self._aggregate_train,
            "configure_evaluate": self._configure_evaluate,
            "aggregate_evaluate": self._aggregate_evaluate,
        }
        try:
            for name in _HOOKED:
                self._originals[name] = getattr(strategy, name)
                saved[name] = vars(strategy).get(name, _MISSING)
                hook = hooks[name]
                original = self._originals[name]

                def hooked(
                    *args: Any, _hook: Any = hook, _original: Any = original, **kw: Any
                ) -> Any:
                    return _hook(_original, *args, **kw)

                setattr(strategy, name, hooked)
        except (AttributeError, TypeError):
            hooked_all = False
            self._unhook(saved)
        try:
            yield hooked_all
        finally:
            self._unhook(saved)

    def _unhook(self, saved: dict[str, Any]) -> None:
        for name, previous in saved.items():
            try:
                if previous is _MISSING:
                    vars(self.strategy).pop(name, None)
                else:
                    setattr(self.strategy, name, previous)
            except (AttributeError, TypeError):
                pass
        self._originals.clear()

    def _start_here(self, **kwargs: Any) -> Result:
        """Flower's own loop over this wrapper's (delegating, recording) methods."""
        return Strategy.start(self, **kwargs)

    def _configure_train(
        self,
        original: Callable[..., Iterable[Message]],
        server_round: int,
        *args: Any,
        **kwargs: Any,
    ) -> Iterable[Message]:
        messages = original(server_round, *args, **kwargs)
        if not isinstance(messages, (list, tuple)):
            messages = list(messages)  # a generator would be spent by recording it
        self._safely(self._record_configure_train, server_round, messages)
        return messages

    def _aggregate_train(
        self,
        original: Callable[..., Any],
        server_round: int,
        replies: Iterable[Message],
        *args: Any,
        **kwargs: Any,
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if not isinstance(replies, (list, tuple)):
            replies = list(replies)
        self._safely(self._record_replies, server_round, replies)
        aggregated = original(server_round, replies, *args, **kwargs)
        self._safely(self._note_fit_metrics, server_round, aggregated)
        return aggregated

    def _configure_evaluate(
        self,
        original: Callable[..., Iterable[Message]],
        server_round: int,
        *args: Any,
        **kwargs: Any,
    ) -> Iterable[Message]:
        return original(server_round, *args, **kwargs)

    def _aggregate_evaluate(
        self, original: Callable[..., Any], server_round: int, *args: Any, **kwargs: Any
    ) -> MetricRecord | None:
        metrics = original(server_round, *args, **kwargs)
        self._safely(self._note_eval_metrics, server_round, metrics)
        return metrics

    def _wrap_evaluate_fn(
        self, evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None]
    ) -> Callable[[int, ArrayRecord], MetricRecord | None]:
        def recording_evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            metrics = evaluate_fn(server_round, arrays)
            if metrics is not None:
                self._safely(self._record_server_metrics, server_round, metrics)
            return metrics

        recording_evaluate_fn.__wrapped__ = evaluate_fn  # type: ignore[attr-defined]
        return recording_evaluate_fn

    # ------------------------------------------------------------------ what is recorded

    def _reset(self, num_rounds: int) -> None:
        self._total_rounds = num_rounds
        self._round = None
        self._fit_metrics, self._eval_metrics = {}, {}
        self._sampled = {}
        self._rounds_completed = 0
        self._last_fit, self._last_eval, self._last_server = {}, {}, {}

    def _record(self, type: str, data: dict[str, Any]) -> None:
        try:
            self.recorder.record(type, data)
        except Exception as exc:  # the recorder must never stop the server
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"runtail: recording a {type!r} message failed ({exc!r}); "
                    "the federated run goes on",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def _safely(self, fn: Callable[..., None], *args: Any) -> None:
        """Run a recording step; a bug in reading a message never reaches the server."""
        try:
            fn(*args)
        except Exception:
            logger.warning("runtail: could not record a federated event", exc_info=True)

    def _count_clients(self, grid: Grid) -> int:
        if self.num_clients is not None:
            return self.num_clients
        try:
            connected = len(list(grid.get_node_ids()))
        except Exception:
            connected = 0
        # The strategy waits for min_available_nodes before its first round; nodes may
        # still be connecting when start() begins.
        minimum = getattr(self.strategy, "min_available_nodes", 0)
        return max(connected, minimum if isinstance(minimum, int) else 0)

    def _record_start(self, grid: Grid, num_rounds: int) -> None:
        num_clients = self._count_clients(grid)
        self._record(
            "training_mode",
            {"is_federated": True, "num_rounds": num_rounds, "num_clients": num_clients},
        )
        self._record(
            "training_start",
            {
                "strategy": type(self.strategy).__name__,
                "num_rounds": num_rounds,
                "num_clients": num_clients,
                "strategy_config": _settings_of(self.strategy),
            },
        )
        self._record(
            "status",
            {"status": "running", "message": f"Federated training: {num_rounds} rounds"},
        )

    def _open_round(self, server_round: int) -> None:
        """Begin ``server_round`` (ending the one before if nothing ended it)."""
        if self._round == server_round:
            return
        self._close_round()
        self._round = server_round
        self._fit_metrics, self._eval_metrics = {}, {}
        self._sampled = {}
        self._record("round_start", {"round": server_round, "total_rounds": self._total_rounds})

    def _close_round(self) -> None:
        if self._round is None:
            return
        server_round, self._round = self._round, None
        self._rounds_completed += 1
        self._last_fit, self._last_eval = self._fit_metrics, self._eval_metrics
        self._record(
            "round_end",
            {
                "round": server_round,
                "total_rounds": self._total_rounds,
                "fit_metrics": self._fit_metrics,
                "eval_metrics": self._eval_metrics,
            },
        )

    def _record_configure_train(self, server_round: int, messages: list[Message]) -> None:
        self._open_round(server_round)
        for message in messages:
            client_id = _node_id(message.metadata.dst_node_id)
            self._sampled[client_id] = None
            self._record("client_training_start", {"round": server_round, "client_id": client_id})

    def _record_replies(self, server_round: int, replies: list[Message]) -> None:
        self._open_round(server_round)
        answered: set[str] = set()
        for reply in replies:
            client_id = _node_id(reply.metadata.src_node_id)
            answered.add(client_id)
            data: dict[str, Any] = {"round": server_round, "client_id": client_id}
            if reply.has_error():
                error = reply.error
                data["error"] = error.reason or f"error code {error.code}"
                data["error_code"] = error.code
            else:
                metrics, num_examples = self._reply_metrics(reply)
                data["metrics"] = metrics
                data["num_examples"] = num_examples
            self._record("client_complete", data)
        for client_id in self._sampled:
            if client_id not in answered:  # the round's timeout passed without its reply
                self._record(
                    "client_complete",
                    {
                        "round": server_round,
                        "client_id": client_id,
                        "error": "no reply before the round's timeout",
                    },
                )

    def _reply_metrics(self, reply: Message) -> tuple[dict[str, Any], Any]:
        """A reply's metrics (flat for one MetricRecord, by record name for several) and weight."""
        # Straight from the RecordDict: its metric_records view costs a copy per call.
        records = (
            {name: r for name, r in reply.content.items() if isinstance(r, MetricRecord)}
            if reply.has_content()
            else {}
        )
        if len(records) == 1:
            metrics: dict[str, Any] = _metrics_dict(next(iter(records.values())))
            flat = metrics
        else:
            metrics = {name: _metrics_dict(record) for name, record in records.items()}
            flat = {k: v for record in metrics.values() for k, v in record.items()}
        weight_key = getattr(self.strategy, "weighted_by_key", None)
        for key in (weight_key, "num-examples", "num_examples"):
            if isinstance(key, str) and key in flat:
                return metrics, flat[key]
        return metrics, None

    def _note_fit_metrics(self, server_round: int, aggregated: Any) -> None:
        self._open_round(server_round)
        metrics = aggregated[1] if isinstance(aggregated, tuple) and len(aggregated) == 2 else None
        self._fit_metrics = _metrics_dict(metrics)

    def _note_eval_metrics(self, server_round: int, metrics: MetricRecord | None) -> None:
        if self._round is None or self._round != server_round:
            # Evaluation without a train stage this round (a custom loop): still one round.
            self._open_round(server_round)
        self._eval_metrics = _metrics_dict(metrics)
        self._close_round()

    def _record_server_metrics(self, server_round: int, metrics: MetricRecord) -> None:
        values = _metrics_dict(metrics)
        self._last_server = values
        self._record(
            "round_metrics",
            {"round": server_round, "total_rounds": self._total_rounds, "metrics": values},
        )

    def _record_end(self, num_rounds: int, seconds: float) -> None:
        summary: dict[str, Any] = {
            "run_id": self._run_id(),
            "num_rounds": num_rounds,
            "rounds_completed": self._rounds_completed,
            "duration_seconds": round(seconds, 3),
            "final_fit_metrics": self._last_fit,
            "final_eval_metrics": self._last_eval,
        }
        if self._last_server:
            summary["final_server_metrics"] = self._last_server
        self._record("training_end", summary)
        self._record(
            "status",
            {
                "status": "completed",
                "message": f"Federated training finished: {self._rounds_completed} rounds",
            },
        )

    def _record_failure(self, exc: BaseException) -> None:
        where = f" in round {self._round}" if self._round is not None else ""
        self._record(
            "error",
            {
                "error": str(exc) or type(exc).__name__,
                "error_type": type(exc).__name__,
                "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                "round": self._round,
            },
        )
        self._record(
            "status",
            {
                "status": "failed",
                "message": f"Federated training failed{where}: {type(exc).__name__}: {exc}",
            },
        )
        self._round = None

    def _run_id(self) -> str | None:
        experiment_id = getattr(self.recorder, "experiment_id", None)
        if isinstance(experiment_id, str):
            return experiment_id
        path = getattr(self.recorder, "path", None)
        return Path(path).stem if path is not None else None


# ---------------------------------------------------------------------- clients


def client_config(recorder: Any) -> dict[str, str]:
    """The ConfigRecord entries that tell clients which experiment file to record into.

    Put them in the ``train_config`` (and ``evaluate_config``) given to
    :meth:`RecordingStrategy.start`; :func:`client_callback` reads them. The
    log directory is the server's: clients that share its filesystem (a
    simulation, or nodes on one shared disk) then write one file together.
    """
    path = getattr(recorder, "path", None)
    if path is None:
        raise TypeError(f"recorder must have a path (a MetricsRecorder), not {recorder!r}")
    path = Path(path)
    return {CONFIG_EXPERIMENT_ID: path.stem, CONFIG_LOG_DIR: str(path.parent.resolve())}


def client_callback(
    message: Message,
    context: Any,
    *,
    log_dir: str | Path | None = None,
    experiment_id: str | None = None,
    **kwargs: Any,
) -> RecorderCallback:
    """A :class:`~recorder.lightning.RecorderCallback` for a ClientApp's Lightning ``Trainer``.

    Every message it records carries ``client_id`` (``context.node_id`` as a
    decimal string, the same id the server records) and ``round`` (the
    ``server-round`` FedAvg and its kind put in the message's config), and
    its epochs become ``local_epoch`` messages.

    Args:
        message: the train (or evaluate) message the ClientApp received.
        context: the ClientApp's :class:`flwr.app.Context`.
        log_dir, experiment_id: where to record; by default what the server
            sent with :func:`client_config` (``runs`` and a new id if nothing).
        **kwargs: passed on to ``RecorderCallback``; ``resume`` is ``True``
            unless given: the clients append to the run the server started.
    """
    from recorder.lightning import RecorderCallback

    config: Mapping[str, Any] = {}
    if message.has_content():
        for record in message.content.config_records.values():
            config = {**record, **config}
    if log_dir is None:
        log_dir = config.get(CONFIG_LOG_DIR, "runs")
    if experiment_id is None:
        experiment_id = config.get(CONFIG_EXPERIMENT_ID)
    server_round = config.get("server-round")
    kwargs.setdefault("resume", True)
    return RecorderCallback(
        log_dir=log_dir,
        experiment_id=experiment_id,
        client_id=_node_id(context.node_id),
        round=int(server_round) if server_round is not None else None,
        **kwargs,
    )
