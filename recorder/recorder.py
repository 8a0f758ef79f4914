"""``MetricsRecorder``: append every training message to ``<log_dir>/<experiment_id>.jsonl``.

A drop-in for the original setup's ``MetricsWebSocketSender``: the same
``send_*`` methods with the same signatures and ``data`` payloads, but each
message becomes one line appended to a file instead of a WebSocket connection
per message. Nothing here waits on a network, and nothing here raises into the
training loop once the recorder exists: a write that fails is counted in
:attr:`MetricsRecorder.lost`, warned about once and reported again at
:meth:`MetricsRecorder.close`.

Example::

    from recorder import MetricsRecorder

    with MetricsRecorder("runs", "baseline-lr3e-4") as rec:
        rec.send_status("running", "Training in progress")
        rec.send_epoch_end(epoch=0, phase="val", metrics={"loss": 0.31, "accuracy": 0.9})
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import sys
import threading
import time
import traceback as _traceback
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recorder._runs import claim_run
from recorder.format import (
    MAX_LINE_BYTES,
    encode_message,
    rank_suffix,
    run_file_name,
    validate_experiment_id,
    validate_run_id,
)

__all__ = ["MetricsRecorder", "default_rank", "new_experiment_id"]

log = logging.getLogger("recorder")

_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")

_os_write = os.write
_LINE_LIMIT = MAX_LINE_BYTES + 1  # the limit readers apply, plus the newline

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


def new_experiment_id(prefix: str = "run") -> str:
    """A fresh, valid experiment id that sorts by creation time, e.g. ``run-20261126-001530-3f9c2a``.

    The time is UTC to the second; six random hex digits keep ids made in the
    same second (by several processes too) apart.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return validate_experiment_id(f"{prefix}-{stamp}-{secrets.token_hex(3)}")


def default_rank() -> int:
    """This process's global rank from the usual launcher variables, 0 when none is set.

    ``RANK`` (torchrun, Lightning), then ``LOCAL_RANK``, ``SLURM_PROCID`` and
    ``JSM_NAMESPACE_RANK``, in the order Lightning itself reads them.
    """
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                continue
    return 0


