"""Tiny Lightning models and run-file readers for the recorder tests (no downloads)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

PACKAGES = ["lightning.pytorch", "pytorch_lightning"]


def read_messages(path: str | Path) -> list[dict[str, Any]]:
    """Every line of a run file, parsed strictly (stdlib json, no NaN/Infinity tokens)."""
    raw = Path(path).read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), "the file must end with a complete line"

    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")

    # Split on b"\n" only: str.splitlines() would also split on U+2028 and friends.
    return [
        json.loads(line.decode("utf-8"), parse_constant=refuse) for line in raw.split(b"\n")[:-1]
    ]


def make_module(pl: Any, *, fail_at_step: int | None = None, log_in_hook: bool = False) -> Any:
    """A two-class linear classifier for package ``pl`` that logs train/val/test loss and accuracy."""
    import torch

    class TinyClassifier(pl.LightningModule):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(4, 2)

        def _step(self, batch: Any, phase: str) -> Any:
            x, y = batch
            logits = self.layer(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            acc = (logits.argmax(dim=1) == y).float().mean()
            on_step = phase == "train"
            self.log(f"{phase}_loss", loss, on_step=on_step, on_epoch=True)
            self.log(f"{phase}_acc", acc, on_step=on_step, on_epoch=True)
            return loss

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if fail_at_step is not None and self.global_step >= fail_at_step:
                raise RuntimeError("boom in training_step")
            return self._step(batch, "train")

        def on_train_epoch_end(self) -> None:
            if log_in_hook:
                self.log("train_hook_value", float(self.current_epoch) + 0.5)

        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            return self._step(batch, "val")

        def test_step(self, batch: Any, batch_idx: int) -> Any:
            return self._step(batch, "test")

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return TinyClassifier()


def make_loader(n: int = 32, batch_size: int = 8, seed: int = 0) -> Any:
    """A DataLoader of ``n`` random 4-feature samples with a learnable label."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def make_trainer(pl: Any, **kwargs: Any) -> Any:
    """A fast CPU Trainer: no progress bar, no summary, no checkpoints, a few batches."""
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 3,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "limit_train_batches": 4,
        "limit_val_batches": 2,
        "limit_test_batches": 2,
        "num_sanity_val_steps": 1,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


def import_pl(name: str) -> Any:
    return importlib.import_module(name)


def ddp_module(package: str) -> Any:
    """A tiny classifier whose class is module-level here (so picklable, for DDP spawn)."""
    name = f"Tiny_{package.replace('.', '_')}"
    cls = globals().get(name)
    if cls is None:
        cls = type(make_module(importlib.import_module(package)))
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__ = name
        globals()[name] = cls
    return cls()


def __getattr__(name: str) -> Any:
    # Unpickling in a spawned DDP process looks the class up before anything made it.
    for package in PACKAGES:
        if name == f"Tiny_{package.replace('.', '_')}":
            return type(ddp_module(package))
    raise AttributeError(name)
