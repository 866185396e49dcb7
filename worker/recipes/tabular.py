"""The `tabular-classifier` recipe: an MLP trained on one CSV or Parquet table.

Run inside a job as `python -m worker.recipes.tabular`; everything it needs comes from `JobContext`.
Exit code 2 means the job's input is wrong (missing column, bad hyperparameter) and a retry won't help.
A new attempt continues from the `last.ckpt` an earlier one left: from the end of an epoch it ends with
the same weights and metrics as a run that was never interrupted; from a stop mid-epoch, close to them.
"""

from __future__ import annotations

import sys
import warnings
from typing import Annotated, Any, Literal

import pytorch_lightning as pl
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities import rank_zero_only
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from shared.errors import FinalError
from shared.schemas import JobSpec
from worker.job_contract import ContractError, JobContext
from worker.recipes.tabular_data import TabularData, load
from worker.runtime import SeedEveryEpoch, TrainfarmCallback, last_checkpoint

RECIPE = "tabular-classifier"


class TabularParams(BaseModel):
    """The recipe's hyperparameters; unknown names are refused so a typo does not go unnoticed."""

    model_config = ConfigDict(extra="forbid")

    target: str
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=64, ge=1)
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [128, 64])
    dropout: float = Field(default=0.1, ge=0, lt=1)
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    #: What a stop (preemption, a worker's shutdown) waits for: the batch under way, or the epoch under
    #: way, after which a resume repeats the uninterrupted run exactly.
    stop_at: Literal["batch", "epoch"] = "batch"

    @field_validator("hidden", mode="before")
    @classmethod
    def _layer_sizes(cls, value: Any) -> Any:
        # A command line passes "128,64" or one number as easily as a list.
        if isinstance(value, int):
            return [value]
        if isinstance(value, str):
            return [int(part) for part in value.split(",") if part.strip()]
        return value


class MLPClassifier(pl.LightningModule):
    def __init__(
        self,
        n_features: int,
        n_classes: int,
        hidden: list[int],
        dropout: float,
        lr: float,
        weight_decay: float,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log_dict({"val_loss": loss, "val_acc": acc}, sync_dist=True, batch_size=len(y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )


@rank_zero_only
def say(line: str) -> None:
    print(line, flush=True)


def loaders(data: TabularData, batch_size: int, seed: int, devices: int) -> tuple[DataLoader, DataLoader]:
    """The train loader shuffles as a function of (seed, epoch), so a resumed epoch sees the same batches."""
    train_set = TensorDataset(data.x_train, data.y_train)
    # Every iterator the loader starts draws a number from this generator, or else from the global one,
    # which SeedEveryEpoch reseeds for dropout; a resumed run starts its first iterator at another time.
    loader_rng = torch.Generator().manual_seed(seed)
    if devices > 1:
        # Lightning swaps in a DistributedSampler (seeded from seed_everything, set_epoch each epoch).
        train = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=loader_rng)
    else:
        # The same sampler over one replica. shuffle=True's RandomSampler would keep drawing from one
        # generator, whose state at a resumed epoch Lightning does not restore.
        sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(
            train_set, num_replicas=1, rank=0, shuffle=True, seed=seed
        )
        train = DataLoader(train_set, batch_size=batch_size, sampler=sampler, generator=loader_rng)
    val = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=batch_size)
    return train, val


def make_trainer(ctx: JobContext, max_epochs: int, callbacks: list[pl.Callback]) -> pl.Trainer:
    cuda = torch.cuda.is_available()
    strategy: Any = "auto"
    if ctx.devices > 1:
        # Lightning starts the other ranks itself (GPU or CPU), re-running this module in subprocesses.
        strategy = DDPStrategy(process_group_backend="nccl" if cuda else "gloo")
    # The best epoch only: `last.ckpt` is TrainfarmCallback's, rewritten every epoch. save_last=True here
    # would rewrite it only when val_loss improves, and in a retry's new directory write last-v1.ckpt.
    best = ModelCheckpoint(
        dirpath=ctx.checkpoint_dir,
        filename="epoch{epoch:03d}-val_loss{val_loss:.4f}",
        auto_insert_metric_name=False,
        monitor="val_loss",
    )
    return pl.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=ctx.devices,
        strategy=strategy,
        max_epochs=max_epochs,
        enable_progress_bar=False,  # the job log is line-based
        enable_model_summary=False,  # a box-drawn table; `train` prints one line instead
        logger=False,  # metrics go to the events file and metrics.json
        default_root_dir=ctx.output_dir,
        callbacks=[best, *callbacks],
    )


def train(ctx: JobContext, spec: JobSpec, params: TabularParams) -> None:
    pl.seed_everything(spec.seed, workers=True)
    data_path = ctx.data_dir / spec.datasets[0]
    data = load(data_path, params.target, params.val_fraction, spec.seed)
    say(
        f"{RECIPE}: {data_path.name}: {len(data.y_train) + len(data.y_val)} rows "
        f"({len(data.y_train)} train, {len(data.y_val)} val), {len(data.features)} features, "
        f"{len(data.classes)} classes in {params.target!r}"
    )
    model = MLPClassifier(
        len(data.features), len(data.classes), params.hidden, params.dropout, params.lr, params.weight_decay
    )
    params_count = sum(p.numel() for p in model.parameters())
    widths = "-".join(str(w) for w in [len(data.features), *params.hidden, len(data.classes)])
    say(f"model: MLP {widths}, {params_count:,} parameters")
    trainfarm = TrainfarmCallback(stop_at=params.stop_at)
    trainer = make_trainer(ctx, spec.max_epochs, [SeedEveryEpoch(spec.seed), trainfarm])
    train_loader, val_loader = loaders(data, params.batch_size, spec.seed, ctx.devices)
    # A retry that finds its predecessor's checkpoint continues from it instead of starting over.
    trainer.fit(model, train_loader, val_loader, ckpt_path=last_checkpoint())
    if trainfarm.stopped:  # the next attempt resumes from last.ckpt
        return
    if trainer.is_global_zero:
        path = ctx.output_dir / "model.pt"
        torch.save(
            {
                "recipe": RECIPE,
                "state_dict": {name: t.cpu() for name, t in model.state_dict().items()},
                "features": data.features,
                "mean": data.mean,
                "std": data.std,
                "target": params.target,
                "classes": data.classes,
                "hyperparameters": {**params.model_dump(), "max_epochs": spec.max_epochs, "seed": spec.seed},
            },
            path,
        )
        say(f"saved {path}")


def main() -> int:
    # Tensors already in memory: dataloader worker processes would only add start-up time.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    try:
        ctx = JobContext.from_environ()
        spec = JobSpec.model_validate_json(ctx.spec_file.read_text())
        if not spec.datasets:
            raise FinalError(f"{RECIPE} needs a dataset")
        params = TabularParams.model_validate({**spec.hyperparameters, **ctx.hyperparameters})
        train(ctx, spec, params)
    except (FinalError, ValidationError, ContractError) as exc:
        print(f"{RECIPE}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