# Recorders alive in this process, so a forked child gets fresh locks: a lock
# held by another thread at fork time would otherwise stay locked forever in
# the child (a DataLoader worker forked while the main thread was writing).
_live: weakref.WeakSet[MetricsRecorder] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for rec in list(_live):
        rec._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class MetricsRecorder:
    """Record training messages as JSON lines in ``<log_dir>/<experiment_id>.jsonl``.

    Every message is one line written with one ``os.write`` on an ``O_APPEND``
    descriptor, under a lock, so threads and processes appending to the same
    file never interleave and a reader sees each line whole once the call
    returns.

    Args:
        log_dir: Directory of the run files; created if missing.
        experiment_id: The run's id and file stem. ``None`` makes a unique one
            (:func:`new_experiment_id`). An invalid id, or one ending in
            ``.rank<digits>`` (:func:`recorder.format.validate_run_id`), raises
            :class:`ValueError` before anything is created.
        fsync: ``os.fsync`` after every message (survives a machine crash; costs
            a disk flush per message).
        per_rank: Under distributed training, let every rank write its own file
            ``<experiment_id>.rank<N>.jsonl``. By default only global rank 0
            writes and the other ranks' recorders drop messages silently.
        rank: This process's global rank; read from ``RANK``, ``LOCAL_RANK``,
            ``SLURM_PROCID`` or ``JSM_NAMESPACE_RANK`` when ``None``.
        resume: Append to the run already recorded under ``experiment_id``
            (training resumed from a checkpoint, or several processes writing
            one run). By default a new run never goes into a file that holds
            one: the recorder claims ``<id>-2``, ``<id>-3``, … and warns once
            with the id it used (see :mod:`recorder._runs`). In one process,
            every recorder given the same ``(log_dir, experiment_id)`` writes
            the same file.

    Attributes:
        experiment_id: The run id actually used (without the ``.rank<N>``
            suffix): ``<id>-2`` when ``<id>`` already held a run.
        path: The file this recorder appends to.
        rank: The global rank it was made for.
        enabled: Whether this process writes at all (rank 0, or ``per_rank``).
        lost: How many messages could not be written (full disk, unwritable
            directory, closed recorder, line over the readers' limit).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] = "runs",
        experiment_id: str | None = None,
        *,
        fsync: bool = False,
        per_rank: bool = False,
        rank: int | None = None,
        resume: bool = False,
    ) -> None:
        if experiment_id is None:
            experiment_id = new_experiment_id()
        self.experiment_id: str = validate_run_id(experiment_id)
        self._rank_given = rank
        self.rank: int = default_rank() if rank is None else int(rank)
        self.per_rank = bool(per_rank)
        self.resume = bool(resume)
        self._suffix = rank_suffix(self.rank) if self.per_rank else ""
        validate_experiment_id(self.experiment_id + self._suffix)
        self.log_dir = Path(log_dir)
        self.path: Path = self.log_dir / run_file_name(self.experiment_id + self._suffix)
        self.enabled: bool = self.per_rank or self.rank == 0
        self.lost: int = 0
        self._fsync = bool(fsync)
        # Re-entrant: a signal handler that records (a SIGTERM handler sending status
        # "failed") may run while this thread is inside record(); a plain Lock would
        # deadlock the training process there.
        self._lock = threading.RLock()
        self._fd: int | None = None
        self._closed = False
        self._warned = False
        self._torn = False  # a line was cut off by a failed write: start the next on a new line
        self._finalizer: weakref.finalize | None = None
        self._sampler: Any = None  # a SystemMetricsSampler, stopped by close()
        _live.add(self)
        if self.enabled:
            self._open()

    # ------------------------------------------------------------------ life cycle

    def _open(self) -> None:
        try:
            os.makedirs(self.log_dir, exist_ok=True)
            claim = claim_run(
                self.log_dir, self.experiment_id, suffix=self._suffix, resume=self.resume
            )
            if claim.experiment_id != self.experiment_id:
                self.experiment_id = claim.experiment_id
                self.path = self.log_dir / run_file_name(claim.experiment_id + self._suffix)
            fd = claim.fd if claim.fd is not None else _open_regular(self.path)
        except OSError as exc:
            self._warn_once(f"cannot open {self.path} ({exc})")
            return
        self._fd = fd
        self._finalizer = weakref.finalize(self, _close_fd, fd)
        # A writer that died mid-line left the file without its last "\n": start our
        # first line on a new line, so only the torn one is malformed, not our first too.
        # (A freshly claimed file is empty.)
        if claim.fd is None and _ends_torn(self.path):
            self._torn = True
        if self._fsync:  # make the new file's directory entry durable too
            with contextlib.suppress(OSError):
                dir_fd = os.open(self.log_dir, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Close the file and report (warning and log) how many messages were lost, if any.

        Idempotent. Messages recorded afterwards are counted as lost. A
        system metrics sampler started here is stopped first.
        """
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.stop()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._finalizer is not None:
                self._finalizer()  # closes the descriptor exactly once
                self._finalizer = None
            self._fd = None
            lost = self.lost
        if lost:
            text = f"runtail: {lost} message(s) could not be written to {self.path}"
            log.warning(text)
            warnings.warn(text, RuntimeWarning, stacklevel=2)

    def start_system_metrics(self, interval: float = 10.0, *, gpu: bool = True) -> Any:
        """Record ``system_metrics`` every ``interval`` seconds on a background thread until :meth:`close`.

        CPU, RAM, process, disk and network figures (psutil), per-GPU figures
        (NVML) and torch's CUDA memory where present: see :mod:`recorder.system`.
        Needs the ``runtail[system]`` extra (:class:`ImportError` otherwise).
        Returns the :class:`recorder.system.SystemMetricsSampler`; calling
        again replaces it.
        """
        from recorder.system import SystemMetricsSampler

        sampler = SystemMetricsSampler(self, interval, gpu=gpu)
        old, self._sampler = self._sampler, sampler
        if old is not None:
            old.stop()
        return sampler.start()

    def __getstate__(self) -> dict[str, Any]:
        # Pickled (multiprocessing "spawn", DDP spawn), a recorder travels as
        # its settings and opens the same file again on the other side (the
        # id it claimed, resumed); the rank is read there again unless given.
        return {
            "log_dir": self.log_dir,
            "experiment_id": self.experiment_id,
            "resume": self.enabled or self.resume,
            "fsync": self._fsync,
            "per_rank": self.per_rank,
            "rank": self._rank_given,
            "closed": self._closed,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["log_dir"],
            state["experiment_id"],
            fsync=state["fsync"],
            per_rank=state["per_rank"],
            rank=state["rank"],
            resume=state.get("resume", True),
        )
        if state["closed"]:
            self.close()

    def __enter__(self) -> MetricsRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("writing" if self._fd is not None else "not writing")
        return f"<MetricsRecorder {str(self.path)!r} {state}, lost={self.lost}>"

    # ------------------------------------------------------------------ writing

    def record(
        self, type: str, data: Any = None, *, extra: Mapping[str, Any] | None = None
    ) -> bool:
        """Append one message ``{"type", "timestamp", "data", **extra}``; the generic entry.

        Returns whether the line was written (``False`` also on ranks that do
        not write). Never raises: values JSON cannot hold are converted as
        :mod:`recorder.format` describes, and failed writes are counted in
        :attr:`lost`.
        """
        if not self.enabled:
            return False
        try:
            line = encode_message(type if type.__class__ is str else str(type), data, extra=extra)
        except Exception as exc:  # a broken __str__ in a value, say: never into training
            with self._lock:
                self._lose(f"cannot encode a {type!r} message ({exc!r})")
            return False
        lock = self._lock
        lock.acquire()  # acquire/release: half the cost of ``with``
        try:
            return self._write(line)
        finally:
            lock.release()

    def _write(self, line: bytes) -> bool:
        """Append one encoded line with one ``os.write`` (caller holds the lock)."""
        fd = self._fd
        if fd is None:
            self._lose(
                f"the recorder for {self.path} is closed"
                if self._closed
                else f"cannot write {self.path}"
            )
            return False
        if len(line) > _LINE_LIMIT:
            self._lose(
                f"a message of {len(line)} bytes is over the readers' limit of {MAX_LINE_BYTES}"
            )
            return False
        if self._torn:
            line = b"\n" + line
        try:
            written = _os_write(fd, line)
            if written != len(line):
                self._write_rest(fd, line, written)
            if self._fsync:
                os.fsync(fd)
        except OSError as exc:
            self._lose(f"cannot write {self.path} ({_describe(exc)})")
            return False
        self._torn = False
        return True

    def _write_rest(self, fd: int, line: bytes, written: int) -> None:
        # A short write (a signal, RLIMIT_FSIZE, a nearly full disk): finish the
        # line. If that fails the file ends in a torn line; the next line we
        # manage to write starts with "\n" so only the torn one is malformed.
        view = memoryview(line)
        while written < len(line):
            try:
                n = os.write(fd, view[written:])
            except OSError:
                self._torn = True
                raise
            if n == 0:
                self._torn = True
                raise OSError(errno.EIO, "write returned 0")
            written += n

    def _lose(self, reason: str) -> None:
        """Count one lost message; warn about the first (caller holds the lock)."""
        self.lost += 1
        self._warn_once(reason)

    def _warn_once(self, reason: str) -> None:
        if self._warned:
            return
        self._warned = True
        text = (
            f"runtail: {reason}; training goes on, messages that cannot be written are "
            "counted in MetricsRecorder.lost and reported at close()"
        )
        log.warning(text)
        warnings.warn(text, RuntimeWarning, stacklevel=4)

    # ------------------------------------------------------------------ the sender's API

    def send_metrics(self, metrics: Mapping[str, Any], metric_type: str = "epoch_end") -> None:
        """Record ``metrics`` as the ``data`` of a ``metric_type`` message."""
        self.record(metric_type, metrics)

    def send_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """``epoch_start {epoch, total_epochs}``."""
        self.record("epoch_start", {"epoch": epoch, "total_epochs": total_epochs})

    def send_epoch_end(self, epoch: int, phase: str, metrics: Mapping[str, Any]) -> None:
        """``epoch_end {epoch, phase, metrics}``; ``phase`` is ``train``, ``val`` or ``test``."""
        self.record("epoch_end", {"epoch": epoch, "phase": phase, "metrics": metrics})

    def send_round_end(
        self,
        round_num: int,
        total_rounds: int,
        fit_metrics: Mapping[str, Any] | None = None,
        eval_metrics: Mapping[str, Any] | None = None,
    ) -> None:
        """``round_end {round, total_rounds, fit_metrics, eval_metrics}`` (missing ones as ``{}``)."""
        self.record(
            "round_end",
            {
                "round": round_num,
                "total_rounds": total_rounds,
                "fit_metrics": fit_metrics or {},
                "eval_metrics": eval_metrics or {},
            },
        )

    def send_round_metrics(
        self, round_num: int, total_rounds: int, metrics: Mapping[str, Any]
    ) -> None:
        """``round_metrics {round, total_rounds, metrics}``."""
        self.record(
            "round_metrics", {"round": round_num, "total_rounds": total_rounds, "metrics": metrics}
        )

    def send_status(self, status: str, message: str = "") -> None:
        """``status {status, message}``; ``status`` is ``running``, ``completed`` or ``failed``."""
        self.record("status", {"status": status, "message": message})

    def send_error(
        self,
        error_message: str,
        error_type: str = "training_error",
        *,
        traceback: str | None = None,
    ) -> None:
        """``error {error, error_type, traceback?}``.

        Called inside an ``except`` block, the exception's traceback is added
        unless ``traceback`` is given.
        """
        data: dict[str, Any] = {"error": error_message, "error_type": error_type}
        if traceback is None and sys.exc_info()[0] is not None:
            traceback = _traceback.format_exc()
        if traceback is not None:
            data["traceback"] = traceback
        self.record("error", data)

    def send_early_stopping_triggered(
        self,
        epoch: int,
        best_metric_value: float,
        metric_name: str = "val_recall",
        patience: int = 7,
        *,
        reason: str | None = None,
    ) -> None:
        """``early_stopping {epoch, best_metric_value, metric_name, patience, reason}``."""
        if reason is None:
            reason = (
                f"{metric_name} did not improve for {patience} consecutive checks "
                f"(best {best_metric_value}); training stopped at epoch {epoch}"
            )
        self.record(
            "early_stopping",
            {
                "epoch": epoch,
                "best_metric_value": best_metric_value,
                "metric_name": metric_name,
                "patience": patience,
                "reason": reason,
            },
        )

    def send_training_mode(self, is_federated: bool, num_rounds: int, num_clients: int) -> None:
        """``training_mode {is_federated, num_rounds, num_clients}``."""
        self.record(
            "training_mode",
            {"is_federated": is_federated, "num_rounds": num_rounds, "num_clients": num_clients},
        )

    def send_training_end(self, run_id: Any, summary_data: Mapping[str, Any] | None = None) -> None:
        """``training_end {run_id, **summary_data}``."""
        self.record("training_end", {"run_id": run_id, **(summary_data or {})})

    def send_batch_metrics(
        self,
        step: int,
        batch_idx: int,
        loss: float,
        accuracy: float | None,
        epoch: int,
        recall: float | None = None,
        f1: float | None = None,
        client_id: Any = None,
        round_num: int | None = None,
    ) -> None:
        """``batch_metrics {step, batch_idx, loss, accuracy, recall, f1, epoch}`` (+ ``client_id``, ``round_num``)."""
        data: dict[str, Any] = {
            "step": step,
            "batch_idx": batch_idx,
            "loss": loss,
            "accuracy": accuracy,
            "recall": recall,
            "f1": f1,
            "epoch": epoch,
        }
        if client_id is not None:
            data["client_id"] = client_id
        if round_num is not None:
            data["round_num"] = round_num
        self.record("batch_metrics", data)

    def send_gradient_stats(
        self,
        step: int,
        total_norm: float,
        layer_norms: Mapping[str, float],
        max_norm: float,
        min_norm: float,
    ) -> None:
        """``gradient_stats {step, total_norm, layer_norms, max_norm, min_norm}``."""
        self.record(
            "gradient_stats",
            {
                "step": step,
                "total_norm": total_norm,
                "layer_norms": layer_norms,
                "max_norm": max_norm,
                "min_norm": min_norm,
            },
        )

    def send_lr_update(
        self, current_lr: float, step: int, epoch: int, scheduler_type: str | None = None
    ) -> None:
        """``lr_update {current_lr, step, epoch}`` (+ ``scheduler_type`` when given)."""
        data: dict[str, Any] = {"current_lr": current_lr, "step": step, "epoch": epoch}
        if scheduler_type is not None:
            data["scheduler_type"] = scheduler_type
        self.record("lr_update", data)


