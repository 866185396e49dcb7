"""A small but real Lightning fit that times itself: `python -m bench.train_fit [--epochs N]`.

It prints a line every few batches and reports through `TrainfarmCallback`, so as a trainfarm job its
log streams, its metrics flow and its checkpoint is written and uploaded; bare, the callback does
nothing. The last line, `fit_seconds=<s>`, covers `trainer.fit` only: start-up and queueing are out.
"""

from __future__ import annotations

import argparse
import time
import warnings

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from worker.runtime import TrainfarmCallback

FEATURES, CLASSES, SAMPLES = 64, 10, 24_000


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(FEATURES, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, CLASSES)
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        if batch_idx % 25 == 0:
            print(f"epoch {self.current_epoch} batch {batch_idx} loss {loss.item():.4f}", flush=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def loaders() -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, FEATURES, generator=generator)
    y = (x @ torch.randn(FEATURES, CLASSES, generator=generator)).argmax(1)
    cut = SAMPLES * 5 // 6
    train = DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=64, shuffle=True, generator=generator)
    return train, DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=256)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # Lightning's advice on workers and logging, and "not under trainfarm"
    # One compute thread: on a shared 2-core machine, torch's threads spin at barriers whenever a
    # neighbour takes a core, and a fit's time then swings by 5x from run to run.
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[TrainfarmCallback(every_n_steps=25)],
    )
    model, (train, val) = Classifier(), loaders()
    begun, cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, train, val)
    # CPU time too: on a machine shared with other work, wall time swings with the neighbours' load.
    print(f"fit_cpu_seconds={time.process_time() - cpu:.4f}", flush=True)
    print(f"fit_seconds={time.perf_counter() - begun:.4f}", flush=True)


if __name__ == "__main__":
    main()
