"""Lightning integration: :class:`RecorderCallback` and :class:`JsonlLogger`.

Both work with a ``Trainer`` from either Lightning distribution,
``import pytorch_lightning as pl`` and ``import lightning.pytorch as pl``:
each Trainer checks ``isinstance`` against its own package's ``Callback`` and
``Logger`` classes, so each class here derives from the base of every package
that is installed (one or both).

How callback metrics become ``epoch_end`` messages
--------------------------------------------------
Values come from ``trainer.callback_metrics`` (what ``self.log`` produced),
as floats. A name's phase is its prefix before the first ``_`` or ``/``:
``train``/``training`` → ``train``, ``val``/``valid``/``validation`` → ``val``,
``test`` → ``test``; the prefix is removed (``val_loss`` and ``val/loss`` both
become ``loss`` in the ``val`` message). Names without such a prefix belong to
the stage being run: ``train`` during ``fit``, ``val`` in ``validate``,
``test`` in ``test``. A ``_epoch`` suffix (``self.log(..., on_step=True,
on_epoch=True)``) is dropped, and the ``_step`` twin of such a value is left
out of epoch messages (it is the last batch's value, which ``batch_metrics``
reports).

Lightning runs validation *inside* the training epoch, before
``on_train_epoch_end``. The callback therefore writes an epoch's ``train``
message first and its ``val`` message right after, once the epoch's hooks
have all run (at the next ``on_train_epoch_start`` or at the end of
training), so values logged in ``LightningModule.on_train_epoch_end`` are
included. A validation run in the middle of an epoch (``val_check_interval``
< 1) is written as soon as it ends. Nothing is written for the sanity check.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
import traceback as _traceback
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from lightning_utilities.core.rank_zero import rank_zero_only
from typing_extensions import override

from recorder.format import run_file_name, to_python, validate_run_id
from recorder.recorder import MetricsRecorder, new_experiment_id

__all__ = ["JsonlLogger", "RecorderCallback", "split_metrics"]


def _load(module: str, name: str) -> list[type]:
    try:
        return [getattr(importlib.import_module(module), name)]
    except ImportError:
        return []


# Every installed package's classes, lightning.pytorch first.
_CALLBACKS = _load("lightning.pytorch", "Callback") + _load("pytorch_lightning", "Callback")
_LOGGERS = _load("lightning.pytorch.loggers", "Logger") + _load(
    "pytorch_lightning.loggers", "Logger"
)
_EARLY_STOPPING: tuple[type[Any], ...] = tuple(
    _load("lightning.pytorch.callbacks", "EarlyStopping")
    + _load("pytorch_lightning.callbacks", "EarlyStopping")
)
if not _CALLBACKS or not _LOGGERS:
    raise ImportError(
        "recorder.lightning needs Lightning: pip install 'runtail[lightning]' "
        "(pytorch-lightning) or pip install lightning"
    )

# --------------------------------------------------------------------------- metrics

_PHASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


def _phase_of(name: str) -> tuple[str | None, str]:
    """``("val", "loss")`` for ``val_loss`` or ``val/loss``; ``(None, name)`` without a prefix."""
    cut = -1
    for separator in ("/", "_"):
        at = name.find(separator)
        if at > 0 and (cut < 0 or at < cut):
            cut = at
    if cut > 0:
        phase = _PHASES.get(name[:cut].lower())
        if phase is not None and cut + 1 < len(name):
            return phase, name[cut + 1 :]
    return None, name


def split_metrics(
    metrics: Mapping[str, Any], default_phase: str = "train"
) -> dict[str, dict[str, Any]]:
    """Split Lightning's ``callback_metrics`` into ``{"train": {...}, "val": {...}, "test": {...}}``.

    See the module docstring for the rule. Values become Python numbers.
    """
    out: dict[str, dict[str, Any]] = {"train": {}, "val": {}, "test": {}}
    names = set(metrics)
    steps: list[tuple[str, str, str]] = []
    for name, value in metrics.items():
        phase, short = _phase_of(name)
        phase = phase or default_phase
        if phase not in out:
            out[phase] = {}
        if short.endswith("_epoch") and len(short) > 6:
            out[phase][short[:-6]] = to_python(value)  # the epoch value wins over a plain twin
        elif short.endswith("_step") and len(short) > 5:
            steps.append((phase, short[:-5], name))
        else:
            out[phase].setdefault(short, to_python(value))
    for phase, base, name in steps:
        if f"{name[:-5]}_epoch" in names or name[:-5] in names:
            continue  # the per-batch twin of an epoch value
        out[phase].setdefault(f"{base}_step", to_python(metrics[name]))
    return out


def _step_metric(metrics: Mapping[str, Any], *names: str) -> Any:
    """The latest per-step train value of the first of ``names`` that was logged."""
    for name in names:
        for key in (
            f"train_{name}_step",
            f"train/{name}_step",
            f"train_{name}",
            f"train/{name}",
            f"{name}_step",
            name,
        ):
            if key in metrics:
                return to_python(metrics[key])
    return None


def _loss_of(outputs: Any) -> Any:
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    if outputs is None:
        return None
    value = to_python(outputs.detach() if hasattr(outputs, "detach") else outputs)
    return value if isinstance(value, (int, float)) else None


# --------------------------------------------------------------------------- callback


class RecorderCallback(*_CALLBACKS):  # type: ignore[misc]
    """A Lightning callback that records the run's life to ``<log_dir>/<experiment_id>.jsonl``.

    Written on its own, without any code in the LightningModule:

    - ``training_start`` and ``status`` running when ``fit`` starts;
    - ``epoch_start {epoch, total_epochs}`` per training epoch;
    - ``epoch_end {epoch, phase, metrics}`` for train and val (not during the
      sanity check), and for test in ``trainer.test``;
    - ``batch_metrics {step, batch_idx, loss, accuracy, recall, f1, epoch}``
      every ``batch_every_n_steps`` training batches, when set;
    - ``early_stopping`` when an ``EarlyStopping`` callback stopped the run;
    - ``error {error, error_type, traceback}`` and ``status`` failed when an
      exception ends the run (the exception still propagates);
    - ``training_end {run_id, ...summary}`` and ``status`` completed at the end.

    Epochs are Lightning's ``trainer.current_epoch`` (from 0). Only global rank
    0 writes, unless ``per_rank`` asks for one file per rank.

    Inside a federated client (``client_id`` and ``round`` given) every
    message carries ``client_id`` and ``round`` in its ``data``; epoch results
    are ``local_epoch {client_id, round, local_epoch, phase, metrics}``
    messages, no ``epoch_start`` is written (local epochs are not the run's
    epochs), and the client's own start, end and failure are
    ``client_progress {client_id, round, status}`` messages, so that only the
    server's messages decide the run's status.

    Args:
        log_dir: Directory of the run files.
        experiment_id: The run id; a unique one is made when ``None``.
        recorder: An existing :class:`MetricsRecorder` to write through
            instead (it is not closed by the callback).
        batch_every_n_steps: Write ``batch_metrics`` every N training batches.
        client_id: The federated client (node) id; integers are written as
            decimal strings.
        round: The federated round (from 1, as Flower counts).
        fsync: ``fsync`` after every message.
        per_rank: Every rank writes ``<experiment_id>.rank<N>.jsonl``.
        resume: Append to the run already recorded under ``experiment_id``
            instead of starting ``<id>-2`` (see :class:`MetricsRecorder`). Give
            a ``JsonlLogger`` of the same Trainer the same id: both write the
            file the first of them claimed.
        system_metrics: Also record ``system_metrics`` (CPU, RAM, process,
            disk, network, GPUs; :mod:`recorder.system`) on a background
            thread from setup to teardown: ``True`` every 10 s, a number every
            that many seconds. Needs the ``runtail[system]`` extra.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] = "runs",
        experiment_id: str | None = None,
        *,
        recorder: MetricsRecorder | None = None,
        batch_every_n_steps: int | None = None,
        client_id: Any = None,
        round: int | None = None,
        fsync: bool = False,
        per_rank: bool = False,
        resume: bool = False,
        system_metrics: bool | float = False,
    ) -> None:
        super().__init__()
        if batch_every_n_steps is not None and (
            not isinstance(batch_every_n_steps, int) or batch_every_n_steps < 1
        ):
            raise ValueError(
                f"batch_every_n_steps must be a positive integer, not {batch_every_n_steps!r}"
            )
        if recorder is not None:
            experiment_id = recorder.experiment_id
        elif experiment_id is None:
            experiment_id = new_experiment_id()
        self.experiment_id: str = validate_run_id(experiment_id)
        self.log_dir = os.fspath(log_dir)
        self.batch_every_n_steps = batch_every_n_steps
        self.client_id = (
            str(client_id)
            if isinstance(client_id, int) and not isinstance(client_id, bool)
            else client_id
        )
        self.round = round
        self._fsync = fsync
        self._per_rank = per_rank
        self._resume = resume
        self._given = recorder
        self._recorder: MetricsRecorder | None = recorder
        self._active = True
        self._system_interval = _system_interval(system_metrics)
        self._sampler: Any = None
        self._reset_run()

    def _reset_run(self) -> None:
        # The epoch whose train message waits for the epoch's last hooks.
        self._pending_train: int | None = None
        self._pending_val: list[tuple[int, dict[str, Any]]] = []
        self._batches = 0
        # callback_metrics as the epoch began: a value still the same object in a batch
        # was not logged in that batch (an on_epoch-only value of a previous epoch).
        self._epoch_start_metrics: dict[str, Any] = {}
        self._failed = False
        self._started_at = time.monotonic()

    @property
    def federated(self) -> bool:
        """Whether the callback runs inside a federated client (``client_id`` or ``round`` set)."""
        return self.client_id is not None or self.round is not None

    @property
    def recorder(self) -> MetricsRecorder | None:
        """The recorder written through (made at ``setup``), ``None`` before that."""
        return self._recorder

    @property
    def path(self) -> str:
        """The file this callback writes (on rank 0)."""
        if self._recorder is not None:
            return os.fspath(self._recorder.path)
        return os.path.join(self.log_dir, run_file_name(self.experiment_id))

    # ------------------------------------------------------------------ writing

    def _emit(self, type: str, data: dict[str, Any]) -> None:
        if not self._active or self._recorder is None:
            return
        if self.federated:
            data.setdefault("client_id", self.client_id)
            data.setdefault("round", self.round)
        self._recorder.record(type, data)

    def _epoch_message(self, epoch: int, phase: str, metrics: dict[str, Any], trainer: Any) -> None:
        if self.federated:
            self._emit(
                "local_epoch",
                {
                    "client_id": self.client_id,
                    "round": self.round,
                    "local_epoch": epoch,
                    "total_epochs": trainer.max_epochs,
                    "phase": phase,
                    "metrics": metrics,
                },
            )
        else:
            self._emit(
                "epoch_end",
                {"epoch": epoch, "phase": phase, "metrics": metrics, "step": trainer.global_step},
            )

    def _lifecycle(self, status: str, message: str, details: dict[str, Any] | None = None) -> None:
        """``status`` (or, in a federated client, ``client_progress``)."""
        if self.federated:
            self._emit("client_progress", {"status": status, "message": message, **(details or {})})
        else:
            self._emit("status", {"status": status, "message": message})

    def _flush(self, trainer: Any) -> None:
        """Write the held-back train message of the last epoch, then its val messages."""
        if self._pending_train is not None:
            epoch, self._pending_train = self._pending_train, None
            metrics = split_metrics(trainer.callback_metrics, "train")["train"]
            self._epoch_message(epoch, "train", metrics, trainer)
        pending, self._pending_val = self._pending_val, []
        for epoch, metrics in pending:
            self._epoch_message(epoch, "val", metrics, trainer)

    # ------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        per_rank = self._per_rank or (self._given is not None and self._given.per_rank)
        self._active = bool(trainer.is_global_zero or per_rank)
        if self._recorder is None and self._active:
            self._recorder = MetricsRecorder(
                self.log_dir,
                self.experiment_id,
                fsync=self._fsync,
                per_rank=self._per_rank,
                rank=trainer.global_rank,
                resume=self._resume,
            )
            self.experiment_id = self._recorder.experiment_id  # <id>-2 if <id> held a run
            self._resume = True  # later setups (test after fit, a pickled copy) reopen it
        if self._system_interval and self._active and self._sampler is None:
            from recorder.system import SystemMetricsSampler

            self._sampler = SystemMetricsSampler(self._recorder, self._system_interval).start()

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._flush(trainer)
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.stop()
        if self._given is None and self._recorder is not None:
            self._recorder.close()
            self._recorder = None  # a later trainer.test() opens the same file again

    @override
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._reset_run()
        parameters = trainable = 0
        try:
            for p in pl_module.parameters():
                parameters += p.numel()
                if p.requires_grad:
                    trainable += p.numel()
        except Exception:  # an exotic module must not stop training
            pass
        info: dict[str, Any] = {
            "experiment_id": self.experiment_id,
            "model": type(pl_module).__name__,
            "max_epochs": trainer.max_epochs,
            "max_steps": trainer.max_steps,
            "parameters": parameters,
            "trainable_parameters": trainable,
            "world_size": trainer.world_size,
            "precision": str(trainer.precision),
            "accelerator": type(trainer.accelerator).__name__,
            "lightning": type(trainer).__module__.split(".")[0]
            if type(trainer).__module__.startswith("pytorch_lightning")
            else "lightning",
        }
        hparams = getattr(pl_module, "hparams", None)
        if hparams:
            info["hparams"] = dict(hparams)
        if self.federated:
            self._lifecycle("started", "Local training started", info)
        else:
            self._emit("training_start", info)
            self._lifecycle("running", "Training started")

    @override
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._flush(trainer)
        self._epoch_start_metrics = dict(trainer.callback_metrics)
        if not self.federated:
            self._emit(
                "epoch_start", {"epoch": trainer.current_epoch, "total_epochs": trainer.max_epochs}
            )

    @override
    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.batch_every_n_steps is None or not self._active:
            return
        self._batches += 1
        if self._batches % self.batch_every_n_steps:
            return
        before = self._epoch_start_metrics
        metrics = {
            k: v
            for k, v in trainer.callback_metrics.items()
            if k not in before or before[k] is not v
        }
        loss = _loss_of(outputs)
        if loss is None:
            loss = _step_metric(metrics, "loss")
        data: dict[str, Any] = {
            "step": trainer.global_step,
            "batch_idx": batch_idx,
            "loss": loss,
            "accuracy": _step_metric(metrics, "accuracy", "acc"),
            "recall": _step_metric(metrics, "recall"),
            "f1": _step_metric(metrics, "f1", "f1_score"),
            "epoch": trainer.current_epoch,
        }
        if self.federated:
            data["client_id"] = self.client_id
            data["round_num"] = self.round
        self._emit("batch_metrics", data)

    @override
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # Written once the epoch's remaining hooks (the module's own
        # on_train_epoch_end, checkpointing) have run: see the module docstring.
        self._pending_train = trainer.current_epoch

    @override
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        fitting = getattr(getattr(trainer.state, "fn", None), "value", None) == "fit"
        metrics = split_metrics(trainer.callback_metrics, "train" if fitting else "val")["val"]
        epoch = trainer.current_epoch
        if fitting and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._pending_val.append((epoch, metrics))  # after this epoch's train message
        else:
            self._epoch_message(epoch, "val", metrics, trainer)

    @override
    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        metrics = split_metrics(trainer.callback_metrics, "test")["test"]
        self._epoch_message(trainer.current_epoch, "test", metrics, trainer)

    @override
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._flush(trainer)
        for callback in trainer.callbacks:
            if isinstance(callback, _EARLY_STOPPING) and _stopped(callback):
                best = to_python(callback.best_score)
                self._emit(
                    "early_stopping",
                    {
                        "epoch": callback.stopped_epoch,
                        "best_metric_value": best,
                        "metric_name": callback.monitor,
                        "patience": callback.patience,
                        "reason": getattr(callback, "stopping_reason_message", None)
                        or f"{callback.monitor} did not improve for {callback.patience} checks",
                    },
                )

    @override
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self._failed:
            return
        summary = {
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "duration_seconds": round(time.monotonic() - self._started_at, 3),
            "stopped_early": any(
                isinstance(c, _EARLY_STOPPING) and _stopped(c) for c in trainer.callbacks
            ),
            "final_metrics": {k: to_python(v) for k, v in trainer.callback_metrics.items()},
        }
        checkpoint = getattr(trainer, "checkpoint_callback", None)
        best_path = getattr(checkpoint, "best_model_path", None)
        if best_path:
            summary["best_model_path"] = best_path
        if self.federated:
            self._lifecycle("completed", "Local training completed", summary)
        else:
            self._emit("training_end", {"run_id": self.experiment_id, **summary})
            self._lifecycle("completed", "Training completed")

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._failed = True
        with contextlib.suppress(
            Exception
        ):  # the metrics may be what broke; the error matters more
            self._flush(trainer)
        text = "".join(
            _traceback.format_exception(type(exception), exception, exception.__traceback__)
        )
        self._emit(
            "error",
            {
                "error": str(exception) or type(exception).__name__,
                "error_type": type(exception).__name__,
                "traceback": text,
            },
        )
        self._lifecycle("failed", f"Training failed: {type(exception).__name__}: {exception}")


