#!/usr/bin/env python3
"""Make runtail's sample runs in ``sample_runs/`` from real training.

Every line of every sample is written by runtail's own recorder
(:class:`recorder.RecorderCallback` and :class:`recorder.JsonlLogger`) while a
small MLP really trains on scikit-learn's bundled ``load_digits`` data set
(1,797 8x8 images of handwritten digits; nothing is downloaded). Timestamps are
the real times of the run. Three runs are made, one file each:

``centralized-digits.jsonl``
    A complete PyTorch Lightning run (``import pytorch_lightning as pl``, the
    way the original setup's users train): ``--epochs`` epochs with train and
    validation metrics (loss, accuracy, macro recall and F1 computed in plain
    torch), batch metrics every few steps, learning-rate updates, then a test
    epoch, ending with ``training_end`` and status ``completed``.

``failed-digits.jsonl``
    The same training, killed at epoch 3 (or the last epoch, if fewer) by a
    ``torch.OutOfMemoryError`` raised on purpose inside ``training_step``; the
    message says so. The recorder writes ``error`` (with the traceback) and
    status ``failed``; this script catches the exception and goes on.

``running-digits.jsonl``
    A run that never ends: the training runs in a child process, which is
    killed with SIGKILL in the middle of epoch 4 (or the last epoch). Nothing
    can write an end message after ``kill -9``, so the file ends the way a
    crashed or still-running job's file does: no ``training_end``, no final
    status. The child stops at a fixed batch before the kill, so the file's
    content does not depend on timing.

The federated sample (``federated-digits.jsonl``) comes from a real Flower
run in ``examples/flower_digits/``; this script leaves it alone.

Outputs are overwritten: each of the three files is deleted before its run
starts (the recorder only ever appends). Runs are seeded (``--seed``), CPU
only, single-threaded, and take well under a minute of training in all.

Usage, from the repository root::

    .venv/bin/python scripts/make_sample_runs.py              # writes sample_runs/
    .venv/bin/python scripts/make_sample_runs.py --out /tmp/s --epochs 2 --seed 1
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

# Run from a checkout without installing: the repository root holds `recorder`.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pytorch_lightning as pl  # noqa: E402  (the original setup's import)
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from recorder import JsonlLogger, MetricsRecorder, RecorderCallback  # noqa: E402

#: The experiment ids (and so the file stems) this script writes.
CENTRALIZED = "centralized-digits"
FAILED = "failed-digits"
RUNNING = "running-digits"

NUM_CLASSES = 10
BATCH_SIZE = 32
#: A batch_metrics message every this many optimizer steps.
BATCH_EVERY_N_STEPS = 5
#: A gradient_stats message every this many optimizer steps.
GRADIENT_EVERY_N_STEPS = 20
#: The failed run dies in this epoch (0-based, as Lightning counts) ...
FAIL_EPOCH = 3
FAIL_BATCH = 17
#: ... and the running run is killed in this one.
KILL_EPOCH = 4
KILL_BATCH = 20
#: How long the parent waits for the child to reach its kill point.
CHILD_TIMEOUT_S = 300.0

_PAUSED = "make_sample_runs: paused"

# Progress goes to stdout; the child of the running run writes it to stderr,
# because its stdout tells the parent when to kill it.
_progress = sys.stdout


def log(text: str) -> None:
    """Print one progress line."""
    print(text, file=_progress, flush=True)


# --------------------------------------------------------------------------- data


def load_data(seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Digits split 70/15/15 into train, validation and test sets, stratified by class."""
    digits = load_digits()
    x = digits.data.astype("float32") / 16.0  # pixel intensities are 0..16
    y = digits.target.astype("int64")
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, test_size=0.3, random_state=seed, stratify=y
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest
    )

    def tensors(xs, ys) -> TensorDataset:
        return TensorDataset(torch.from_numpy(xs), torch.from_numpy(ys))

    return tensors(x_train, y_train), tensors(x_val, y_val), tensors(x_test, y_test)


def loaders(seed: int) -> tuple[DataLoader, DataLoader, DataLoader]:
    train, val, test = load_data(seed)
    shuffle = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=BATCH_SIZE, shuffle=True, generator=shuffle),
        DataLoader(val, batch_size=128),
        DataLoader(test, batch_size=128),
    )


# --------------------------------------------------------------------------- model


