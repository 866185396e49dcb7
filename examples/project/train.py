"""A small Lightning classifier for one CSV table, written against trainfarm's job contract.

On the farm:    trainfarm submit examples/project -d digits.csv --queue cpu -- python train.py --epochs 3
On its own:     python train.py            (trains on ../datasets/digits.csv, writes ./output)

Settings come from the built-in defaults, then the job's hyperparameters (TRAINFARM_HYPERPARAMETERS),
then this script's own flags.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from worker.runtime import TrainfarmCallback, TrainfarmLogger, last_checkpoint

HERE = Path(__file__).resolve().parent
DEFAULTS = {
    "target": "digit",
    "dataset": None,
    "lr": 0.003,
    "batch_size": 64,
    "hidden": 64,
    "epochs": 3,
    "seed": 0,
}


def settings(argv: list[str]) -> argparse.Namespace:
    """Defaults, overridden by the job's hyperparameters, overridden by the command line."""
    values = {**DEFAULTS, **json.loads(os.environ.get("TRAINFARM_HYPERPARAMETERS", "{}"))}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=values["target"], help="column to predict")
    parser.add_argument("--dataset", default=values["dataset"], help="CSV file in the data dir")
    parser.add_argument("--lr", type=float, default=values["lr"])
    parser.add_argument("--batch-size", type=int, default=values["batch_size"])
    parser.add_argument("--hidden", type=int, default=values["hidden"])
    parser.add_argument("--epochs", type=int, default=values["epochs"])
    parser.add_argument("--seed", type=int, default=values["seed"])
    return parser.parse_args(argv)


def load_table(data_dir: Path, name: str | None, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (all other columns, standardised) and class indices of the target column."""
    path = data_dir / name if name else min(data_dir.glob("*.csv"), default=None)
    if path is None or not path.is_file():
        sys.exit(f"no CSV dataset {name or '(*.csv)'} in {data_dir}")
    with path.open(newline="") as fh:
        header = next(csv.reader(fh))
    if target not in header:
        sys.exit(f"target column {target!r} not in {path.name}; columns: {', '.join(header)}")
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
    column = header.index(target)
    x = np.delete(table, column, axis=1)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    _, y = np.unique(table[:, column], return_inverse=True)
    return x, y


class Classifier(pl.LightningModule):
    def __init__(self, n_features: int, n_classes: int, hidden: int, lr: float) -> None:
        super().__init__()
        self.save_hyperparameters()  # TrainfarmLogger writes these to hparams.json
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log_dict({"val_loss": F.cross_entropy(logits, y), "val_acc": acc}, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main(argv: list[str]) -> int:
    args = settings(argv)
    data_dir = Path(os.environ.get("TRAINFARM_DATA_DIR", HERE.parent / "datasets"))
    output_dir = Path(os.environ.get("TRAINFARM_OUTPUT_DIR", "output"))
    devices = int(os.environ.get("TRAINFARM_DEVICES", "1"))

    pl.seed_everything(args.seed, verbose=False)
    x, y = load_table(data_dir, args.dataset, args.target)
    order = np.random.default_rng(args.seed).permutation(len(y))
    cut = int(len(y) * 0.8)
    tensors = torch.from_numpy(x), torch.from_numpy(y).long()
    train = TensorDataset(*(t[order[:cut]] for t in tensors))
    val = TensorDataset(*(t[order[cut:]] for t in tensors))

    cuda = torch.cuda.is_available()
    trainfarm = TrainfarmCallback()
    trainer = pl.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=devices,
        # More than one device: one process each, Lightning starts them (this script again).
        strategy=DDPStrategy(process_group_backend="nccl" if cuda else "gloo") if devices > 1 else "auto",
        max_epochs=args.epochs,
        logger=TrainfarmLogger(),
        callbacks=[trainfarm],
        enable_checkpointing=False,  # TrainfarmCallback keeps last.ckpt in the checkpoint dir
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    model = Classifier(x.shape[1], int(y.max()) + 1, args.hidden, args.lr)
    loaders = DataLoader(train, batch_size=args.batch_size, shuffle=True), DataLoader(val, batch_size=256)
    # A new attempt of the same job continues where the previous one stopped.
    trainer.fit(model, *loaders, ckpt_path=last_checkpoint())
    if trainfarm.stopped:
        return 0  # the job was stopped; last.ckpt is saved and the next attempt resumes from it
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "hyperparameters": vars(args)}, output_dir / "model.pt")
        print(f"saved {output_dir / 'model.pt'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