def _system_interval(system_metrics: bool | float) -> float:
    """The sampling interval ``system_metrics`` asks for (0: off); psutil checked up front."""
    if system_metrics is False or system_metrics is None:
        return 0.0
    from recorder.system import DEFAULT_INTERVAL, require_psutil

    require_psutil()  # ImportError naming the extra now, not at fit time
    interval = DEFAULT_INTERVAL if system_metrics is True else float(system_metrics)
    if not interval >= 0.01:
        raise ValueError(f"system_metrics interval must be at least 0.01 s, not {system_metrics!r}")
    return interval


def _stopped(early_stopping: Any) -> bool:
    reason = getattr(early_stopping, "stopping_reason", None)
    if reason is not None:
        return getattr(reason, "value", 0) != 0
    return bool(early_stopping.stopped_epoch)


# --------------------------------------------------------------------------- logger


class _JsonlWriter:
    """Owns the file of a :class:`JsonlLogger`: ``metrics`` and ``hparams`` messages."""

    def __init__(self, recorder: MetricsRecorder, *, owned: bool) -> None:
        self.recorder = recorder
        self._owned = owned
        self.hparams: dict[str, Any] = {}

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None) -> None:
        values = {name: to_python(value) for name, value in metrics.items()}
        data: dict[str, Any] = {"step": step}
        epoch = values.pop("epoch", None)
        if epoch is not None:
            data["epoch"] = int(epoch) if isinstance(epoch, float) and epoch.is_integer() else epoch
        data["metrics"] = values
        self.recorder.record("metrics", data)

    def log_hparams(self, params: Mapping[str, Any]) -> None:
        self.hparams.update(params)
        self.recorder.record("hparams", dict(params))

    def close(self) -> None:
        if self._owned:
            self.recorder.close()