def _open_regular(path: Path) -> int:
    """Open the run file for appending; never a FIFO.

    ``O_NONBLOCK`` so that a FIFO under the run's name fails at once (ENXIO
    with no reader) instead of blocking training until someone reads it; a
    FIFO that does open (someone reads it) is refused after ``fstat``, since
    a full pipe would block every write. Devices (``/dev/null``) are fine.
    """
    fd = os.open(path, _OPEN_FLAGS | os.O_NONBLOCK, 0o644)
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "a FIFO, not a file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Pauses while a torn-looking tail may still be a line another process is writing (0.39 s in all).
_TORN_RECHECKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)

# Linux makes a write visible page by page: while one is in progress the file
# size is a multiple of the page size (4096 or a multiple of it).
_SIZES_STEP_BY_PAGE = sys.platform.startswith("linux")
_PAGE = 4096


def _ends_torn(path: Path) -> bool:
    """Whether the file at ``path`` ends inside a line that no writer is completing.

    False if it is empty, ends in ``\n`` or cannot be read. Another process
    may be appending a line at this very moment, so a missing ``\n`` alone
    does not make the tail torn (taking it for torn would start our first line
    with a ``\n`` and leave a blank line once that writer finishes):

    1. Writers append whole lines with one ``write``; the kernel serialises
       writes to a file and copies each page by page, moving the end of the
       file at each page boundary. So a size that is not a multiple of the
       page size is the end of a finished write: without ``\n`` there, the
       tail is torn (a writer died or failed mid-line).
    2. A size on a page boundary may be a write in progress: look again after
       a short pause, up to :data:`_TORN_RECHECKS`; a file that grew is judged
       again by its new end; one that stays put that long is torn.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        for pause in (*_TORN_RECHECKS, None):
            if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
                return False
            if pause is None or (_SIZES_STEP_BY_PAGE and size % _PAGE):
                return True
            time.sleep(pause)
            size = os.fstat(fd).st_size
        return True  # pragma: no cover (the loop returns)
    except OSError:
        return False
    finally:
        os.close(fd)


def _describe(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"disk full: {exc}"
    if exc.errno == errno.EFBIG:
        return f"file size limit reached: {exc}"
    return str(exc)
