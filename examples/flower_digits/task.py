"""The learning task: scikit-learn's bundled digits, split across clients, and a small MLP.

Nothing is downloaded: ``load_digits`` ships with scikit-learn (1,797 8x8
images of the digits 0-9). A fixed 20 % is held out for the server's
centralised evaluation; the rest is shuffled once and dealt into
``num_partitions`` equal shards, one per client, each split again into local
train and validation sets.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

try:  # the Lightning package the callback and the Trainer come from
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the standalone package
    import pytorch_lightning as pl  # type: ignore[no-redef]

SEED = 0
TEST_FRACTION = 0.2
VAL_FRACTION = 0.2


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = (digits.data / 16.0).astype(np.float32)  # pixel values are 0..16
    return features, digits.target.astype(np.int64)


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    cut = round(n * fraction)
    return order[cut:], order[:cut]


@lru_cache(maxsize=1)
def _server_and_pool() -> tuple[np.ndarray, np.ndarray]:
    """Indices of the clients' pool and of the server's held-out test set."""
    features, _ = _digits()
    return _split(len(features), TEST_FRACTION, np.random.default_rng(SEED))


def test_set() -> TensorDataset:
    """The held-out set the server evaluates the global model on."""
    features, labels = _digits()
    _, test = _server_and_pool()
    return TensorDataset(torch.from_numpy(features[test]), torch.from_numpy(labels[test]))


def partition(partition_id: int, num_partitions: int) -> tuple[TensorDataset, TensorDataset]:
    """Client ``partition_id``'s local (train, validation) sets: an IID shard of the pool."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id {partition_id} is not in [0, {num_partitions})")
    features, labels = _digits()
    pool, _ = _server_and_pool()
    shuffled = np.random.default_rng(SEED + 1).permutation(pool)
    shard = np.array_split(shuffled, num_partitions)[partition_id]
    train, val = _split(len(shard), VAL_FRACTION, np.random.default_rng(SEED + 2 + partition_id))
    x, y = torch.from_numpy(features[shard]), torch.from_numpy(labels[shard])
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


def loader(dataset: TensorDataset, batch_size: int = 32, *, shuffle: bool = False) -> DataLoader:
    """A single-process DataLoader (workers would only cost CPU here)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0)


class DigitsMLP(pl.LightningModule):
    """64 -> hidden -> 10 with ReLU; logs loss and accuracy for train and validation."""

    def __init__(self, hidden: int = 64, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], phase: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        accuracy = (logits.argmax(dim=1) == y).float().mean()
        self.log(f"{phase}_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        self.log(f"{phase}_acc", accuracy, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: TensorDataset) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``dataset`` (plain torch, no Trainer)."""
    model.eval()
    x, y = dataset.tensors
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, accuracy


def quiet_lightning() -> None:
    """Silence Lightning's per-Trainer banners (GPU available, ...) in the client processes."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