class JsonlLogger(*_LOGGERS):  # type: ignore[misc]
    """A Lightning logger that appends ``self.log`` values and hyperparameters to the run file.

    ``log_metrics`` writes ``metrics {step, epoch?, metrics: {name: value}}``
    and ``log_hyperparams`` writes ``hparams {...}`` to
    ``<log_dir>/<experiment_id>.jsonl`` through a :class:`MetricsRecorder`, so
    a :class:`RecorderCallback` with the same ``experiment_id`` shares the file.

    Example::

        trainer = Trainer(logger=JsonlLogger("runs", "baseline"), callbacks=[RecorderCallback("runs", "baseline")])

    The logger's ``name`` is empty and its ``version`` is the experiment id, so
    Lightning puts checkpoints in ``<log_dir>/<experiment_id>/checkpoints``.

    Args:
        log_dir: Directory of the run files.
        experiment_id: The run id; a unique one is made when ``None``.
        prefix: Put at the start of every metric name (joined with ``-``, as CSVLogger does).
        recorder: An existing :class:`MetricsRecorder` to write through (not closed by the logger).
        fsync: ``fsync`` after every message.
        per_rank: Every rank writes its own file (by default only rank 0 logs).
        resume: Append to the run already recorded under ``experiment_id``
            instead of starting ``<id>-2`` (see :class:`MetricsRecorder`);
            ``version``, ``experiment_id`` and ``path`` name the id used.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        log_dir: str | os.PathLike[str] = "runs",
        experiment_id: str | None = None,
        *,
        prefix: str = "",
        recorder: MetricsRecorder | None = None,
        fsync: bool = False,
        per_rank: bool = False,
        resume: bool = False,
    ) -> None:
        super().__init__()
        if recorder is not None:
            experiment_id = recorder.experiment_id
        elif experiment_id is None:
            experiment_id = new_experiment_id()
        self._experiment_id = validate_run_id(experiment_id)
        self._log_dir = os.fspath(log_dir)
        self._prefix = prefix
        self._given = recorder
        self._fsync = fsync
        self._per_rank = per_rank
        self._resume = resume
        self._experiment: _JsonlWriter | None = None

    @property
    @override
    def name(self) -> str:
        """Empty: runs are not grouped under a name (``<log_dir>/<experiment_id>.jsonl``)."""
        return ""

    @property
    @override
    def version(self) -> str:
        """The experiment id used (claimed on first use: ``<id>-2`` if ``<id>`` held a run)."""
        return self.experiment_id

    @property
    def experiment_id(self) -> str:
        """The experiment id used (the file stem)."""
        if self._experiment is None and self._writes():
            self.experiment  # noqa: B018 (claims the id)
        return self._experiment_id

    @property
    @override
    def root_dir(self) -> str:
        """The directory of the run files."""
        return self._log_dir

    @property
    @override
    def log_dir(self) -> str:
        """The directory of the run files."""
        return self._log_dir

    @property
    @override
    def save_dir(self) -> str:
        """The directory of the run files."""
        return self._log_dir

    @property
    def path(self) -> str:
        """The file written on rank 0."""
        return os.path.join(self._log_dir, run_file_name(self.experiment_id))

    @property
    def experiment(self) -> _JsonlWriter:
        """The writer (made on first use); a dummy on ranks other than 0 unless ``per_rank``."""
        if self._experiment is not None:
            return self._experiment
        if not self._writes():
            return _DummyWriter()  # type: ignore[return-value]
        if self._given is not None:
            self._experiment = _JsonlWriter(self._given, owned=False)
        else:
            recorder = MetricsRecorder(
                self._log_dir,
                self._experiment_id,
                fsync=self._fsync,
                per_rank=self._per_rank,
                rank=getattr(rank_zero_only, "rank", None),
                resume=self._resume,
            )
            self._experiment_id = recorder.experiment_id
            self._resume = True  # reopened after finalize, or pickled: the same run
            self._experiment = _JsonlWriter(recorder, owned=True)
        return self._experiment

    @override
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if not self._writes():
            return
        if self._prefix:
            metrics = {f"{self._prefix}{self.LOGGER_JOIN_CHAR}{k}": v for k, v in metrics.items()}
        self.experiment.log_metrics(metrics, step)

    @override
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        if not self._writes():
            return
        if isinstance(params, Namespace):
            params = vars(params)
        if params is None:
            return
        self.experiment.log_hparams(dict(params))

    @override
    def save(self) -> None:
        """Nothing to do: every message is in the file when ``log_*`` returns."""

    @override
    def finalize(self, status: str) -> None:
        """Close the file if one was opened (a later ``log_*`` opens it again)."""
        if self._experiment is None:
            return
        self._experiment.close()
        self._experiment = None

    def _writes(self) -> bool:
        return self._per_rank or getattr(rank_zero_only, "rank", 0) == 0


class _DummyWriter:
    """What other ranks get from ``JsonlLogger.experiment``: accepts everything, writes nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