def confusion_matrix(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Counts of (true class, predicted class) pairs, rows indexed by the true class."""
    counts = torch.bincount(target * NUM_CLASSES + pred, minlength=NUM_CLASSES * NUM_CLASSES)
    return counts.reshape(NUM_CLASSES, NUM_CLASSES)


def macro_recall_f1(confusion: torch.Tensor) -> tuple[float, float]:
    """Macro-averaged recall and F1 from a confusion matrix (rows: true class)."""
    true_pos = confusion.diag().float()
    actual = confusion.sum(dim=1).float()
    predicted = confusion.sum(dim=0).float()
    recall = true_pos / actual.clamp(min=1)
    precision = true_pos / predicted.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return recall.mean().item(), f1.mean().item()


class DigitsMLP(pl.LightningModule):
    """A 64-128-64-10 MLP; logs loss, accuracy, macro recall and F1 per phase.

    ``fail_at=(epoch, batch)`` raises ``torch.OutOfMemoryError`` at that batch,
    standing in for the failure users meet most on a GPU.
    """

    def __init__(self, lr: float = 3e-3, hidden: int = 128, fail_at: tuple[int, int] | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["fail_at"])
        self.fail_at = fail_at
        self.net = nn.Sequential(
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, NUM_CLASSES),
        )
        self._confusion: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, phase: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        pred = logits.argmax(dim=1)
        accuracy = (pred == y).float().mean()
        confusion = confusion_matrix(y, pred)
        self._confusion[phase] = self._confusion.get(phase, 0) + confusion
        on_step = phase == "train"
        self.log(f"{phase}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True)
        self.log(f"{phase}_accuracy", accuracy, on_step=on_step, on_epoch=True)
        if on_step:
            # The batch's own recall and F1, for batch_metrics; the epoch's
            # values come from the whole epoch's confusion matrix instead.
            recall, f1 = macro_recall_f1(confusion)
            self.log("train_recall_step", recall, on_step=True, on_epoch=False)
            self.log("train_f1_step", f1, on_step=True, on_epoch=False)
        return loss

    def _epoch_end(self, phase: str) -> None:
        confusion = self._confusion.pop(phase, None)
        if confusion is None:
            return
        recall, f1 = macro_recall_f1(confusion)
        self.log(f"{phase}_recall", recall)
        self.log(f"{phase}_f1", f1)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self.fail_at == (self.current_epoch, batch_idx):
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total "
                "capacity; 13.91 GiB already allocated). [Raised on purpose by "
                f"scripts/make_sample_runs.py at epoch {self.current_epoch}, batch {batch_idx}; "
                "the run itself is on CPU.]"
            )
        return self._step(batch, "train")

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


# --------------------------------------------------------------------------- helper callbacks


class EpochProgress(pl.Callback):
    """Print one line per validation epoch, so a long run shows it is alive."""

    def __init__(self, name: str):
        self.name = name

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        log(
            f"[{self.name}] epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: "
            f"val_loss={float(m.get('val_loss', float('nan'))):.4f} "
            f"val_accuracy={float(m.get('val_accuracy', float('nan'))):.4f}"
        )


class TrainingDetails(pl.Callback):
    """Record what RecorderCallback leaves to the user: learning-rate changes and gradient norms.

    Written through the run's :class:`MetricsRecorder` with the sender's
    ``send_lr_update`` and ``send_gradient_stats``, as the original setup's
    MetricsCollectorCallback did.
    """

    def __init__(self, recorder: MetricsRecorder, every_n_steps: int):
        self.recorder = recorder
        self.every_n_steps = every_n_steps
        self._last_lr: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        lr = optimizer.param_groups[0]["lr"]
        if lr != self._last_lr:
            self._last_lr = lr
            schedulers = trainer.lr_scheduler_configs
            kind = type(schedulers[0].scheduler).__name__ if schedulers else None
            self.recorder.send_lr_update(lr, trainer.global_step, trainer.current_epoch, kind)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer
    ) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        norms = {
            name: p.grad.detach().norm().item()
            for name, p in pl_module.named_parameters()
            if p.grad is not None and name.endswith("weight")
        }
        if not norms:
            return
        grads = [p.grad.detach() for p in pl_module.parameters() if p.grad is not None]
        total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
        self.recorder.send_gradient_stats(
            step=trainer.global_step,
            total_norm=total,
            layer_norms=norms,
            max_norm=max(norms.values()),
            min_norm=min(norms.values()),
        )


class PauseAt(pl.Callback):
    """Tell the parent process we reached ``(epoch, batch)``, then wait to be killed."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return
        print(_PAUSED, flush=True)  # stdout: the parent's signal
        sys.stdin.readline()  # the parent never writes: this blocks until SIGKILL
        # Only reached if the parent went away (stdin closed) without killing us.
        os._exit(3)


# --------------------------------------------------------------------------- runs


def make_trainer(name: str, epochs: int, callbacks: list, logger, workdir: Path) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=[*callbacks, EpochProgress(name)],
        logger=logger,
        log_every_n_steps=BATCH_EVERY_N_STEPS,
        default_root_dir=workdir,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )


def train(
    out: Path,
    experiment_id: str,
    *,
    epochs: int,
    seed: int,
    fail_at: tuple[int, int] | None = None,
    extra_callbacks: tuple = (),
    test: bool = True,
) -> None:
    """Train the MLP once, recording the run to ``out/<experiment_id>.jsonl``."""
    pl.seed_everything(seed, workers=True, verbose=False)
    train_loader, val_loader, test_loader = loaders(seed)
    model = DigitsMLP(fail_at=fail_at)
    with (
        MetricsRecorder(log_dir=out, experiment_id=experiment_id) as rec,
        tempfile.TemporaryDirectory(prefix="make_sample_runs-") as workdir,
    ):
        callbacks = [
            RecorderCallback(recorder=rec, batch_every_n_steps=BATCH_EVERY_N_STEPS),
            TrainingDetails(rec, every_n_steps=GRADIENT_EVERY_N_STEPS),
            *extra_callbacks,
        ]
        logger = JsonlLogger(recorder=rec)  # self.log values and hparams, into the same file
        trainer = make_trainer(experiment_id, epochs, callbacks, logger, Path(workdir))
        trainer.fit(model, train_loader, val_loader)
        if test:
            trainer.test(model, test_loader, verbose=False)


def target(out: Path, experiment_id: str) -> Path:
    """The output file of a run, deleted so that the run starts it afresh."""
    path = out / f"{experiment_id}.jsonl"
    if path.exists():
        path.unlink()
        log(f"[{experiment_id}] removed the old {path}")
    return path


def make_centralized(out: Path, epochs: int, seed: int) -> Path:
    path = target(out, CENTRALIZED)
    log(f"[{CENTRALIZED}] training {epochs} epochs, then testing")
    train(out, CENTRALIZED, epochs=epochs, seed=seed)
    return path


def make_failed(out: Path, epochs: int, seed: int) -> Path:
    path = target(out, FAILED)
    fail_epoch = min(FAIL_EPOCH, epochs - 1)
    log(f"[{FAILED}] training until the error raised at epoch {fail_epoch}, batch {FAIL_BATCH}")
    try:
        train(out, FAILED, epochs=epochs, seed=seed, fail_at=(fail_epoch, FAIL_BATCH))
    except torch.OutOfMemoryError as exc:
        log(f"[{FAILED}] the run failed as planned: {str(exc)[:40]}...")
    else:
        raise RuntimeError(f"{FAILED}: the planned failure did not happen")
    return path


def make_running(out: Path, epochs: int, seed: int) -> Path:
    """Train in a child process and SIGKILL it mid-epoch, leaving a run with no end."""
    path = target(out, RUNNING)
    kill_epoch = min(KILL_EPOCH, epochs - 1)
    log(
        f"[{RUNNING}] training in a child process, to be killed at epoch {kill_epoch}, batch {KILL_BATCH}"
    )
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
        "--child-running",
    ]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    paused = threading.Event()

    def watch() -> None:
        for line in child.stdout:
            if line.strip() == _PAUSED:
                paused.set()
                return

    threading.Thread(target=watch, daemon=True).start()
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while not paused.wait(0.2):
            if child.poll() is not None:
                raise RuntimeError(
                    f"{RUNNING}: the child process exited with status {child.returncode} "
                    "before it reached its kill point (its output is above)"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{RUNNING}: the child process did not reach its kill point "
                    f"in {CHILD_TIMEOUT_S:.0f} s"
                )
        child.send_signal(signal.SIGKILL)  # what `kill -9` does: no handler, no cleanup
        returncode = child.wait()
    finally:
        if child.poll() is None:  # an error or Ctrl-C above: never leave the child behind
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()
    log(f"[{RUNNING}] child process {child.pid} killed (exit status {returncode})")
    return path


def child_running(out: Path, epochs: int, seed: int) -> None:
    """The child side of :func:`make_running`: train until the pause, then wait to die."""
    kill_epoch = min(KILL_EPOCH, epochs - 1)
    train(
        out,
        RUNNING,
        epochs=epochs,
        seed=seed,
        extra_callbacks=(PauseAt(kill_epoch, KILL_BATCH),),
        test=False,
    )
    raise RuntimeError(f"{RUNNING}: training finished before the kill point")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Make runtail's sample runs from real training on scikit-learn's digits.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "sample_runs",
        help="directory to write the .jsonl files to (default: sample_runs/ of this checkout)",
    )
    parser.add_argument(
        "--epochs", type=int, default=10, help="epochs of the complete run (default: 10)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--only",
        choices=[CENTRALIZED, FAILED, RUNNING],
        action="append",
        help="make only this sample (repeatable; default: all three)",
    )
    parser.add_argument("--child-running", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, not {args.epochs}")
    return args


def quiet_lightning() -> None:
    """Keep the output to this script's own progress lines."""
    import logging

    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*The number of training batches.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def main(argv: list[str] | None = None) -> int:
    global _progress
    args = parse_args(argv)
    quiet_lightning()
    torch.set_num_threads(1)  # faster on a busy small machine, and reproducible
    out = args.out
    if args.child_running:
        _progress = sys.stderr
        child_running(out, args.epochs, args.seed)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    makers = {CENTRALIZED: make_centralized, FAILED: make_failed, RUNNING: make_running}
    for name in args.only or list(makers):
        path = makers[name](out, args.epochs, args.seed)
        lines = path.read_bytes().count(b"\n")
        log(f"[{name}] wrote {path} ({lines} messages, {path.stat().st_size:,} bytes)")
    log(f"done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
